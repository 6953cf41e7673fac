"""DICOM Segmentation (SEG) of every frame of a cine: writer and reader.

Writer (:func:`write_seg`)
--------------------------
No library writes a SEG for an X-ray angiography cine: XA/XRF objects have no
Frame of Reference and no plane position/orientation, which highdicom (0.28)
requires, and dcmqi cannot read such a SEG.  This module writes it with pydicom,
following the Segmentation IOD (PS3.3 A.51) for sources without a Frame of
Reference (``geometry="xa"``, the default):

* SOP class Segmentation Storage, Explicit VR Little Endian, ``BINARY``
  (1 bit per pixel, frames packed back to back), ``SegmentsOverlap NO``;
* one segment per object: SegmentLabel (the object's name), SNOMED CT
  Segmented Property Category and Type (:mod:`fsvos.io.seg_codes`),
  RecommendedDisplayCIELabValue, SegmentAlgorithmType ``SEMIAUTOMATIC`` with
  SegmentAlgorithmName and a Segmentation Algorithm Identification (family
  DCM 123110 "Artificial Intelligence", name, version);
* one frame per (segment, source frame) where the segment is present - empty
  frames are skipped (when every frame is empty one empty frame of segment 1
  on the first source frame is written, as a SEG needs at least one frame);
  frames are ordered by segment, then time;
* dimensions ReferencedSegmentNumber (Segment Identification) and
  TemporalPositionIndex (Frame Content; 1-based index of the cine frame);
* per frame a Derivation Image (code DCM 113076 "Segmentation") whose Source
  Image references the source frame: ReferencedSOPClassUID,
  ReferencedSOPInstanceUID, ReferencedFrameNumber (multi-frame sources),
  purpose DCM 121322, SpatialLocationsPreserved ``YES``;
* no Frame of Reference, no Pixel Measures / Plane Position / Plane
  Orientation; PatientOrientation copied from the source (type 2C);
* Common Instance Reference: the source series and its instances;
* Patient, Clinical Trial Subject, General Study, Patient Study and Clinical
  Trial Study attributes copied from the source (the SEG never carries another
  patient identity), a new series (Modality SEG) and a new instance.

``geometry="pseudo3d"`` (opt-in) adds a *made-up* Frame of Reference so that
readers that need one (dcmqi's ``segimage2itkimage``, hence 3D Slicer's
DICOMSegmentationPlugin) can load the SEG: cine frame t becomes an axial slice
at ImagePositionPatient (0, 0, t) mm with ImageOrientationPatient
(1, 0, 0, 0, 1, 0), PixelSpacing the cine's pixel spacing (1 mm if unknown),
slice thickness and spacing 1 mm; the dimensions are ReferencedSegmentNumber and
ImagePositionPatient.  Empty frames of segment 1 are added on the first and last
cine frames when needed, so that the volume dcmqi builds (it spans the frames
present) covers the whole cine.  This matches the frame geometry of Slicer's
DICOMImageSequencePlugin (IJK to RAS diag(-sx, -sy, 1)).  Caveats: the Frame of
Reference is invented - it is shared with no other series, its millimetres
along z are frame numbers, not space, and a viewer that registers series by
Frame of Reference must not be used to relate this SEG to anything; the source
XA still has no Frame of Reference, so the SEG only *overlays* it frame by frame.
The source-frame references are kept, so :func:`read_seg` and highdicom read it
like the XA variant.  The pseudo3d variant also works for cines without a DICOM
source (NPY, NRRD, video): the SEG then has an empty patient identity, a new
study and no source references.  An XA-geometry SEG without a DICOM source is
refused (FsvosInputError), since its only link to the images is the references.

Reader (:func:`read_seg`)
-------------------------
Reads SEGs written here, by highdicom or by dcmqi (BINARY, FRACTIONAL
thresholded at half the maximum, or LABELMAP) back into a uint8 label stack
(T, H, W) on the frames of the source cine: label value = segment number.
With a cine, the frames are placed by their source-frame references (then
TemporalPositionIndex, then plane position); without one, by ReferencedFrameNumber
of a multi-frame source (T = the highest referenced frame, so trailing empty
frames are not known), else by TemporalPositionIndex, else by position along the
slice normal.  Where segments overlap the higher segment number wins.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .atomic import save_dicom_atomic
from pydicom.multival import MultiValue

from ..errors import FsvosInputError
from . import seg_codes
from .cine import Cine

__all__ = ["SEG_SOP_CLASS_UID", "write_seg", "read_seg", "normalize_objects", "check_label_stack", "GEOMETRIES"]

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.7"
GEOMETRIES = ("xa", "pseudo3d")

_PATIENT_KEYWORDS = (
    # Patient module
    "ReferencedPatientSequence", "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence", "PatientBirthDate", "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
    "PatientAlternativeCalendar", "PatientSex", "QualityControlSubject", "StrainDescription",
    "StrainNomenclature", "StrainStockSequence", "StrainAdditionalInformation", "StrainCodeSequence",
    "GeneticModificationsSequence", "OtherPatientNames", "OtherPatientIDsSequence",
    "ReferencedPatientPhotoSequence", "EthnicGroupCodeSequence", "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence",
    "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization",
    "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)
_CLINICAL_TRIAL_SUBJECT_KEYWORDS = (
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID", "ClinicalTrialSubjectID",
    "IssuerOfClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
)
_STUDY_KEYWORDS = (
    # General Study module
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyDescription", "ProcedureCodeSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "ReferencedStudySequence", "StudyInstanceUID", "StudyID",
    "RequestingService", "RequestingServiceCodeSequence", "ReasonForPerformedProcedureCodeSequence",
    # Patient Study module
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension",
    "PatientWeight", "MedicalAlerts", "Allergies", "Occupation", "SmokingStatus", "AdditionalPatientHistory",
    "PregnancyStatus", "LastMenstrualDate", "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence",
    "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState",
)
_CLINICAL_TRIAL_STUDY_KEYWORDS = (
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription", "LongitudinalTemporalOffsetFromEvent",
    "LongitudinalTemporalEventType", "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)
_TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


# ----------------------------------------------------------------------------- objects


def normalize_objects(labels: np.ndarray, objects: Optional[Sequence[Dict[str, Any]]], path: Any = None) -> List[Dict[str, Any]]:
    """Complete and check the object descriptions of a label stack.

    Parameters
    ----------
    labels:
        Integer label stack (any shape); 0 is background.
    objects:
        ``[{"label": int, "name": str, "category": str, "color": (r, g, b)}]``;
        ``name`` defaults to the category (or "Object <label>"), ``category`` to
        ``generic``, ``color`` to the category's colour.  None: one generic
        object per label value present.

    Returns
    -------
    list of dict
        Sorted by label, each with ``label``, ``name``, ``category`` (canonical
        name), ``color`` (RGB ints) and ``segment_number`` (1..n in label order).

    Raises FsvosInputError for duplicate or out-of-range labels, an unknown
    category, a bad colour, or a label value present in `labels` that no object
    describes.
    """
    present = [int(v) for v in np.unique(labels) if v != 0]
    if objects is None:
        objects = [{"label": v} for v in present]
    out: List[Dict[str, Any]] = []
    seen = set()
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or "label" not in obj:
            raise FsvosInputError(f"object #{i + 1} has no 'label' (expected a dict with label, name, category, color)", path)
        try:
            label = int(obj["label"])
        except (TypeError, ValueError):
            raise FsvosInputError(f"object #{i + 1}: label {obj['label']!r} is not an integer", path) from None
        if not 1 <= label <= 255:
            raise FsvosInputError(f"object #{i + 1}: label {label} is outside 1..255", path)
        if label in seen:
            raise FsvosInputError(f"label {label} is described by more than one object", path)
        seen.add(label)
        try:
            category = seg_codes.normalize_category(obj.get("category"))
        except ValueError as exc:
            raise FsvosInputError(f"object with label {label}: {exc}", path) from None
        color = obj.get("color")
        if color is None:
            color = seg_codes.default_color(category, len(out))
        try:
            color = tuple(int(round(float(c))) for c in color)
            if len(color) != 3 or any(not 0 <= c <= 255 for c in color):
                raise ValueError
        except (TypeError, ValueError):
            raise FsvosInputError(f"object with label {label}: colour {obj.get('color')!r} is not three numbers 0..255", path) from None
        name = str(obj.get("name") or (category if category != "generic" else f"Object {label}")).strip()
        if not name:
            name = f"Object {label}"
        out.append({"label": label, "name": name[:64], "category": category, "color": color})
    missing = sorted(set(present) - seen)
    if missing:
        raise FsvosInputError(
            f"label value(s) {', '.join(map(str, missing))} occur in the labels but no object describes them", path
        )
    out.sort(key=lambda o: o["label"])
    for number, obj in enumerate(out, start=1):
        obj["segment_number"] = number
    return out


# ----------------------------------------------------------------------------- helpers


def _code_item(code) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _code(value: str, scheme: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, scheme, meaning)


def _ds_str(value: float) -> str:
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def _copy_attributes(dst, src, keywords: Sequence[str]) -> None:
    for kw in keywords:
        if kw in src:
            dst[kw] = copy.deepcopy(src[kw])


def _now() -> Tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def _atomic_save(ds, path: Path) -> None:
    save_dicom_atomic(ds, path)


def check_label_stack(labels: np.ndarray, path: Any = None) -> np.ndarray:
    """A (T, H, W) label stack as uint8; FsvosInputError (naming `path`) for other shapes, non-integers or values > 255."""
    from .masks import as_labels

    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise FsvosInputError(f"labels must be a (frames, height, width) stack, got shape {tuple(arr.shape)}", path)
    return as_labels(arr, path)


# ----------------------------------------------------------------------------- writer


def _pack_frames(labels: np.ndarray, frames: Sequence[Tuple[int, int]], number_to_label: Dict[int, int]) -> bytes:
    """BINARY pixel data of the (segment number, t) frames, padded to an even length."""
    from pydicom.pixels import pack_bits

    rows, cols = labels.shape[1:]
    if (rows * cols) % 8 == 0:  # frames end on byte boundaries: pack one at a time (bounded memory)
        data = b"".join(pack_bits(labels[t] == number_to_label[s], pad=False) for s, t in frames)
    else:
        masks = np.stack([labels[t] == number_to_label[s] for s, t in frames])
        data = pack_bits(masks, pad=False)
    return data + b"\x00" if len(data) % 2 else data


def write_seg(
    path: "os.PathLike[str] | str",
    labels: np.ndarray,
    cine: Optional[Cine],
    objects: Optional[Sequence[Dict[str, Any]]] = None,
    *,
    algorithm_name: str = "FSVOSPropagate",
    algorithm_version: Optional[str] = None,
    geometry: str = "xa",
    series_description: str = "FSVOS segmentation",
    series_number: Optional[int] = None,
    content_label: str = "FSVOS",
    content_description: str = "Objects propagated over every frame of the cine",
    manufacturer: str = "FSVOSPropagate",
) -> None:
    """Write a DICOM Segmentation of every frame of `cine` (see the module documentation for the layout).

    Parameters
    ----------
    path:
        Output file; written under a temporary name in the same folder, then
        renamed (no partial file is ever visible).
    labels:
        uint8 (T, H, W) label stack on the cine's frames, 0 = background,
        value v = the object whose ``label`` is v.
    cine:
        The source cine; for ``geometry="xa"`` it must come from DICOM
        (``cine.dicom`` and ``cine.source_frames``).  For ``"pseudo3d"`` it may
        be a non-DICOM cine or None (then pixel spacing 1 mm, no patient identity).
    objects:
        ``[{"label", "name", "category", "color"}]`` (see :func:`normalize_objects`);
        None: one generic object per label value present.  Segment numbers are
        1..n in ascending label order, so labels 1..n read back unchanged.
    algorithm_name, algorithm_version:
        Recorded as SegmentAlgorithmName and in the Segmentation Algorithm
        Identification (version defaults to ``fsvos.__version__``).
    geometry:
        ``"xa"`` (default; no Frame of Reference) or ``"pseudo3d"``.
    series_description, series_number:
        Of the new SEG series; the number defaults to the source's + 1000.
    content_label:
        ContentLabel (a DICOM CS: upper case letters, digits, space, '_', at most 16).

    Raises
    ------
    FsvosInputError
        Bad labels/objects, a shape different from the cine's, an unknown
        geometry, or an XA SEG for a cine without a DICOM source.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    out_path = Path(path)
    if geometry not in GEOMETRIES:
        raise FsvosInputError(f"unknown SEG geometry {geometry!r} (expected one of: {', '.join(GEOMETRIES)})", out_path)
    lab = check_label_stack(labels, out_path)
    t_frames, rows, cols = lab.shape
    src = cine.dicom if cine is not None else None
    source_frames = list(cine.source_frames) if cine is not None and cine.source_frames else None
    has_source = src is not None and source_frames is not None
    if cine is not None and tuple(cine.frames.shape) != tuple(lab.shape):
        raise FsvosInputError(
            f"labels of shape {tuple(lab.shape)} do not match the cine's {tuple(cine.frames.shape)} (frames, height, width)",
            out_path,
        )
    if geometry == "xa" and not has_source:
        where = f" ({cine.source})" if cine is not None and cine.source else ""
        raise FsvosInputError(
            f"a DICOM-SEG of XA geometry references the frames of a DICOM source, and this cine{where} is not "
            f"DICOM; give the DICOM cine, or use the pseudo3d geometry", out_path
        )
    if has_source:
        assert source_frames is not None and src is not None
        if len(source_frames) != t_frames:
            raise FsvosInputError(
                f"the cine has {len(source_frames)} source-frame references for {t_frames} frames", out_path
            )
        src_rows, src_cols = src.get("Rows"), src.get("Columns")
        if src_rows and src_cols and (int(src_rows), int(src_cols)) != (rows, cols):
            raise FsvosInputError(
                f"labels of {rows}x{cols} pixels do not match the {src_rows}x{src_cols} source images", out_path
            )
    objs = normalize_objects(lab, objects, out_path)
    if not objs:
        raise FsvosInputError("nothing to write: the labels are all background and no object is described", out_path)
    label_to_segment = {o["label"]: o["segment_number"] for o in objs}
    label_cs = "".join(c for c in content_label.upper() if c.isalnum() or c in " _")[:16] or "FSVOS"
    if algorithm_version is None:
        from .. import __version__ as algorithm_version  # type: ignore[no-redef]

    date, time = _now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    # --- SOP Common
    ds.SOPClassUID = SEG_SOP_CLASS_UID
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time

    # --- Patient, Clinical Trial Subject, General Study, Patient Study, Clinical Trial Study
    if has_source:
        _copy_attributes(ds, src, _PATIENT_KEYWORDS)
        if src.get("ClinicalTrialSponsorName") and src.get("ClinicalTrialProtocolID"):
            _copy_attributes(ds, src, _CLINICAL_TRIAL_SUBJECT_KEYWORDS)
        _copy_attributes(ds, src, _STUDY_KEYWORDS)
        if "ClinicalTrialTimePointID" in src:
            _copy_attributes(ds, src, _CLINICAL_TRIAL_STUDY_KEYWORDS)
    for kw in _TYPE2_PATIENT_STUDY:
        if kw not in ds:
            setattr(ds, kw, "")
    if not ds.get("StudyInstanceUID"):
        ds.StudyInstanceUID = generate_uid()

    # --- General Series, Segmentation Series
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = generate_uid()
    if series_number is None:
        try:
            series_number = int(src.get("SeriesNumber")) + 1000 if has_source and src.get("SeriesNumber") not in (None, "") else 1000
        except (TypeError, ValueError):
            series_number = 1000
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate, ds.SeriesTime = date, time
    if series_description:
        ds.SeriesDescription = series_description[:64]

    # --- Frame of Reference (pseudo3d only)
    if geometry == "pseudo3d":
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""

    # --- General Equipment, Enhanced General Equipment
    ds.Manufacturer = manufacturer[:64]
    ds.ManufacturerModelName = algorithm_name[:64]
    ds.DeviceSerialNumber = "1"
    ds.SoftwareVersions = str(algorithm_version)[:64]

    # --- General Image, Segmentation Image
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    if geometry == "xa":
        ds.PatientOrientation = copy.deepcopy(src.PatientOrientation) if has_source and "PatientOrientation" in src else ""
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = label_cs
    ds.ContentDescription = content_description[:64]
    ds.SegmentationType = "BINARY"
    ds.SegmentsOverlap = "NO"
    ds.LossyImageCompression = "00"

    # --- Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0

    # --- Segment Sequence
    algorithm_family = _code("123110", "DCM", "Artificial Intelligence")
    segments = []
    for obj in objs:
        entry = seg_codes.codes_for(obj["category"])
        item = Dataset()
        item.SegmentNumber = obj["segment_number"]
        item.SegmentLabel = obj["name"]
        item.SegmentDescription = obj["category"][:64]
        item.SegmentAlgorithmType = "SEMIAUTOMATIC"
        item.SegmentAlgorithmName = algorithm_name[:64]
        algo = Dataset()
        algo.AlgorithmFamilyCodeSequence = DicomSequence([_code_item(algorithm_family)])
        algo.AlgorithmName = algorithm_name[:64]
        algo.AlgorithmVersion = str(algorithm_version)[:64]
        item.SegmentationAlgorithmIdentificationSequence = DicomSequence([algo])
        item.RecommendedDisplayCIELabValue = list(seg_codes.rgb_to_dicom_lab(obj["color"]))
        item.SegmentedPropertyCategoryCodeSequence = DicomSequence([_code_item(entry.category)])
        item.SegmentedPropertyTypeCodeSequence = DicomSequence([_code_item(entry.type)])
        segments.append(item)
    ds.SegmentSequence = DicomSequence(segments)

    # --- frames: (segment, time) where the segment is present
    counts = np.stack([np.bincount(lab[t].ravel(), minlength=256) for t in range(t_frames)])  # (T, 256)
    present = [(obj["segment_number"], int(t)) for obj in objs for t in np.flatnonzero(counts[:, obj["label"]])]
    if not present:
        present = [(1, 0)]
    if geometry == "pseudo3d":
        # empty frames of segment 1 on the first and last cine frames, so that readers that build a
        # volume from the frames present (dcmqi, Slicer) span the whole cine
        times = {t for _s, t in present}
        present.extend((1, t) for t in sorted({0, t_frames - 1} - times))
        present.sort()
    number_to_label = {v: k for k, v in label_to_segment.items()}

    # --- shared functional groups
    shared = Dataset()
    if geometry == "pseudo3d":
        spacing = cine.pixel_spacing_mm if cine is not None and cine.pixel_spacing_mm else (1.0, 1.0)
        measures = Dataset()
        measures.PixelSpacing = [_ds_str(float(spacing[0])), _ds_str(float(spacing[1]))]
        measures.SliceThickness = "1"
        measures.SpacingBetweenSlices = "1"
        shared.PixelMeasuresSequence = DicomSequence([measures])
        orientation = Dataset()
        orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    # --- per-frame functional groups
    numbered = bool(cine.extra.get("dicom_numbered_frames", True)) if has_source and cine is not None else False
    sop_classes = cine.extra.get("dicom_sop_class_uids") if has_source and cine is not None else None
    default_class = str(src.get("SOPClassUID", "")) if has_source else ""
    derivation_code = _code("113076", "DCM", "Segmentation")
    purpose_code = _code("121322", "DCM", "Source image for image processing operation")
    per_frame = []
    for segment_number, t in present:
        fg = Dataset()
        if has_source:
            uid, frame_number = source_frames[t]  # type: ignore[index]
            ref = Dataset()
            ref.ReferencedSOPClassUID = (sop_classes[t] if sop_classes and len(sop_classes) == t_frames else default_class)
            ref.ReferencedSOPInstanceUID = uid
            if numbered:
                ref.ReferencedFrameNumber = int(frame_number)
            ref.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(purpose_code)])
            ref.SpatialLocationsPreserved = "YES"
            derivation = Dataset()
            derivation.DerivationCodeSequence = DicomSequence([_code_item(derivation_code)])
            derivation.SourceImageSequence = DicomSequence([ref])
            fg.DerivationImageSequence = DicomSequence([derivation])
        content = Dataset()
        content.DimensionIndexValues = [segment_number, t + 1]
        if geometry == "xa":
            content.TemporalPositionIndex = t + 1
        fg.FrameContentSequence = DicomSequence([content])
        if geometry == "pseudo3d":
            position = Dataset()
            position.ImagePositionPatient = [0, 0, t]
            fg.PlanePositionSequence = DicomSequence([position])
        segment_id = Dataset()
        segment_id.ReferencedSegmentNumber = segment_number
        fg.SegmentIdentificationSequence = DicomSequence([segment_id])
        per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(present)

    # --- Multi-frame Dimension
    organization_uid = generate_uid()
    organization = Dataset()
    organization.DimensionOrganizationUID = organization_uid
    ds.DimensionOrganizationSequence = DicomSequence([organization])
    dim_segment = Dataset()
    dim_segment.DimensionOrganizationUID = organization_uid
    dim_segment.DimensionIndexPointer = 0x0062000B  # ReferencedSegmentNumber
    dim_segment.FunctionalGroupPointer = 0x0062000A  # SegmentIdentificationSequence
    dim_segment.DimensionDescriptionLabel = "Segment Number"
    dim_second = Dataset()
    dim_second.DimensionOrganizationUID = organization_uid
    if geometry == "xa":
        dim_second.DimensionIndexPointer = 0x00209128  # TemporalPositionIndex
        dim_second.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        dim_second.DimensionDescriptionLabel = "Temporal Position Index"
    else:
        dim_second.DimensionIndexPointer = 0x00200032  # ImagePositionPatient
        dim_second.FunctionalGroupPointer = 0x00209113  # PlanePositionSequence
        dim_second.DimensionDescriptionLabel = "Image Position (Patient)"
    ds.DimensionIndexSequence = DicomSequence([dim_segment, dim_second])

    # --- Common Instance Reference
    if has_source:
        instances: Dict[str, str] = {}
        for t, (uid, _frame) in enumerate(source_frames):  # type: ignore[arg-type]
            if uid not in instances:
                instances[uid] = sop_classes[t] if sop_classes and len(sop_classes) == t_frames else default_class
        ref_instances = []
        for uid, sop_class in instances.items():
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            ref_instances.append(item)
        series = Dataset()
        series.SeriesInstanceUID = str(src.get("SeriesInstanceUID", ""))
        series.ReferencedInstanceSequence = DicomSequence(ref_instances)
        ds.ReferencedSeriesSequence = DicomSequence([series])

    # --- Pixel Data: 1 bit per pixel, little-endian bit order, frames back to back (no padding between)
    ds.PixelData = _pack_frames(lab, present, number_to_label)
    ds["PixelData"].VR = "OB"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"FSVOS_{algorithm_version}"[:16]
    ds.file_meta = meta
    try:
        _atomic_save(ds, out_path)
    except OSError as exc:
        raise FsvosInputError(f"cannot write the SEG ({exc.strerror or exc})", out_path) from None


# ----------------------------------------------------------------------------- reader


def _frame_items(ds) -> List[Any]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if per_frame is not None and len(per_frame) == n:
        return list(per_frame)
    return [None] * n


def _fg_value(ds, item, sequence: str):
    """First item of functional group `sequence` for a frame: per-frame, else shared."""
    if item is not None and item.get(sequence):
        return item.get(sequence)[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0].get(sequence)[0]
    return None


def _frame_refs(ds, item) -> List[Tuple[str, int]]:
    refs = []
    derivation_seq = None
    if item is not None and item.get("DerivationImageSequence"):
        derivation_seq = item.DerivationImageSequence
    else:
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared and shared[0].get("DerivationImageSequence"):
            derivation_seq = shared[0].DerivationImageSequence
    for derivation in derivation_seq or []:
        for source in derivation.get("SourceImageSequence", []) or []:
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            if not uid:
                continue
            numbers = source.get("ReferencedFrameNumber")
            if numbers is None or numbers == "":
                refs.append((uid, 1))  # a single-frame instance
            elif isinstance(numbers, (list, tuple, MultiValue)):
                refs.extend((uid, int(n)) for n in numbers)
            else:
                refs.append((uid, int(numbers)))
    return refs


def _segment_objects(ds) -> List[Dict[str, Any]]:
    objects = []
    for item in ds.get("SegmentSequence", []) or []:
        number = int(item.SegmentNumber)
        type_seq = item.get("SegmentedPropertyTypeCodeSequence")
        cat_seq = item.get("SegmentedPropertyCategoryCodeSequence")
        category = "generic"
        codes: Dict[str, Tuple[str, str, str]] = {}
        if type_seq:
            code = type_seq[0]
            category = seg_codes.category_from_codes(str(code.get("CodingSchemeDesignator", "")), str(code.get("CodeValue", "")))
            codes["type"] = (str(code.get("CodingSchemeDesignator", "")), str(code.get("CodeValue", "")), str(code.get("CodeMeaning", "")))
        if cat_seq:
            code = cat_seq[0]
            codes["category"] = (str(code.get("CodingSchemeDesignator", "")), str(code.get("CodeValue", "")), str(code.get("CodeMeaning", "")))
        lab = item.get("RecommendedDisplayCIELabValue")
        if lab is not None and len(lab) == 3:
            color = seg_codes.dicom_lab_to_rgb([int(v) for v in lab])
        else:
            color = seg_codes.default_color(category, len(objects))
        objects.append({
            "label": number,
            "segment_number": number,
            "name": str(item.get("SegmentLabel", "") or f"Segment {number}"),
            "category": category,
            "color": color,
            "codes": codes,
            "algorithm_type": str(item.get("SegmentAlgorithmType", "")),
        })
    return objects


def read_seg(path: "os.PathLike[str] | str", cine: Optional[Cine] = None) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Read a DICOM-SEG as a label stack on the source cine's frames.

    Parameters
    ----------
    path:
        A Segmentation Storage (or Label Map Segmentation) file.
    cine:
        The source cine (recommended): the result then has its (T, H, W) shape
        and frames are placed through the SEG's source-frame references.

    Returns
    -------
    labels:
        uint8 (T, H, W), value = segment number (0 = none).
    objects:
        Per segment: ``label`` (= segment number), ``segment_number``, ``name``,
        ``category`` (from the property type code; ``generic`` if not ours),
        ``color`` (RGB from the CIELab value), ``codes`` and ``algorithm_type``.

    Raises
    ------
    FsvosInputError
        Not a SEG, damaged, more than 255 segments, frames that reference images
        not in `cine`, a size different from the cine's, or no way to place frames.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    if not p.is_file():
        raise FsvosInputError("no such file", p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(os.fspath(p))
    except InvalidDicomError:
        raise FsvosInputError("not a DICOM file", p) from None
    except Exception as exc:  # damaged files raise many types
        raise FsvosInputError(f"truncated or damaged DICOM file ({' '.join(str(exc).split())[:160]})", p) from None
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in (SEG_SOP_CLASS_UID, LABELMAP_SEG_SOP_CLASS_UID) and str(ds.get("Modality", "")) != "SEG":
        raise FsvosInputError("not a DICOM Segmentation (SEG) object", p)
    objects = _segment_objects(ds)
    if len(objects) > 255:
        raise FsvosInputError(f"the SEG has {len(objects)} segments; a uint8 label stack holds at most 255", p)
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise FsvosInputError(f"cannot decode the SEG pixel data ({' '.join(str(exc).split())[:160]})", p) from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.shape[0] != n_frames:
        raise FsvosInputError(f"the SEG pixel data holds {pixels.shape[0]} frames, NumberOfFrames says {n_frames}", p)
    rows, cols = pixels.shape[1:3]

    items = _frame_items(ds)
    frame_segments: List[Optional[int]] = []
    frame_refs: List[List[Tuple[str, int]]] = []
    frame_temporal: List[Optional[int]] = []
    frame_position: List[Optional[Tuple[float, float, float]]] = []
    for item in items:
        sid = _fg_value(ds, item, "SegmentIdentificationSequence")
        frame_segments.append(int(sid.ReferencedSegmentNumber) if sid is not None and "ReferencedSegmentNumber" in sid else None)
        frame_refs.append(_frame_refs(ds, item))
        content = _fg_value(ds, item, "FrameContentSequence")
        tpi = content.get("TemporalPositionIndex") if content is not None else None
        frame_temporal.append(int(tpi) if tpi not in (None, "") else None)
        pos = _fg_value(ds, item, "PlanePositionSequence")
        ipp = pos.get("ImagePositionPatient") if pos is not None else None
        frame_position.append(tuple(float(v) for v in ipp) if ipp is not None and len(ipp) == 3 else None)  # type: ignore[misc]

    # --- where does each SEG frame go? -> list of target frame indices per SEG frame
    targets: List[List[int]] = [[] for _ in range(n_frames)]
    if cine is not None:
        t_total, h, w = cine.frames.shape
        if (h, w) != (rows, cols):
            raise FsvosInputError(f"the SEG frames are {rows}x{cols} pixels, the cine's {h}x{w}", p)
        index: Dict[Tuple[str, int], int] = {}
        if cine.source_frames:
            for t, (uid, number) in enumerate(cine.source_frames):
                index[(str(uid), int(number))] = t
        for f in range(n_frames):
            if frame_refs[f] and index:
                hits = [index.get(ref) for ref in frame_refs[f]]
                if any(hit is None for hit in hits):
                    bad = frame_refs[f][[hit is None for hit in hits].index(True)]
                    raise FsvosInputError(
                        f"SEG frame {f + 1} refers to image {bad[0]} frame {bad[1]}, which is not in the cine "
                        f"{cine.source or ''}".rstrip(), p
                    )
                targets[f] = sorted(set(int(hit) for hit in hits))  # type: ignore[arg-type]
        unplaced = [f for f in range(n_frames) if not targets[f]]
        if unplaced:
            order = _order_without_references(unplaced, frame_temporal, frame_position, p, ds)
            for f, t in order.items():
                if t >= t_total:
                    raise FsvosInputError(f"SEG frame {f + 1} lies at cine frame {t + 1}, beyond the cine's {t_total} frames", p)
                targets[f] = [t]
    else:
        if all(frame_refs):
            uids = {uid for refs in frame_refs for uid, _n in refs}
            numbered = all(len(refs) == 1 for refs in frame_refs)
            if len(uids) == 1 and numbered:
                for f in range(n_frames):
                    targets[f] = [frame_refs[f][0][1] - 1]
            else:
                keys = []  # distinct source frames, ordered
                key_rank: Dict[Tuple[str, int], Tuple] = {}
                for f in range(n_frames):
                    for ref in frame_refs[f]:
                        if ref not in key_rank:
                            rank: Tuple = (len(key_rank),)
                            if all(v is not None for v in frame_temporal):
                                rank = (frame_temporal[f], len(key_rank))
                            elif all(v is not None for v in frame_position):
                                rank = (_along_normal(ds, frame_position[f]), len(key_rank))
                            key_rank[ref] = rank
                            keys.append(ref)
                keys.sort(key=lambda k: key_rank[k])
                position = {k: i for i, k in enumerate(keys)}
                for f in range(n_frames):
                    targets[f] = sorted({position[ref] for ref in frame_refs[f]})
        else:
            for f, t in _order_without_references(list(range(n_frames)), frame_temporal, frame_position, p, ds).items():
                targets[f] = [t]
        t_total = max(t for tl in targets for t in tl) + 1

    labels = np.zeros((t_total, rows, cols), dtype=np.uint8)
    max_fraction = float(ds.get("MaximumFractionalValue", 255) or 255)
    # ascending segment number so that the higher number wins where segments overlap
    order = sorted(range(n_frames), key=lambda f: (frame_segments[f] or 0, f))
    for f in order:
        frame = pixels[f]
        if seg_type == "LABELMAP":
            for t in targets[f]:
                nz = frame > 0
                labels[t][nz] = frame[nz].astype(np.uint8)
            continue
        number = frame_segments[f]
        if number is None:
            raise FsvosInputError(f"SEG frame {f + 1} names no segment (ReferencedSegmentNumber)", p)
        if not 1 <= number <= 255:
            raise FsvosInputError(f"segment number {number} does not fit a uint8 label stack", p)
        mask = frame > (max_fraction / 2.0) if seg_type == "FRACTIONAL" else frame > 0
        for t in targets[f]:
            labels[t][mask] = number
    return labels, objects


def _along_normal(ds, position) -> float:
    shared = ds.get("SharedFunctionalGroupsSequence")
    orientation = None
    if shared and shared[0].get("PlaneOrientationSequence"):
        orientation = shared[0].PlaneOrientationSequence[0].get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return float(position[2])
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return float(np.dot(normal, np.asarray(position, float)))


def _order_without_references(frames: List[int], temporal: List[Optional[int]], position: List[Optional[Tuple[float, float, float]]], path: Path, ds=None) -> Dict[int, int]:
    """Cine frame index of SEG frames that carry no usable source reference."""
    if all(temporal[f] is not None for f in frames):
        return {f: int(temporal[f]) - 1 for f in frames}  # type: ignore[arg-type]
    if all(position[f] is not None for f in frames):
        if ds is None:
            keys = {f: float(position[f][2]) for f in frames}  # type: ignore[index]
        else:
            keys = {f: _along_normal(ds, position[f]) for f in frames}
        distinct = sorted(set(round(v, 4) for v in keys.values()))
        rank = {v: i for i, v in enumerate(distinct)}
        return {f: rank[round(keys[f], 4)] for f in frames}
    raise FsvosInputError(
        "cannot tell which cine frame each SEG frame belongs to (no source references, temporal indices or positions)", path
    )
