"""Cines in: every input format becomes a :class:`Cine`.

A cine is a (T, H, W) stack of 8-bit grey frames plus the metadata needed to
write results back (DICOM identity, frame timing, pixel spacing).

Windowing to 8 bits (the network sees 8-bit frames scaled to [0, 1]):

* ``uint8`` data is used as is;
* DICOM data goes through the modality LUT, then the VOI LUT or the
  WindowCenter/WindowWidth of the file when present, MONOCHROME1 is inverted;
* any other integer or float stack is mapped linearly from its minimum..maximum
  over the whole cine to 0..255 (one window for all frames, so that brightness
  changes between frames survive).  NaN or infinite values are an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..errors import FsvosInputError
from .atomic import is_dicom_file


@dataclass
class Cine:
    """A grey cine ready for propagation.

    Attributes
    ----------
    frames:
        uint8 array (T, H, W), T >= 2.
    source:
        The path it was read from (file or folder), or None.
    frame_time_ms:
        Nominal time between frames in milliseconds, when known.
    pixel_spacing_mm:
        (row spacing, column spacing) in mm, when known.
    dicom:
        For DICOM sources: the pydicom Dataset of the (first) instance with its
        pixel data removed, used to copy patient/study modules into outputs.
    source_frames:
        For DICOM sources: per frame, (SOPInstanceUID, frame number 1-based) of
        the frame in the source series.
    extra:
        Anything else a reader wants to keep (e.g. the original dtype).
    """

    frames: np.ndarray
    source: Optional[str] = None
    frame_time_ms: Optional[float] = None
    pixel_spacing_mm: Optional[Tuple[float, float]] = None
    dicom: Any = None
    source_frames: Optional[list] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.frames.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def window_to_uint8(data: np.ndarray, path: Optional[str] = None) -> np.ndarray:
    """Map any integer/float stack to uint8 with one linear window min..max over the whole stack.

    uint8 input is returned unchanged (no copy).  NaN/inf raise FsvosInputError.
    """
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    if data.dtype == bool:
        return data.astype(np.uint8) * 255
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise FsvosInputError(f"pixel data of type {data.dtype} is not a grey image stack", path)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise FsvosInputError("the image stack contains NaN or infinite values", path)
    lo = float(data.min())
    hi = float(data.max())
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = (data.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}
_VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}


def _cine_from_array(data: np.ndarray, path: str) -> Cine:
    if data.ndim == 4 and data.shape[-1] in (3, 4):  # (T, H, W, RGB[A]) -> grey
        data = data[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if data.ndim != 3:
        raise FsvosInputError(
            f"expected a (frames, height, width) stack, got an array of shape {tuple(data.shape)}", path
        )
    if data.shape[0] < 2:
        raise FsvosInputError(f"a cine needs at least 2 frames, this one has {data.shape[0]}", path)
    if min(data.shape[1:]) < 16:
        raise FsvosInputError(f"frames of {data.shape[1]}x{data.shape[2]} pixels are too small (minimum 16x16)", path)
    return Cine(frames=np.ascontiguousarray(window_to_uint8(data, path)), source=path,
                extra={"source_dtype": str(data.dtype)})


def load_cine(path: "os.PathLike[str] | str") -> Cine:
    """Read a cine from a DICOM file, a folder of one DICOM series, a video, or an array stack.

    Supported: multi-frame DICOM (XA, XRF, Enhanced XA, ...; see
    :mod:`fsvos.io.dicom_read`), a folder of single-frame DICOM instances of one
    series, ``.npy`` (T, H, W), ``.nrrd``/``.nhdr`` (first axis is time when the
    array is (T, H, W) in C order), NIfTI ``.nii``/``.nii.gz`` and videos
    (MP4/AVI/...) when their readers are available.

    Raises FsvosInputError naming the file and the problem for anything else.
    """
    p = Path(path)
    spath = os.fspath(p)
    if not p.exists():
        raise FsvosInputError("no such file or folder", spath)
    if p.is_dir():
        from .dicom_read import read_dicom_cine

        return read_dicom_cine(p)
    name = p.name.lower()
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            try:
                data = np.load(p, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise FsvosInputError(f"not a readable .npy array ({exc})", spath) from None
            return _cine_from_array(data, spath)
        if suffix in (".nrrd", ".nhdr"):
            import nrrd

            try:
                data, _header = nrrd.read(spath, index_order="C")
            except Exception as exc:  # pynrrd raises several types for broken files
                raise FsvosInputError(f"not a readable NRRD file ({exc})", spath) from None
            return _cine_from_array(data, spath)
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            from .video_read import read_nifti_cine

            return read_nifti_cine(p)
        if suffix in _VIDEO_SUFFIXES:
            from .video_read import read_video_cine

            return read_video_cine(p)
        if suffix in _DICOM_SUFFIXES or is_dicom_file(p):
            from .dicom_read import read_dicom_cine

            return read_dicom_cine(p)
    except MemoryError:
        raise FsvosInputError("the cine is too large to hold in memory", spath) from None
    raise FsvosInputError(
        "unknown cine format (expected DICOM, a DICOM folder, .npy, .nrrd, .nii(.gz) or a video)", spath
    )
