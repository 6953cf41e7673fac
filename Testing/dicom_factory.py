"""Test helpers: write real DICOM cines of every variant with pydicom (no mocks).

Multi-frame XA / XRF / Enhanced XA / ultrasound, single-frame series in a
folder, 8..16 bits, signed or not, MONOCHROME1/2, RGB/YBR colour, windows, VOI
LUTs, rescale, and the transfer syntaxes RLE (pydicom's encoder), JPEG
baseline and JPEG lossless (imagecodecs' libjpeg-turbo), JPEG-LS (pydicom +
pyjpegls) and JPEG 2000 (pydicom + pylibjpeg-openjpeg).  Also a CT-like
single-frame series with a Frame of Reference, from which highdicom and dcmqi
make SEGs for the reader tests.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

XA = "1.2.840.10008.5.1.4.1.1.12.1"
XRF = "1.2.840.10008.5.1.4.1.1.12.2"
ENHANCED_XA = "1.2.840.10008.5.1.4.1.1.12.1.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.11"

MODALITY = {XA: "XA", XRF: "RF", ENHANCED_XA: "XA", US_MULTIFRAME: "US", CT: "CT"}

PATIENT_NAME = "Müller^Jürgen"
PATIENT_ID = "FSVOS-TEST-0042"

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}


def random_cine(t: int = 4, h: int = 64, w: int = 64, bits: int = 8, seed: int = 0, signed: bool = False) -> np.ndarray:
    """Smooth random frames (compress well, JPEG-friendly) with values spanning the stored range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        f = (np.sin(xx / (5.0 + i) + rng.uniform(0, 6)) + np.cos(yy / (7.0 + i) + rng.uniform(0, 6))) / 4 + 0.5
        frames.append(f)
    arr = np.stack(frames)
    arr = (arr - arr.min()) / (arr.max() - arr.min())
    top = 2**bits - 1
    arr = np.rint(arr * top).astype(np.int64)
    if signed:
        arr -= 2 ** (bits - 1)
        return arr.astype(np.int16 if bits > 8 else np.int8)
    return arr.astype(np.uint16 if bits > 8 else np.uint8)


def base_dataset(sop_class: str, *, study_uid: Optional[str] = None, series_uid: Optional[str] = None,
                 patient_name: str = PATIENT_NAME, patient_id: str = PATIENT_ID) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes of a test instance (ISO_IR 100 text)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "S1"
    ds.AccessionNumber = "A123"
    ds.ReferringPhysicianName = "Doe^Jane"
    ds.StudyDescription = "Coronary angiography"
    ds.Modality = MODALITY.get(sop_class, "OT")
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    ds.Manufacturer = "FSVOS test factory"
    ds.ContentDate = "20240102"
    ds.ContentTime = "101501"
    ds.PatientOrientation = ""
    return ds


def _file_meta(ds: Dataset, ts: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


def _set_pixels(ds: Dataset, frames: np.ndarray, transfer_syntax: str, bits_stored: int) -> None:
    """Store frames (T, H, W) or (T, H, W, 3) with the named transfer syntax."""
    ts = TRANSFER_SYNTAXES[transfer_syntax]
    t = frames.shape[0]
    arr = frames if t > 1 else frames[0]
    if transfer_syntax == "explicit":
        _file_meta(ds, ts)
        ds.PixelData = np.ascontiguousarray(frames).tobytes()
        return
    if transfer_syntax in ("rle", "jpeg-ls", "jpeg2000"):
        _file_meta(ds, ExplicitVRLittleEndian)
        ds.compress(ts, np.ascontiguousarray(arr), generate_instance_uid=False)
        return
    import imagecodecs

    encoded = []
    for f in frames:
        if transfer_syntax == "jpeg-baseline":
            encoded.append(imagecodecs.jpeg8_encode(np.ascontiguousarray(f), level=95))
        else:  # jpeg-lossless, process 14 SV1 (predictor 1)
            encoded.append(imagecodecs.jpeg8_encode(np.ascontiguousarray(f), lossless=True, predictor=1,
                                                    bitspersample=bits_stored))
    _file_meta(ds, ts)
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    if transfer_syntax == "jpeg-baseline":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        if frames.ndim == 4:
            ds.PhotometricInterpretation = "YBR_FULL_422"


def write_multiframe(
    path: "os.PathLike[str] | str",
    frames: np.ndarray,
    *,
    sop_class: str = XA,
    transfer_syntax: str = "explicit",
    bits_stored: Optional[int] = None,
    photometric: Optional[str] = None,
    frame_time: Optional[float] = 66.7,
    frame_time_vector: Optional[Sequence[float]] = None,
    cine_rate: Optional[float] = None,
    pixel_spacing: Optional[Tuple[float, float]] = None,
    imager_pixel_spacing: Optional[Tuple[float, float]] = (0.2, 0.2),
    window: Optional[Tuple[float, float]] = None,
    voi_function: Optional[str] = None,
    voi_lut: Optional[np.ndarray] = None,
    rescale: Optional[Tuple[float, float]] = None,
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
) -> Dataset:
    """Write a multi-frame cine; returns the written dataset.

    frames: (T, H, W) uint8/uint16/int8/int16 grey, or (T, H, W, 3) uint8 RGB.
    voi_lut: a VOI LUT (array of output values, first mapped value 0).
    """
    frames = np.asarray(frames)
    colour = frames.ndim == 4
    ds = base_dataset(sop_class, study_uid=study_uid, series_uid=series_uid)
    t, h, w = frames.shape[:3]
    bits_alloc = 16 if frames.dtype.itemsize == 2 else 8
    bits = bits_stored or bits_alloc
    ds.Rows, ds.Columns = h, w
    ds.NumberOfFrames = t
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_alloc, bits, bits - 1
    ds.PixelRepresentation = 1 if np.issubdtype(frames.dtype, np.signedinteger) else 0
    if frame_time is not None:
        ds.FrameTime = frame_time
        ds.FrameIncrementPointer = 0x00181063
    if frame_time_vector is not None:
        ds.FrameTimeVector = list(frame_time_vector)
        ds.FrameIncrementPointer = 0x00181065
    if cine_rate is not None:
        ds.CineRate = int(cine_rate)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_pixel_spacing)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
        if voi_function:
            ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        item = Dataset()
        lut = np.asarray(voi_lut, dtype=np.uint16)
        item.LUTDescriptor = [len(lut), 0, 16]
        item.add_new(0x00283006, "US", lut.tolist())  # LUTData
        ds.VOILUTSequence = DicomSequence([item])
    if sop_class in (XA, XRF):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
        ds.PixelIntensityRelationship = "LIN"
        ds.KVP = 80
        ds.PositionerMotion = "STATIC"
    _set_pixels(ds, frames, transfer_syntax, bits)
    ds.save_as(os.fspath(path), enforce_file_format=True)
    return ds


def write_enhanced_xa(path: "os.PathLike[str] | str", frames: np.ndarray, *, bits_stored: int = 12,
                      window: Tuple[float, float] = (2048, 4096), rescale: Tuple[float, float] = (1.0, 0.0),
                      frame_step_ms: float = 40.0, pixel_spacing: Tuple[float, float] = (0.25, 0.25)) -> Dataset:
    """Write an Enhanced XA cine whose window, rescale, spacing and timing live in functional groups."""
    frames = np.asarray(frames)
    ds = base_dataset(ENHANCED_XA)
    t, h, w = frames.shape
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, t
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = list(pixel_spacing)
    shared.PixelMeasuresSequence = DicomSequence([measures])
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = window
    shared.FrameVOILUTSequence = DicomSequence([voi])
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept = rescale
    pvt.RescaleType = "US"
    shared.PixelValueTransformationSequence = DicomSequence([pvt])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    start = dt.datetime(2024, 1, 2, 10, 15, 1)
    per_frame = []
    for i in range(t):
        fg = Dataset()
        content = Dataset()
        content.FrameReferenceDateTime = (start + dt.timedelta(milliseconds=frame_step_ms * i)).strftime("%Y%m%d%H%M%S.%f")
        content.FrameAcquisitionDateTime = content.FrameReferenceDateTime
        fg.FrameContentSequence = DicomSequence([content])
        per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _set_pixels(ds, frames, "explicit", bits_stored)
    ds.save_as(os.fspath(path), enforce_file_format=True)
    return ds


def write_single_frame_series(folder: "os.PathLike[str] | str", frames: np.ndarray, *, sop_class: str = XA,
                              instance_numbers: bool = True, transfer_syntax: str = "explicit",
                              frame_step_ms: float = 100.0, ct_geometry: bool = False,
                              spacing: float = 0.5) -> list:
    """One file per frame, with names in reverse order (the reader must sort by InstanceNumber / time).

    ct_geometry: add a Frame of Reference, ImagePositionPatient (z = frame index * 2 mm) and
    ImageOrientationPatient, as a CT series has (for highdicom/dcmqi SEG sources).
    Returns the datasets in frame order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames)
    study, series, for_uid = generate_uid(), generate_uid(), generate_uid()
    start = dt.datetime(2024, 1, 2, 10, 15, 1)
    out = []
    t = frames.shape[0]
    for i in range(t):
        ds = base_dataset(sop_class, study_uid=study, series_uid=series)
        ds.Rows, ds.Columns = frames.shape[1:3]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        bits = 16 if frames.dtype.itemsize == 2 else 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        if instance_numbers:
            ds.InstanceNumber = i + 1
        else:
            del ds.InstanceNumber
        when = start + dt.timedelta(milliseconds=frame_step_ms * i)
        ds.AcquisitionDate = when.strftime("%Y%m%d")
        ds.AcquisitionTime = when.strftime("%H%M%S.%f")
        ds.ContentTime = ds.AcquisitionTime
        ds.PixelSpacing = [spacing, spacing]
        if ct_geometry:
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.ImagePositionPatient = [0.0, 0.0, 2.0 * i]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.SliceThickness = 2.0
            ds.RescaleIntercept, ds.RescaleSlope = 0, 1
            ds.KVP = 120
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            del ds.PatientOrientation
        _set_pixels(ds, frames[i : i + 1], transfer_syntax, bits)
        ds.save_as(os.fspath(folder / f"img_{t - i:03d}.dcm"), enforce_file_format=True)
        out.append(ds)
    return out


def write_sr(path: "os.PathLike[str] | str") -> None:
    """A minimal Basic Text SR (no pixel data)."""
    ds = base_dataset(SR)
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    _file_meta(ds, ExplicitVRLittleEndian)
    ds.save_as(os.fspath(path), enforce_file_format=True)


def dciodvfy(path: "os.PathLike[str] | str") -> Tuple[list, list, str]:
    """Run dicom3tools' dciodvfy: (error lines, warning lines, full output)."""
    import subprocess

    proc = subprocess.run(["dciodvfy", os.fspath(path)], capture_output=True, text=True, timeout=120)
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    warnings = [line for line in text.splitlines() if line.startswith("Warning")]
    return errors, warnings, text


def blob_labels(t: int, h: int, w: int, objects: Iterable[int] = (1, 2, 3), empty_frames: Iterable[int] = (),
                seed: int = 1) -> np.ndarray:
    """Label stack with a rectangle per object per frame, moving over time; chosen frames left empty."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((t, h, w), dtype=np.uint8)
    empty = set(empty_frames)
    for k in objects:
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        hh, ww = max(3, h // (3 + k)), max(3, w // (2 + k))
        for i in range(t):
            if i in empty:
                continue
            dy = (i * (k + 1)) % max(1, h - y0 - hh)
            labels[i, y0 + dy : y0 + dy + hh, x0 : x0 + ww] = k
    return labels
