"""3D Slicer's own files: segmentations (``.seg.nrrd``) and label-volume sequences (``.seq.nrrd``).

Geometry: a cine frame is a single-slice volume with IJK to LPS
``diag(column spacing, row spacing, 1)`` and origin 0 - the geometry of the
frames that Slicer's DICOMImageSequencePlugin creates for XA/US cines (IJK to
RAS ``diag(-sx, -sy, 1)``).  Voxel i is the column, j the row.

``.seg.nrrd`` (:func:`write_seg_nrrd`, :func:`read_seg_nrrd`)
    Written and read with slicerio: one segment per object with its name,
    label value, colour and terminology (``Segmentation category and type -
    DICOM master list`` with the SNOMED CT codes of :mod:`fsvos.io.seg_codes`).
    Either one frame (a 1-slice volume) or the whole stack as a 3D volume whose
    K axis is time (slice spacing 1).

``.seq.nrrd`` (:func:`write_label_sequence_nrrd`, :func:`read_label_sequence_nrrd`)
    A sequence of label-map volumes as Slicer's Sequences module writes it
    (vtkMRMLVolumeSequenceStorageNode with the teem NRRD writer, Slicer <= 5.8):
    4D NRRD, kinds ``list domain domain domain`` (the list axis first, sizes
    T, columns, rows, 1), ``space directions: none (sx,0,0) (0,sy,0) (0,0,1)``,
    the index in ``labels``/``units`` of axis 0 (``time``/``s`` with values
    ``t * frame time`` in seconds, as DICOMImageSequencePlugin names them,
    or ``frame`` with values 0, 1, ... when the frame time is unknown),
    ``axis 0 index type:=numeric``, ``axis 0 index values:=...`` and
    ``DataNodeClassName:=vtkMRMLLabelMapVolumeNode``.  Slicer >= 5.10 reads it
    too (its reader finds the ``list`` axis wherever it is, and writes it last,
    as ``axis 3 ...``); :func:`read_label_sequence_nrrd` reads both layouts.
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FsvosInputError
from .masks import as_labels
from . import seg_codes

__all__ = [
    "write_seg_nrrd",
    "read_seg_nrrd",
    "write_label_sequence_nrrd",
    "read_label_sequence_nrrd",
]

LABELMAP_NODE_CLASS = "vtkMRMLLabelMapVolumeNode"


def _frame_ijk_to_lps(spacing_mm: Optional[Sequence[float]]) -> np.ndarray:
    row, col = (1.0, 1.0) if not spacing_mm else (float(spacing_mm[0]), float(spacing_mm[1]))
    if not (row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col)):
        raise ValueError(f"pixel spacing must be two positive numbers (mm), got {tuple(spacing_mm or ())!r}")
    return np.diag([col, row, 1.0, 1.0])


def _temp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=os.fspath(path.parent))
    os.close(fd)
    return Path(tmp)


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise FsvosInputError(f"cannot write the file ({exc.strerror or exc})", path) from None


# ----------------------------------------------------------------------------- .seg.nrrd


def write_seg_nrrd(
    path: "os.PathLike[str] | str",
    labels: np.ndarray,
    objects: Optional[Sequence[Dict[str, Any]]] = None,
    frame_index: Optional[int] = None,
    *,
    spacing_mm: Optional[Sequence[float]] = None,
) -> None:
    """Write a Slicer segmentation (``.seg.nrrd``) of one frame or of the whole label stack.

    Parameters
    ----------
    path:
        Output file (written under a temporary name, then renamed).
    labels:
        uint8 (T, H, W) stack or one (H, W) frame; 0 = background.
    objects:
        ``[{"label", "name", "category", "color"}]`` as for
        :func:`fsvos.io.seg.normalize_objects`; None: one generic object per
        label present.  Each becomes a segment (ID ``Segment_<label>``, label
        value = label, colour, terminology).
    frame_index:
        With a (T, H, W) stack: write only this frame (0-based) as a 1-slice
        segmentation; None writes the whole stack as a 3D volume (K = frame).
        Recorded in the header as ``FSVOS_FrameIndex``.
    spacing_mm:
        (row, column) pixel spacing in mm (default 1, 1).
    """
    import slicerio

    from .seg import normalize_objects

    p = Path(path)
    arr = as_labels(labels, p)
    if arr.ndim == 3 and frame_index is not None:
        if not 0 <= int(frame_index) < arr.shape[0]:
            raise FsvosInputError(f"frame index {frame_index} is outside 0..{arr.shape[0] - 1}", p)
        arr = arr[int(frame_index)]
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise FsvosInputError(f"labels must be (frames, height, width) or (height, width), got shape {arr.shape}", p)
    objs = normalize_objects(arr, objects, p)
    try:
        ijk_to_lps = _frame_ijk_to_lps(spacing_mm)
    except ValueError as exc:
        raise FsvosInputError(str(exc), p) from None
    segments = []
    for obj in objs:
        entry = seg_codes.codes_for(obj["category"])
        segments.append({
            "id": f"Segment_{obj['label']}",
            "name": obj["name"],
            "labelValue": int(obj["label"]),
            "layer": 0,
            "color": [round(c / 255.0, 6) for c in obj["color"]],
            "terminology": {
                "contextName": "Segmentation category and type - DICOM master list",
                "category": [entry.category.scheme_designator, entry.category.value, entry.category.meaning],
                "type": [entry.type.scheme_designator, entry.type.value, entry.type.meaning],
                "anatomicContextName": "Anatomic codes - DICOM master list",
            },
            "status": "completed",
        })
    segmentation = {
        "voxels": np.ascontiguousarray(arr.transpose(2, 1, 0)),  # (i=column, j=row, k=frame)
        "ijkToLPS": ijk_to_lps,
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
    }
    if frame_index is not None:
        segmentation["FSVOS_FrameIndex"] = str(int(frame_index))
    tmp = _temp_path(p)
    try:
        slicerio.write_segmentation(os.fspath(tmp), segmentation)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, p)


def read_seg_nrrd(path: "os.PathLike[str] | str") -> Tuple[np.ndarray, List[Dict[str, Any]], Dict[str, Any]]:
    """Read a Slicer ``.seg.nrrd`` as a uint8 label stack.

    Returns
    -------
    labels:
        uint8 (K, H, W) - K slices (frames), H = the j axis, W = the i axis.
        Segments keep their label value when they all lie in one layer; with
        overlapping segments (several layers) they are numbered 1..n in file
        order and where they overlap the later one wins.
    objects:
        ``[{"label", "name", "category", "color", "id", "terminology"}]``.
    info:
        ``spacing_mm`` (row, column), ``ijk_to_lps`` (4x4), ``frame_index``
        (int or None, from ``FSVOS_FrameIndex``).
    """
    import slicerio

    p = Path(path)
    if not p.is_file():
        raise FsvosInputError("no such file", p)
    try:
        seg = slicerio.read_segmentation(os.fspath(p))
    except Exception as exc:  # pynrrd/slicerio raise several types for bad files
        raise FsvosInputError(f"not a readable Slicer segmentation ({' '.join(str(exc).split())[:160]})", p) from None
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim == 3:
        layers = voxels[np.newaxis]
    elif voxels.ndim == 4:
        layers = voxels
    else:
        raise FsvosInputError(f"unexpected segmentation voxel array of shape {voxels.shape}", p)
    segments = list(seg.get("segments", []))
    relabel = layers.shape[0] > 1 or len({int(s.get("labelValue", 1)) for s in segments}) != len(segments)
    if len(segments) > 255:
        raise FsvosInputError(f"{len(segments)} segments do not fit a uint8 label stack", p)
    out = np.zeros(layers.shape[1:], dtype=np.uint8)  # (i, j, k)
    objects = []
    for index, segment in enumerate(segments):
        value = int(segment.get("labelValue", 1))
        layer = int(segment.get("layer", 0))
        label = index + 1 if relabel else value
        if not 1 <= label <= 255:
            raise FsvosInputError(f"segment {segment.get('name')!r} has label value {value} outside 1..255", p)
        out[layers[layer] == value] = label
        terminology = segment.get("terminology")
        category = "generic"
        if isinstance(terminology, dict) and terminology.get("type"):
            typ = terminology["type"]
            if len(typ) >= 2:
                category = seg_codes.category_from_codes(typ[0], typ[1])
        color = segment.get("color")
        if color is not None and len(color) == 3:
            rgb = tuple(int(min(max(round(float(c) * 255.0), 0), 255)) for c in color)
        else:
            rgb = seg_codes.default_color(category, index)
        objects.append({
            "label": label,
            "name": str(segment.get("name", f"Segment {label}")),
            "category": category,
            "color": rgb,
            "id": segment.get("id"),
            "terminology": terminology,
        })
    ijk = np.asarray(seg.get("ijkToLPS", np.eye(4)), dtype=float)
    spacing = (float(np.linalg.norm(ijk[:3, 1])), float(np.linalg.norm(ijk[:3, 0])))
    frame_index = seg.get("FSVOS_FrameIndex")
    try:
        frame_index = int(frame_index) if frame_index is not None else None
    except (TypeError, ValueError):
        frame_index = None
    info = {"spacing_mm": spacing, "ijk_to_lps": ijk, "frame_index": frame_index}
    return np.ascontiguousarray(out.transpose(2, 1, 0)), objects, info


# ----------------------------------------------------------------------------- .seq.nrrd


def _seconds(value: float) -> str:
    """Seconds with up to 6 decimals, trailing zeros dropped (Slicer parses any numeric text)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def write_label_sequence_nrrd(
    path: "os.PathLike[str] | str",
    labels: np.ndarray,
    spacing_mm: Optional[Sequence[float]] = None,
    frame_time_ms: Optional[float] = None,
) -> None:
    """Write a label stack as a Slicer label-map volume sequence (``.seq.nrrd``, list axis first).

    Parameters
    ----------
    path:
        Output file (written under a temporary name, then renamed).
    labels:
        uint8 (T, H, W) label stack.
    spacing_mm:
        (row, column) pixel spacing in mm (default 1, 1).
    frame_time_ms:
        Time between frames in ms; the sequence index is then ``time`` in
        seconds (``t * frame_time_ms / 1000``, 6 decimals at most), else ``frame``.
    """
    import nrrd

    p = Path(path)
    arr = as_labels(labels, p)
    if arr.ndim != 3:
        raise FsvosInputError(f"labels must be a (frames, height, width) stack, got shape {arr.shape}", p)
    try:
        ijk = _frame_ijk_to_lps(spacing_mm)
    except ValueError as exc:
        raise FsvosInputError(str(exc), p) from None
    t_frames = arr.shape[0]
    if frame_time_ms is not None and np.isfinite(frame_time_ms) and frame_time_ms > 0:
        name, unit = "time", "s"
        values = [_seconds(t * float(frame_time_ms) * 0.001) for t in range(t_frames)]
    else:
        name, unit = "frame", ""
        values = [str(t) for t in range(t_frames)]
    header = {
        "type": "unsigned char",
        "dimension": 4,
        "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "labels": [name, "", "", ""],
        "units": [unit, "", "", ""],
        "space directions": np.vstack([[np.nan, np.nan, np.nan], ijk[:3, :3].T]),
        "space origin": ijk[:3, 3],
        "encoding": "gzip",
        "axis 0 index type": "numeric",
        "axis 0 index values": " ".join(urllib.parse.quote(v, safe="") for v in values),
        "DataNodeClassName": LABELMAP_NODE_CLASS,
    }
    if not unit:
        del header["units"]
    data = np.ascontiguousarray(arr.transpose(0, 2, 1))[..., np.newaxis]  # (t, i, j, k=1), t fastest on disk
    tmp = _temp_path(p)
    try:
        nrrd.write(os.fspath(tmp), data, header, index_order="F", compression_level=6)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, p)


def read_label_sequence_nrrd(path: "os.PathLike[str] | str") -> Tuple[np.ndarray, Dict[str, Any]]:
    """Read a Slicer volume sequence (``.seq.nrrd``; list axis first or last) of 1-slice label maps.

    Returns
    -------
    labels:
        uint8 (T, H, W) (H = the j axis, W = the i axis).
    info:
        ``spacing_mm`` (row, column), ``frame_time_ms`` (from numeric ``time``
        index values in s or ms, else None), ``index_name``, ``index_unit``,
        ``index_values`` (strings), ``data_node_class``.
    """
    import nrrd

    p = Path(path)
    if not p.is_file():
        raise FsvosInputError("no such file", p)
    try:
        data, header = nrrd.read(os.fspath(p), index_order="F")
    except Exception as exc:  # pynrrd raises several types for bad files
        raise FsvosInputError(f"not a readable NRRD file ({' '.join(str(exc).split())[:160]})", p) from None
    kinds = list(header.get("kinds", []))
    if data.ndim != 4 or len(kinds) != 4:
        raise FsvosInputError(f"a volume sequence is a 4D NRRD, this one is {data.ndim}D", p)
    list_axes = [i for i, k in enumerate(kinds) if k in ("list", "time")]
    if list_axes not in ([0], [3]):
        raise FsvosInputError(f"no sequence (list) axis first or last in kinds {kinds}", p)
    axis = list_axes[0]
    if axis == 3:
        data = np.moveaxis(data, 3, 0)
    if data.shape[3] != 1:
        raise FsvosInputError(f"the sequence items are volumes of {data.shape[3]} slices, expected 1-slice frames", p)
    if not np.issubdtype(data.dtype, np.integer):
        raise FsvosInputError(f"a label sequence holds integers, this one {data.dtype}", p)
    if data.size and (int(data.min()) < 0 or int(data.max()) > 255):
        raise FsvosInputError(f"label values {int(data.min())}..{int(data.max())} do not fit 0..255", p)
    labels = np.ascontiguousarray(data[..., 0].transpose(0, 2, 1).astype(np.uint8))
    directions = np.asarray(header.get("space directions"), dtype=float) if "space directions" in header else None
    spacing = (1.0, 1.0)
    if directions is not None:
        domain = [i for i in range(4) if i != axis]
        col = float(np.linalg.norm(directions[domain[0]]))
        row = float(np.linalg.norm(directions[domain[1]]))
        spacing = (row, col)
    names = header.get("labels") or [""] * 4
    units = header.get("units") or [""] * 4
    index_name = names[axis] if axis < len(names) else ""
    index_unit = units[axis] if axis < len(units) else ""
    raw_values = header.get(f"axis {axis} index values")
    values = [urllib.parse.unquote(v) for v in str(raw_values).split()] if raw_values else [str(i) for i in range(labels.shape[0])]
    frame_time = None
    scale = {"s": 1000.0, "ms": 1.0}.get(str(index_unit).strip())
    if scale is not None and len(values) >= 2:
        try:
            steps = np.diff([float(v) for v in values]) * scale
            if np.all(steps > 0):
                frame_time = float(np.median(steps))
        except ValueError:
            frame_time = None
    info = {
        "spacing_mm": spacing,
        "frame_time_ms": frame_time,
        "index_name": index_name,
        "index_unit": index_unit,
        "index_values": values,
        "data_node_class": header.get("DataNodeClassName"),
    }
    return labels, info
