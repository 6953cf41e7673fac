"""Write a grey cine as a multi-frame X-Ray Angiographic Image (XA) DICOM file.

One public function, :func:`write_xa_cine`.  The file is an instance of the
X-Ray Angiographic Image Storage SOP class (1.2.840.10008.5.1.4.1.1.12.1) with
the modules the XA Image IOD requires for a multi-frame, single-plane,
MONOCHROME2 image: Patient, General Study, General Series, General Equipment,
General Acquisition, General Image, Image Pixel, Contrast/Bolus, Cine,
Multi-frame, X-Ray Image, X-Ray Acquisition, XA Positioner and SOP Common.
Pixel data are uncompressed Explicit VR Little Endian, or RLE Lossless
(pydicom's own encoder) when ``rle=True``.  ``dciodvfy`` (dicom3tools) reports
no errors on the result.

The file is written under a temporary name in the target folder and renamed,
so a reader never sees a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Mapping, Optional, Union

import numpy as np

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

from .atomic import save_dicom_atomic

#: X-Ray Angiographic Image Storage
XA_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.12.1"

PathLike = Union[str, "os.PathLike[str]"]


def _ds_str(value: float) -> str:
    """A DS (decimal string) of at most 16 characters."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]


def _check_frames(frames: np.ndarray, bits_stored: int) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"frames must be a (T, H, W) array, got shape {arr.shape}")
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"frames must be uint8 or uint16, got {arr.dtype}")
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in 1..16, got {bits_stored}")
    if arr.dtype == np.uint8 and bits_stored > 8:
        arr = arr.astype(np.uint16)
    if arr.size and int(arr.max()) >= (1 << bits_stored):
        raise ValueError(
            f"pixel value {int(arr.max())} does not fit in {bits_stored} stored bits"
        )
    return np.ascontiguousarray(arr)


def write_xa_cine(
    path: PathLike,
    frames: np.ndarray,
    *,
    frame_time_ms: float,
    pixel_spacing_mm: Optional[float] = None,
    patient_name: str = "SYNTHETIC^CINE",
    patient_id: str = "FSVOS0001",
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    sop_instance_uid: Optional[str] = None,
    rle: bool = False,
    bits_stored: int = 8,
    extra: Optional[Union[Mapping[str, Any], Dataset]] = None,
) -> None:
    """Write ``frames`` as one multi-frame XA DICOM file at ``path``.

    Parameters
    ----------
    path:
        Output file.  Its folder must exist.  Written atomically (temporary
        name in the same folder, then rename).
    frames:
        (T, H, W) ``uint8`` or ``uint16`` grey frames, MONOCHROME2 (0 = black).
        ``uint8`` with ``bits_stored <= 8`` is stored with 8 bits allocated,
        anything else with 16 bits allocated.  Every value must fit in
        ``bits_stored`` bits (else ``ValueError``).
    frame_time_ms:
        Nominal time between frames in milliseconds (Cine module FrameTime;
        CineRate is derived from it).  Must be > 0.
    pixel_spacing_mm:
        Detector (imager) pixel spacing in mm, written as ImagerPixelSpacing,
        or None to leave it out.
    patient_name, patient_id:
        Patient module identity.
    study_uid, series_uid, sop_instance_uid:
        UIDs to use; new ones are generated when None.
    rle:
        True: RLE Lossless transfer syntax (pydicom's encoder); False:
        uncompressed Explicit VR Little Endian.
    bits_stored:
        BitsStored (1..16); HighBit = bits_stored - 1.
    extra:
        Further data elements, as a mapping keyword -> value (e.g.
        ``{"PatientSex": "F", "PositionerPrimaryAngle": 30}``) or a pydicom
        Dataset whose elements are copied.  They are applied last, so they
        override the defaults (but not the pixel description).
    """
    if not frame_time_ms or not np.isfinite(frame_time_ms) or frame_time_ms <= 0:
        raise ValueError(f"frame_time_ms must be a positive number, got {frame_time_ms!r}")
    arr = _check_frames(frames, bits_stored)
    n_frames, rows, cols = arr.shape
    bits_allocated = 8 if arr.dtype == np.uint8 else 16

    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_uid = sop_instance_uid or generate_uid()

    ds = Dataset()
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = XA_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic coronary angiography"
    # General Series
    ds.Modality = "XA"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Cine"
    ds.BodyPartExamined = "HEART"  # unpaired: no Laterality
    # General Equipment
    ds.Manufacturer = "fsvos"
    ds.ManufacturerModelName = "fsvos synthetic XA"
    ds.SoftwareVersions = "fsvos"
    # General Acquisition / General Image
    ds.AcquisitionDate = date
    ds.AcquisitionTime = time
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ContentDate = date
    ds.ContentTime = time
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.LossyImageCompression = "00"
    # Image Pixel / X-Ray Image
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "DISP"
    # Contrast/Bolus
    ds.ContrastBolusAgent = "IODINATED CONTRAST"
    # Cine + Multi-frame
    ds.NumberOfFrames = n_frames
    ds.FrameIncrementPointer = (0x0018, 0x1063)  # -> FrameTime
    ds.FrameTime = _ds_str(float(frame_time_ms))
    ds.CineRate = max(1, int(round(1000.0 / float(frame_time_ms))))
    ds.RecommendedDisplayFrameRate = ds.CineRate
    ds.StartTrim = 1
    ds.StopTrim = n_frames
    # X-Ray Acquisition
    ds.KVP = "80"
    ds.RadiationSetting = "GR"
    ds.XRayTubeCurrent = 500
    ds.ExposureTime = 6
    ds.Exposure = 3
    if pixel_spacing_mm is not None:
        sp = _ds_str(float(pixel_spacing_mm))
        ds.ImagerPixelSpacing = [sp, sp]
    # XA Positioner
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = 0
    ds.PositionerSecondaryAngle = 0

    if extra is not None:
        if isinstance(extra, Dataset):
            for elem in extra:
                ds.add(elem)
        else:
            for keyword, value in extra.items():
                setattr(ds, keyword, value)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS_UID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta

    pixels = arr if n_frames > 1 else arr[0]  # pydicom wants (H, W) for one frame
    if rle:
        ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
    else:
        ds.PixelData = pixels.tobytes()
        if len(ds.PixelData) % 2:
            ds.PixelData += b"\0"
        ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"

    save_dicom_atomic(ds, path)
