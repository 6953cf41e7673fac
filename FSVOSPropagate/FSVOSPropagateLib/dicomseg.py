"""DICOM-SEG of the scene's result (the engine's writer) and SEGs loaded back onto the XA sequence.

No Qt.  In Slicer, the DICOM database resolves SOP instance UIDs to files
(``slicer.dicomDatabase.fileForInstance``); elsewhere any callable does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from .scene import CineInput, FSVOSSceneError, SceneContext, result_labels

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
XA_LIKE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.12.2",  # XRF
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA
    "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
}


def source_dicom_file(cine: CineInput, instance_to_file: Optional[Callable[[str], str]]) -> Optional[str]:
    """The DICOM file the cine was loaded from (through its DICOM.instanceUIDs attribute), or None."""
    if instance_to_file is None:
        return None
    for uid in cine.dicom_instance_uids():
        path = instance_to_file(uid)
        if path and os.path.isfile(path):
            return path
    return None


def export_seg(ctx: SceneContext, cine: CineInput, segmentation_node, path: "os.PathLike[str] | str",
               segment_ids: Optional[Sequence[str]] = None,
               instance_to_file: Optional[Callable[[str], str]] = None, geometry: Optional[str] = None) -> Path:
    """Write a DICOM Segmentation of every frame of the segmentation sequence (or 3D segmentation).

    geometry: "xa" (no Frame of Reference; needs the source DICOM) or "pseudo3d" (loads with Slicer's standard
    DICOM-SEG plugin too); None: "xa" when the source DICOM is known, else "pseudo3d".
    """
    from fsvos.io.cine import Cine, load_cine
    from fsvos.io.seg import write_seg

    labels, infos = result_labels(ctx, cine, segmentation_node, segment_ids)
    source = source_dicom_file(cine, instance_to_file)
    if geometry is None:
        geometry = "xa" if source else "pseudo3d"
    if source:
        src = load_cine(source)
        if src.frames.shape != labels.shape:
            raise FSVOSSceneError(f"geometry mismatch: the source DICOM {source} has frames {src.frames.shape}, the "
                                  f"segmentation {labels.shape}")
    elif geometry == "xa":
        raise FSVOSSceneError("a DICOM-SEG in XA geometry needs the cine's DICOM file (load the cine from the DICOM "
                              "database) - or export with the pseudo-3D geometry")
    else:
        src = Cine(frames=np.asarray(cine.frames).astype(np.uint8) if cine.frames.dtype != np.uint8 else cine.frames,
                   pixel_spacing_mm=cine.spacing_mm)
    objects = [i.as_object() for i in infos]
    out = Path(path)
    write_seg(out, labels, src, objects, geometry=geometry, series_description="FSVOS segmentation")
    return out


def export_seg_nrrd(ctx: SceneContext, cine: CineInput, segmentation_node, path: "os.PathLike[str] | str",
                    segment_ids: Optional[Sequence[str]] = None) -> Path:
    """All frames as one Slicer segmentation file (3D, K = frame), names, colours and terminology kept."""
    from fsvos.io.slicer_formats import write_seg_nrrd

    labels, infos = result_labels(ctx, cine, segmentation_node, segment_ids)
    out = Path(path)
    write_seg_nrrd(out, labels, [i.as_object() for i in infos], spacing_mm=cine.spacing_mm)
    return out


# ----------------------------------------------------------------------------- SEGs back onto the XA sequence


def describe_fsvos_seg(path: "os.PathLike[str] | str") -> Optional[Dict[str, Any]]:
    """For the DICOM plugin: {referenced_series, referenced_instances, name, pseudo3d} when the file is a SEG whose
    frames reference an XA-like (cine) source, else None."""
    import pydicom

    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True)
    except Exception:
        return None
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS_UID:
        return None
    series, instances, classes = None, [], set()
    for item in ds.get("ReferencedSeriesSequence", []):
        series = str(item.get("SeriesInstanceUID", "")) or series
        for inst in item.get("ReferencedInstanceSequence", []):
            instances.append(str(inst.ReferencedSOPInstanceUID))
            classes.add(str(inst.get("ReferencedSOPClassUID", "")))
    if not instances or not classes & XA_LIKE_SOP_CLASSES:
        return None
    return {"referenced_series": series, "referenced_instances": instances,
            "name": str(ds.get("SeriesDescription", "") or "Segmentation"),
            "pseudo3d": "FrameOfReferenceUID" in ds, "manufacturer": str(ds.get("Manufacturer", ""))}


def find_cine_for_instances(ctx: SceneContext, instance_uids: Sequence[str]):
    """The volume sequence in the scene whose frames came from one of these SOP instances, or None."""
    wanted = set(instance_uids)
    seqs = ctx.scene.GetNodesByClass("vtkMRMLSequenceNode")
    for i in range(seqs.GetNumberOfItems()):
        s = seqs.GetItemAsObject(i)
        if s.GetNumberOfDataNodes() == 0 or not s.GetNthDataNode(0).IsA("vtkMRMLVolumeNode"):
            continue
        uids = (s.GetNthDataNode(0).GetAttribute("DICOM.instanceUIDs") or "").split()
        if wanted & set(uids):
            return s
    return None


def load_seg_onto_sequence(ctx: SceneContext, seg_path: "os.PathLike[str] | str", cine: CineInput,
                           source_file: str, name: Optional[str] = None):
    """Read an XA SEG (fsvos.io.seg.read_seg, frames placed by their source references) and show it as a
    segmentation sequence in the cine's browser; returns the proxy segmentation node."""
    from fsvos.io import seg_codes
    from fsvos.io.cine import load_cine
    from fsvos.io.seg import read_seg

    from .scene import _reference_image, create_segmentation_sequence, set_segment_labels, SegmentInfo

    src = load_cine(source_file)
    labels, objects = read_seg(seg_path, src)
    if labels.shape != cine.shape:
        raise FSVOSSceneError(f"geometry mismatch: the SEG has {labels.shape[0]} frames of "
                              f"{labels.shape[2]}x{labels.shape[1]}, the cine {cine.shape[0]} of "
                              f"{cine.shape[2]}x{cine.shape[1]}")
    segments = [(o["name"], tuple(c / 255.0 for c in o["color"]), seg_codes.slicer_terminology(o["category"]))
                for o in objects]
    node = create_segmentation_sequence(ctx, cine, name or Path(seg_path).stem, segments)
    seg = node.GetSegmentation()
    infos = [SegmentInfo(seg.GetNthSegmentID(k), o["name"], (0, 0, 0), "", int(o["label"]))
             for k, o in enumerate(objects)]
    seq = cine.browser.GetSequenceNode(node)
    reference = _reference_image(cine.frame_node)
    for f, value in enumerate(cine.index_values):
        item = seq.GetNthDataNode(seq.GetItemNumberFromIndexValue(value))
        set_segment_labels(item, infos, labels[f][np.newaxis], reference)
    ctx.update_proxies(cine.browser)
    return node
