"""DICOM cines in: multi-frame files and folders of single-frame instances.

:func:`read_dicom_cine` turns any DICOM cine into a :class:`~fsvos.io.cine.Cine`
of 8-bit grey frames:

* multi-frame X-ray angiography (XA), radio-fluoroscopy (XRF), Enhanced XA,
  ultrasound and any other multi-frame image with at least 2 frames;
* a folder (searched recursively) of single-frame instances of one series,
  ordered by InstanceNumber, then acquisition/content time, then file name;
* 8 to 16 bits stored, signed or unsigned; the modality LUT (rescale or LUT
  sequence), then the VOI LUT sequence or the window (WindowCenter/WindowWidth,
  VOILUTFunction) are applied when present, at the top level or in the
  (shared, else first per-frame) functional groups of enhanced objects;
  the result is mapped to 0..255 over the VOI output range; without a VOI the
  whole cine is mapped min..max (the mapping of :func:`~fsvos.io.cine.window_to_uint8`,
  computed in chunks of frames to bound memory; 8-bit data is used as is);
  MONOCHROME1 is inverted;
* colour cines (RGB, YBR_* e.g. ultrasound, PALETTE COLOR) become grey
  (ITU-R BT.601 luma);
* compressed transfer syntaxes are decoded by pydicom's pixel data plugins:
  RLE (built in, or ``pylibjpeg-rle``), JPEG baseline/extended (``pillow`` or
  ``pylibjpeg`` + ``pylibjpeg-libjpeg``), JPEG lossless (``pylibjpeg`` +
  ``pylibjpeg-libjpeg``), JPEG-LS (``pyjpegls``), JPEG 2000 and HTJ2K
  (``pylibjpeg`` + ``pylibjpeg-openjpeg``, or ``pillow``).  When no decoder is
  installed the error names the pip packages to install.

Metadata kept on the Cine: ``frame_time_ms`` (FrameTime, else the mean of
FrameTimeVector, else 1000 / CineRate, else the per-frame acquisition times of
enhanced objects or single-frame instances, else 1000 /
RecommendedDisplayFrameRate), ``pixel_spacing_mm`` (PixelSpacing, else
ImagerPixelSpacing, else the ultrasound region calibration), ``dicom`` (the
first instance without its pixel data), ``source_frames`` ((SOPInstanceUID,
1-based frame number) per frame) and in ``extra``:

``dicom_sop_class_uid``, ``dicom_series_uid``, ``dicom_study_uid``
    identity of the source series;
``dicom_sop_class_uids``
    per frame, the SOP Class UID of its instance;
``dicom_numbered_frames``
    True when the source instances are multi-frame objects (carry
    NumberOfFrames), so that references to them need a ReferencedFrameNumber;
``dicom_transfer_syntax``, ``photometric_interpretation``, ``bits_stored``,
``source_dtype``
    what the pixel data was;
``frame_time_vector_ms``
    the FrameTimeVector when present (ms, first value 0).

Every problem (not DICOM, not an image, a single frame, several series in one
folder, truncated data, missing pixel data, an unsupported or undecodable
transfer syntax) raises :class:`~fsvos.errors.FsvosInputError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from datetime import datetime
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from pydicom.multival import MultiValue

from ..errors import FsvosInputError
from .cine import Cine

__all__ = ["read_dicom_cine", "decoder_packages"]

#: SOP classes that carry pixel data but are not image cines
_NOT_CINE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "a Label Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.30": "a Parametric Map",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose",
    "1.2.840.10008.5.1.4.1.1.66": "a Raw Data object",
    "1.2.840.10008.1.3.10": "a DICOMDIR (Media Storage Directory)",
}
_NOT_CINE_MODALITIES = {"SEG", "SR", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "RWV"}

#: pip packages that provide pixel data decoders, by transfer syntax UID (our recommended set)
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless P14
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE (pydicom decodes it without them, slowly)
}

_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_FRAMES_PER_CHUNK = 16  # frames converted to 8 bits at a time (bounds the float64 working memory)


def decoder_packages(transfer_syntax_uid: str) -> Optional[str]:
    """The pip packages (space separated) that decode pixel data of this transfer syntax, or None if none needed."""
    return _DECODER_PACKAGES.get(str(transfer_syntax_uid))


# --------------------------------------------------------------------------- reading files


def _dcmread(path: Path, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise FsvosInputError("not a DICOM file (no DICOM preamble or header)", path) from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise FsvosInputError(f"truncated or damaged DICOM file ({_short(exc)})", path) from None
    for w in caught:
        text = str(w.message)
        if "End of file reached" in text:
            raise FsvosInputError(f"truncated or damaged DICOM file ({_short(w.message)})", path)
    if len(ds) == 0:
        raise FsvosInputError("truncated or damaged DICOM file (no data elements after the file meta information)", path)
    return ds


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_pixel_data(ds) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _check_is_image(ds, path: Path, pixels: bool = True) -> None:
    """FsvosInputError unless `ds` is an image (with pixel data, when `pixels`)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if sop_class in _NOT_CINE_SOP_CLASSES:
        raise FsvosInputError(f"this DICOM is {_NOT_CINE_SOP_CLASSES[sop_class]}, not an image cine", path)
    if modality in _NOT_CINE_MODALITIES:
        name = _uid_name(sop_class) or f"a {modality} object"
        raise FsvosInputError(f"this DICOM is {name} (modality {modality}), not an image cine", path)
    if pixels and not _has_pixel_data(ds):
        name = _uid_name(sop_class)
        what = f"this DICOM ({name}) has no pixel data" if name else "this DICOM has no pixel data"
        raise FsvosInputError(f"{what}; it is not an image cine", path)
    for key in ("Rows", "Columns"):
        if not ds.get(key):
            raise FsvosInputError(f"the image has no {key} attribute", path)


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    if not uid:
        return ""
    name = UID(uid).name
    return "" if name == uid else name


def _number_of_frames(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _transfer_syntax(ds):
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else UID("1.2.840.10008.1.2")


def _check_decodable(ds, path: Path) -> None:
    """Raise FsvosInputError when no installed plugin can decode the pixel data."""
    from pydicom.pixels import get_decoder

    ts = _transfer_syntax(ds)
    if "PixelData" not in ds:
        return  # float pixel data: native
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise FsvosInputError(
            f"transfer syntax {ts.name} ({ts}) is not supported (convert the file to an uncompressed, RLE, "
            f"JPEG, JPEG-LS or JPEG 2000 transfer syntax)", path
        ) from None
    if not decoder.is_available:
        packages = decoder_packages(ts) or "pylibjpeg"
        raise FsvosInputError(
            f"the pixel data is compressed as {ts.name} and no decoder for it is installed "
            f"(pip install {packages})", path
        )


def _decode(ds, path: Path) -> np.ndarray:
    """Decoded pixel array of one instance: (T, H, W) grey or (T, H, W, 3) RGB, T >= 1."""
    _check_decodable(ds, path)
    ts = _transfer_syntax(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # pydicom/decoders raise many types for damaged data
        hint = ""
        packages = decoder_packages(ts)
        if ts.is_compressed and packages:
            hint = f"; if the data is intact, installing {packages} may help"
        raise FsvosInputError(
            f"cannot decode the pixel data ({ts.name}): truncated or damaged ({_short(exc)}){hint}", path
        ) from None
    arr = np.asarray(arr)
    frames = _number_of_frames(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[np.newaxis]
    expect_ndim = 4 if samples > 1 else 3
    if arr.ndim != expect_ndim or arr.shape[0] != frames:
        raise FsvosInputError(
            f"decoded pixel data has shape {tuple(arr.shape)}, expected {frames} frame(s) of "
            f"{ds.Rows}x{ds.Columns} with {samples} sample(s) per pixel", path
        )
    return arr


# --------------------------------------------------------------------------- metadata


def _fg_items(ds) -> Iterator:
    """The dataset itself, then the items of its shared and first per-frame functional group macros."""
    yield ds
    for fg_key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(fg_key)
        if not seq:
            continue
        fg = seq[0]
        for elem in fg:
            if elem.VR == "SQ" and elem.value:
                yield elem.value[0]


def _find(ds, keyword: str):
    """First non-empty value of `keyword` at the top level or in a shared / first per-frame functional group."""
    for item in _fg_items(ds):
        value = item.get(keyword)
        if value is not None and value != "" and not (isinstance(value, (list, tuple)) and len(value) == 0):
            return value
    return None


def _pixel_spacing(ds) -> Optional[Tuple[float, float]]:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _find(ds, key)
        try:
            if value is not None and len(value) == 2 and float(value[0]) > 0 and float(value[1]) > 0:
                return (float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            continue
    regions = ds.get("SequenceOfUltrasoundRegions")
    if regions:
        region = regions[0]
        # Physical units 3 = cm
        if region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalUnitsYDirection") == 3:
            dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
            if dx and dy and float(dx) > 0 and float(dy) > 0:
                return (abs(float(dy)) * 10.0, abs(float(dx)) * 10.0)
    return None


def _positive(value) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _parse_dt(value) -> Optional[datetime]:
    """A DICOM DT value as a naive datetime; None when absent or unparseable."""
    from pydicom.valuerep import DT

    if value in (None, ""):
        return None
    try:
        return DT(str(value)).replace(tzinfo=None)
    except (ValueError, TypeError, OverflowError):
        return None


def _parse_tm(time_value, date_value=None) -> Optional[datetime]:
    """A DICOM TM (with its DA when there is one) as a naive datetime; None when absent or unparseable."""
    from pydicom.valuerep import DA, TM

    if time_value in (None, ""):
        return None
    try:
        day = DA(str(date_value)) if date_value not in (None, "") else datetime(2000, 1, 1).date()
        return datetime.combine(day, TM(str(time_value)))
    except (ValueError, TypeError, OverflowError):
        return None


def _median_step_ms(times: Sequence[Optional[datetime]]) -> Optional[float]:
    if len(times) < 2 or any(t is None for t in times):
        return None
    diffs = np.diff([t.timestamp() for t in times]) * 1000.0  # type: ignore[union-attr]
    if np.all(diffs > 0):
        return float(np.median(diffs))
    return None


def _frame_time_ms(ds, n_frames: int) -> Tuple[Optional[float], Optional[List[float]]]:
    """Nominal frame time (ms) and the FrameTimeVector (ms) when present."""
    vector = None
    ftv = _find(ds, "FrameTimeVector")
    if ftv is not None:
        try:
            vector = [float(v) for v in (ftv if isinstance(ftv, (list, tuple, MultiValue)) else [ftv])]
        except (TypeError, ValueError):
            vector = None
    ft = _positive(_find(ds, "FrameTime"))
    if ft is not None:
        return ft, vector
    if vector and len(vector) >= 2:
        steps = [v for v in vector[1:] if v > 0]
        if steps:
            return float(np.mean(steps)), vector
    rate = _positive(_find(ds, "CineRate"))
    if rate is not None:
        return 1000.0 / rate, vector
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) == n_frames and n_frames >= 2:
        times = []
        for item in per_frame:
            content = item.get("FrameContentSequence")
            fc = content[0] if content else None
            value = None
            if fc is not None:
                value = fc.get("FrameReferenceDateTime") or fc.get("FrameAcquisitionDateTime")
            times.append(_parse_dt(value))
        step = _median_step_ms(times)
        if step is not None:
            return step, vector
    rate = _positive(_find(ds, "RecommendedDisplayFrameRate"))
    if rate is not None:
        return 1000.0 / rate, vector
    return None, vector


def _instance_time(ds) -> Optional[datetime]:
    """Acquisition (else content) date and time of an instance, for ordering single-frame series."""
    t = _parse_dt(ds.get("AcquisitionDateTime"))
    for tkey, dkey in (("AcquisitionTime", "AcquisitionDate"), ("ContentTime", "ContentDate")):
        if t is None:
            t = _parse_tm(ds.get(tkey), ds.get(dkey))
    return t


# --------------------------------------------------------------------------- pixels to 8 bits


def _lut_dataset(ds):
    """A small dataset holding the modality LUT and VOI of `ds` (top level, else functional groups)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    px = Dataset()
    px.file_meta = FileMetaDataset()
    px.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    px.PixelRepresentation = int(ds.get("PixelRepresentation", 0) or 0)
    px.BitsStored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    px.PhotometricInterpretation = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if ds.get("ModalityLUTSequence"):
        px.ModalityLUTSequence = ds.ModalityLUTSequence
    else:
        slope, intercept = _find(ds, "RescaleSlope"), _find(ds, "RescaleIntercept")
        if slope is not None and intercept is not None:
            px.RescaleSlope, px.RescaleIntercept = float(slope), float(intercept)
    voi_seq = _find(ds, "VOILUTSequence")
    if voi_seq:
        px.VOILUTSequence = voi_seq
    center, width = _find(ds, "WindowCenter"), _find(ds, "WindowWidth")
    if center is not None and width is not None:
        px.WindowCenter, px.WindowWidth = center, width
        function = _find(ds, "VOILUTFunction")
        if function:
            px.VOILUTFunction = function
    return px


def _voi_range(px) -> Optional[Tuple[float, float]]:
    """Output range of the VOI of `px` ((lo, hi)), or None when it has no usable VOI."""
    from pydicom.pixels import apply_voi_lut

    if px.get("VOILUTSequence"):
        item = px.VOILUTSequence[0]
        desc = item.get("LUTDescriptor")
        if desc is not None and item.get("LUTData") is not None:
            n = int(desc[0]) or 65536
            first = int(desc[1])
            out = apply_voi_lut(np.arange(first, first + n, dtype=np.int64), px)
            return float(np.min(out)), float(np.max(out))
    if "WindowCenter" in px and "WindowWidth" in px:
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # SIGMOID at +-1e300
                out = apply_voi_lut(np.array([-1e300, 1e300], dtype=np.float64), px)
        except ValueError:
            return None
        return float(np.min(out)), float(np.max(out))
    return None


def _grey_float(chunk: np.ndarray, px) -> np.ndarray:
    """Modality LUT then (if any) VOI of a grey chunk, as float64."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    out = apply_modality_lut(chunk, px)
    if "VOILUTSequence" in px or "WindowCenter" in px:
        out = apply_voi_lut(out, px)
    return np.asarray(out, dtype=np.float64)


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64, copy=False)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _to_uint8(parts: List[Tuple[np.ndarray, object]], path: Path) -> np.ndarray:
    """Convert decoded instances [(pixels (T,H,W[,3]), source dataset)] to one uint8 (T, H, W) cine.

    The VOI of the first instance is used for all of them (one window for the cine).
    """
    from pydicom.pixels import apply_color_lut

    first_ds = parts[0][1]
    photometric = str(first_ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    total = sum(p.shape[0] for p, _ in parts)
    h, w = parts[0][0].shape[1:3]
    out = np.empty((total, h, w), dtype=np.uint8)

    if photometric == "PALETTE COLOR":
        pos = 0
        for pixels, ds in parts:
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
            scale = 255.0 / (2**bits - 1)
            for i in range(0, pixels.shape[0], _FRAMES_PER_CHUNK):
                rgb = apply_color_lut(pixels[i : i + _FRAMES_PER_CHUNK], ds)
                out[pos + i : pos + i + rgb.shape[0]] = np.clip(np.rint(_luma(rgb) * scale), 0, 255)
            pos += pixels.shape[0]
        return out

    if parts[0][0].ndim == 4:  # RGB (pydicom converts YBR_* to RGB on decoding)
        bits = int(first_ds.get("BitsStored", 8) or 8)
        scale = 255.0 / (2**bits - 1)
        pos = 0
        for pixels, _ds in parts:
            for i in range(0, pixels.shape[0], _FRAMES_PER_CHUNK):
                grey = _luma(pixels[i : i + _FRAMES_PER_CHUNK]) * scale
                out[pos + i : pos + i + grey.shape[0]] = np.clip(np.rint(grey), 0, 255)
            pos += pixels.shape[0]
        return out

    invert = photometric == "MONOCHROME1"
    first_px = _lut_dataset(first_ds)
    voi = _voi_range(first_px)
    pxs = []
    for _pixels, ds in parts:
        px = _lut_dataset(ds)
        if voi is not None:  # one VOI for the whole cine: the first instance's
            for key in ("VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction"):
                if key in px:
                    del px[key]
                if key in first_px:
                    px[key] = first_px[key]
        pxs.append(px)

    def chunks() -> Iterator[Tuple[int, np.ndarray]]:
        pos = 0
        for (pixels, _ds), px in zip(parts, pxs):
            for i in range(0, pixels.shape[0], _FRAMES_PER_CHUNK):
                yield pos + i, _grey_float(pixels[i : i + _FRAMES_PER_CHUNK], px)
            pos += pixels.shape[0]

    if voi is not None and voi[1] > voi[0]:
        lo, hi = voi
    else:
        lo, hi = np.inf, -np.inf
        integral_8bit = all(int(ds.get("BitsStored", 8) or 8) <= 8 for _p, ds in parts)
        for _pos, grey in chunks():
            if not np.isfinite(grey).all():
                raise FsvosInputError("the pixel data contains NaN or infinite values", path)
            lo, hi = min(lo, float(grey.min())), max(hi, float(grey.max()))
            if integral_8bit and not np.array_equal(grey, np.rint(grey)):
                integral_8bit = False
        if integral_8bit and lo >= 0 and hi <= 255:
            lo, hi = 0.0, 255.0  # 8-bit data is used as is
    for pos, grey in chunks():
        if hi > lo:
            u8 = np.clip(np.rint((grey - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        else:
            u8 = np.zeros(grey.shape, dtype=np.uint8)
        out[pos : pos + u8.shape[0]] = u8
    if invert:
        np.subtract(255, out, out=out)
    return out


# --------------------------------------------------------------------------- folders


def _list_files(folder: Path) -> List[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            files.append(Path(root) / name)
    return files


def _series_from_folder(folder: Path) -> List[Tuple[Path, object]]:
    """(path, header dataset) of the image instances of the single series in `folder`, in cine order."""
    from pydicom.errors import InvalidDicomError

    headers = []
    for p in _list_files(folder):
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if len(head) < 132 or head[128:132] != b"DICM":
            continue  # not a DICOM Part 10 file: ignored in folders
        try:
            ds = _dcmread(p, stop_before_pixels=True)
        except FsvosInputError:
            raise
        except InvalidDicomError:  # pragma: no cover - _dcmread converts it
            continue
        if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10":
            continue
        headers.append((p, ds))
    if not headers:
        raise FsvosInputError("the folder contains no DICOM files", folder)
    series = {}
    for p, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if len(series) > 1:
        desc = ", ".join(
            f"{uid or '(no SeriesInstanceUID)'} ({len(items)} file(s), e.g. {items[0][0].name})"
            for uid, items in list(series.items())[:4]
        )
        raise FsvosInputError(
            f"the folder holds instances of {len(series)} different series ({desc}); give one series", folder
        )
    items = next(iter(series.values()))
    for p, ds in items:
        _check_is_image(ds, p, pixels=False)
    multi = [(p, ds) for p, ds in items if _number_of_frames(ds) > 1]
    if multi and len(items) > 1:
        raise FsvosInputError(
            f"the folder holds {len(items)} instances of one series, {len(multi)} of them multi-frame "
            f"(e.g. {multi[0][0].name}); give the multi-frame file itself", folder
        )
    seen = {}
    for p, ds in items:
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in seen:
            raise FsvosInputError(f"{p.name} and {seen[uid].name} are the same instance (SOPInstanceUID {uid})", folder)
        seen[uid] = p

    def key(item):
        p, ds = item
        try:
            number = int(ds.get("InstanceNumber"))
        except (TypeError, ValueError):
            number = None
        t = _instance_time(ds)
        return (number is None, number if number is not None else 0, t is None, t or datetime.min, p.name)

    return sorted(items, key=key)


# --------------------------------------------------------------------------- public API


def read_dicom_cine(path: "os.PathLike[str] | str") -> Cine:
    """Read a DICOM cine (a multi-frame file, or a folder holding one series) as 8-bit grey frames.

    Parameters
    ----------
    path:
        A DICOM file with at least 2 frames, or a folder (searched recursively;
        non-DICOM files and DICOMDIR are ignored) whose DICOM files are the
        instances of one series: one multi-frame instance, or at least 2
        single-frame instances.

    Returns
    -------
    Cine
        ``frames`` uint8 (T, H, W); ``frame_time_ms`` in ms; ``pixel_spacing_mm``
        (row, column) in mm; ``dicom`` the first instance without PixelData;
        ``source_frames`` [(SOPInstanceUID, 1-based frame number)] per frame;
        ``extra`` as described in the module documentation.

    Raises
    ------
    FsvosInputError
        Naming the file or folder and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise FsvosInputError("no such file or folder", p)
    if p.is_dir():
        items = _series_from_folder(p)
    else:
        items = [(p, None)]

    parts: List[Tuple[np.ndarray, object]] = []
    source_frames: List[Tuple[str, int]] = []
    sop_classes: List[str] = []
    first_ds = None
    numbered = False
    times: List[Optional[datetime]] = []
    for file_path, _header in items:
        ds = _dcmread(file_path, stop_before_pixels=False)
        _check_is_image(ds, file_path)
        n = _number_of_frames(ds)
        if len(items) == 1 and n < 2:
            raise FsvosInputError(f"a cine needs at least 2 frames, this DICOM image has {n}", p)
        pixels = _decode(ds, file_path)
        if first_ds is None:
            first_ds = ds
            samples0 = int(ds.get("SamplesPerPixel", 1) or 1)
            photometric0 = str(ds.get("PhotometricInterpretation", ""))
        else:
            if (pixels.shape[1], pixels.shape[2]) != (parts[0][0].shape[1], parts[0][0].shape[2]):
                raise FsvosInputError(
                    f"frames of {pixels.shape[1]}x{pixels.shape[2]} pixels differ from the "
                    f"{parts[0][0].shape[1]}x{parts[0][0].shape[2]} of {items[0][0].name}", file_path
                )
            if int(ds.get("SamplesPerPixel", 1) or 1) != samples0 or str(ds.get("PhotometricInterpretation", "")) != photometric0:
                raise FsvosInputError(
                    f"photometric interpretation {ds.get('PhotometricInterpretation')} differs from the "
                    f"{photometric0} of {items[0][0].name}", file_path
                )
        numbered = numbered or ("NumberOfFrames" in ds)
        uid = str(ds.get("SOPInstanceUID", ""))
        source_frames.extend((uid, i + 1) for i in range(pixels.shape[0]))
        sop_classes.extend([str(ds.get("SOPClassUID", ""))] * pixels.shape[0])
        times.append(_instance_time(ds))
        parts.append((pixels, ds))
        if "PixelData" in ds:
            del ds.PixelData  # also drops pydicom's cached array (kept in `parts`)
    assert first_ds is not None

    frames_total = len(source_frames)
    if frames_total < 2:
        raise FsvosInputError(f"a cine needs at least 2 frames, this series has {frames_total}", p)
    h, w = parts[0][0].shape[1:3]
    if min(h, w) < 16:
        raise FsvosInputError(f"frames of {h}x{w} pixels are too small (minimum 16x16)", p)

    try:
        frames = _to_uint8(parts, p)
    except FsvosInputError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise FsvosInputError(f"cannot apply the LUTs of the image ({_short(exc)})", p) from None

    if len(parts) == 1:
        frame_time, vector = _frame_time_ms(first_ds, frames_total)
    else:
        frame_time, vector = _frame_time_ms(first_ds, 1)
        if frame_time is None:
            frame_time = _median_step_ms(times)

    source_dtype = str(parts[0][0].dtype)
    for key in ("FloatPixelData", "DoubleFloatPixelData"):
        if key in first_ds:
            del first_ds[key]
    extra = {
        "source_dtype": source_dtype,
        "bits_stored": int(first_ds.get("BitsStored", 8) or 8),
        "photometric_interpretation": str(first_ds.get("PhotometricInterpretation", "")),
        "dicom_transfer_syntax": str(_transfer_syntax(first_ds)),
        "dicom_sop_class_uid": str(first_ds.get("SOPClassUID", "")),
        "dicom_sop_class_uids": sop_classes,
        "dicom_series_uid": str(first_ds.get("SeriesInstanceUID", "")),
        "dicom_study_uid": str(first_ds.get("StudyInstanceUID", "")),
        "dicom_numbered_frames": bool(numbered),
    }
    if vector is not None:
        extra["frame_time_vector_ms"] = vector
    return Cine(
        frames=np.ascontiguousarray(frames),
        source=os.fspath(p),
        frame_time_ms=frame_time,
        pixel_spacing_mm=_pixel_spacing(first_ds),
        dicom=first_ds,
        source_frames=source_frames,
        extra=extra,
    )
