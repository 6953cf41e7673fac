"""MRML side of the module: read the cine and the painted supports, write the result.

No Qt here.  Every function takes a :class:`SceneContext` (the scene and the module
logics it needs): in Slicer it is made from ``slicer.mrmlScene`` and
``slicer.modules.*.logic()`` (:meth:`SceneContext.from_slicer`); in tests from
slicer-core (:meth:`SceneContext.standalone`).

Two cine layouts are supported:

``sequence``
    What Slicer's DICOMImageSequencePlugin makes of an XA/XRF cine: a sequence
    node of single-slice scalar volumes (IJK to RAS ``diag(-sx, -sy, 1)``,
    index ``time`` in s) shown through a sequence browser.  The user paints on a
    segmentation node that is a proxy of a *segmentation sequence* in the same
    browser (:func:`create_segmentation_sequence` sets it up), so that every
    frame has its own segmentation; every frame with painted labels is a support.
    A plain segmentation node (not in the browser) is taken as painted on the
    browser's current frame.
``volume``
    A 3D volume whose K axis is time; one segmentation node on it; every K
    slice with painted labels is a support.

Frames written by a propagation carry, per segment, a digest of what was
written (attribute :data:`PROPAGATED_ATTRIBUTE`); a frame is a support when its
labels differ from that digest, i.e. when it was painted or corrected by hand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

PROPAGATED_ATTRIBUTE = "FSVOSPropagate.Propagated"
RESULT_ATTRIBUTE = "FSVOSPropagate.Result"


class FSVOSSceneError(ValueError):
    """Bad input in the scene (no cine, no painted frame, empty segment, geometry mismatch, ...)."""


def _slicer():
    import slicer  # Slicer's own module, or slicer-core's namespace package

    return slicer


def _vtk():
    import vtk

    return vtk


def _np_from_vtk_image(image) -> np.ndarray:
    """vtkImageData scalars as an array (K, J, I) (or (K, J, I, C) for multi-component)."""
    from vtk.util import numpy_support

    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise FSVOSSceneError("a volume has no voxel data")
    arr = numpy_support.vtk_to_numpy(scalars)
    ncomp = scalars.GetNumberOfComponents()
    shape = (dims[2], dims[1], dims[0]) + ((ncomp,) if ncomp > 1 else ())
    return arr.reshape(shape)


def _matrix_to_np(m) -> np.ndarray:
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def _ijk_to_ras(volume_node) -> np.ndarray:
    m = _vtk().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _matrix_to_np(m)


# ----------------------------------------------------------------------------- context


@dataclass
class SceneContext:
    """The MRML scene and the module logics the module's logic needs."""

    scene: Any
    segmentations_logic: Any
    sequences_logic: Any = None
    app_logic: Any = None
    _keep: List[Any] = field(default_factory=list, repr=False)

    @classmethod
    def from_slicer(cls) -> "SceneContext":
        slicer = _slicer()
        return cls(scene=slicer.mrmlScene, segmentations_logic=slicer.modules.segmentations.logic(),
                   sequences_logic=slicer.modules.sequences.logic(), app_logic=slicer.app.applicationLogic())

    @classmethod
    def standalone(cls) -> "SceneContext":
        """A fresh scene with an application logic and the Segmentations and Sequences logics registered
        (slicer-core; without the registration segments cannot be created)."""
        slicer = _slicer()
        scene = slicer.vtkMRMLScene()
        app = slicer.vtkSlicerApplicationLogic()
        app.SetMRMLScene(scene)
        seg = slicer.vtkSlicerSegmentationsModuleLogic()
        seg.SetMRMLScene(scene)
        seg.SetMRMLApplicationLogic(app)
        app.SetModuleLogic("Segmentations", seg)
        seq = slicer.vtkSlicerSequencesLogic()
        seq.SetMRMLScene(scene)
        seq.SetMRMLApplicationLogic(app)
        app.SetModuleLogic("Sequences", seq)
        return cls(scene=scene, segmentations_logic=seg, sequences_logic=seq, app_logic=app, _keep=[app, seg, seq])

    def update_proxies(self, browser) -> None:
        if browser is None:
            return
        if self.sequences_logic is not None:
            self.sequences_logic.UpdateProxyNodesFromSequences(browser)


# ----------------------------------------------------------------------------- cine


@dataclass
class CineInput:
    """The cine as found in the scene.

    frames: (T, H, W) voxel values of every frame (grey; RGB frames are converted to luma).
    kind: "sequence" or "volume".
    volume: the 3D volume ("volume") or the browser's proxy volume ("sequence").
    sequence, browser: the volume sequence and its browser ("sequence" only).
    index_values: the sequence index value of each frame ("sequence"), or "0".."T-1".
    spacing_mm: (row, column) pixel spacing.
    """

    frames: np.ndarray
    kind: str
    volume: Any
    sequence: Any = None
    browser: Any = None
    index_values: List[str] = field(default_factory=list)
    spacing_mm: Tuple[float, float] = (1.0, 1.0)
    frame_node: Any = None  # a frame volume with the geometry of one frame (reference for labelmaps)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.frames.shape)  # type: ignore[return-value]

    def frame_index_of(self, index_value: str) -> Optional[int]:
        try:
            return self.index_values.index(index_value)
        except ValueError:
            pass
        try:  # numeric index values written with another precision
            v = float(index_value)
            vals = np.array([float(x) for x in self.index_values])
            i = int(np.argmin(np.abs(vals - v)))
            if abs(vals[i] - v) < 1e-6 * max(1.0, abs(v)):
                return i
        except ValueError:
            pass
        return None

    def dicom_instance_uids(self) -> List[str]:
        """The DICOM SOP instance UID(s) the frames came from (attribute DICOM.instanceUIDs)."""
        uids: List[str] = []
        if self.kind == "sequence":
            for i in range(self.sequence.GetNumberOfDataNodes()):
                v = self.sequence.GetNthDataNode(i).GetAttribute("DICOM.instanceUIDs")
                if v:
                    uids.extend(u for u in v.split() if u and u not in uids)
        else:
            v = self.volume.GetAttribute("DICOM.instanceUIDs")
            if v:
                uids.extend(v.split())
        return uids


def _grey(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 4:  # (K, J, I, C)
        if arr.shape[-1] >= 3:
            return (arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.float32)
        return arr[..., 0]
    return arr


def find_browser(ctx: SceneContext, node) -> Any:
    """The sequence browser that shows `node` (a proxy) or synchronises it (a sequence), or None."""
    if node is None:
        return None
    if node.IsA("vtkMRMLSequenceBrowserNode"):
        return node
    browsers = ctx.scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for i in range(browsers.GetNumberOfItems()):
        b = browsers.GetItemAsObject(i)
        if node.IsA("vtkMRMLSequenceNode"):
            if b.IsSynchronizedSequenceNode(node, True):
                return b
        elif b.GetSequenceNode(node) is not None:
            return b
    return None


def _volume_sequence_of(browser) -> Any:
    """The browser's volume sequence: its master sequence if that holds volumes, else the first volume sequence."""
    master = browser.GetMasterSequenceNode() if hasattr(browser, "GetMasterSequenceNode") else None
    candidates = [master] if master is not None else []
    seqs = _vtk().vtkCollection()
    browser.GetSynchronizedSequenceNodes(seqs, True)
    candidates += [seqs.GetItemAsObject(i) for i in range(seqs.GetNumberOfItems())]
    for s in candidates:
        if s is not None and s.GetNumberOfDataNodes() > 0 and s.GetNthDataNode(0).IsA("vtkMRMLScalarVolumeNode") \
                and not s.GetNthDataNode(0).IsA("vtkMRMLLabelMapVolumeNode"):
            return s
    for s in candidates:
        if s is not None and s.GetNumberOfDataNodes() > 0 and s.GetNthDataNode(0).IsA("vtkMRMLVolumeNode") \
                and not s.GetNthDataNode(0).IsA("vtkMRMLLabelMapVolumeNode"):
            return s
    return None


def read_cine(ctx: SceneContext, node) -> CineInput:
    """The cine from the node the user selected: a sequence browser, a volume sequence, the browser's proxy
    volume, or a 3D volume whose K axis is time.  Raises FSVOSSceneError naming the problem."""
    if node is None:
        raise FSVOSSceneError("no cine selected: choose the XA cine (its sequence browser or volume)")
    name = node.GetName()
    browser = None
    sequence = None
    if node.IsA("vtkMRMLSequenceBrowserNode"):
        browser = node
        sequence = _volume_sequence_of(browser)
        if sequence is None:
            raise FSVOSSceneError(f"sequence browser '{name}' holds no volume sequence")
    elif node.IsA("vtkMRMLSequenceNode"):
        sequence = node
        if sequence.GetNumberOfDataNodes() == 0 or not sequence.GetNthDataNode(0).IsA("vtkMRMLVolumeNode"):
            raise FSVOSSceneError(f"sequence '{name}' does not hold volumes")
        browser = find_browser(ctx, sequence)
        if browser is None:
            raise FSVOSSceneError(f"sequence '{name}' is in no sequence browser; open it in the Sequences module first")
    elif node.IsA("vtkMRMLVolumeNode"):
        browser = find_browser(ctx, node)
        if browser is not None:
            sequence = browser.GetSequenceNode(node)
    else:
        raise FSVOSSceneError(f"'{name}' is not a cine (expected a sequence browser, a volume sequence or a volume)")

    if sequence is not None:
        n = sequence.GetNumberOfDataNodes()
        if n < 2:
            raise FSVOSSceneError(f"the cine '{sequence.GetName()}' has {n} frame(s); at least 2 are needed")
        frames = []
        first = sequence.GetNthDataNode(0)
        ref_dims = first.GetImageData().GetDimensions() if first.GetImageData() else None
        ref_m = _ijk_to_ras(first)
        for i in range(n):
            dn = sequence.GetNthDataNode(i)
            img = dn.GetImageData()
            if img is None:
                raise FSVOSSceneError(f"frame {i} of '{sequence.GetName()}' has no image data")
            dims = img.GetDimensions()
            if dims != ref_dims:
                raise FSVOSSceneError(f"geometry mismatch: frame {i} of '{sequence.GetName()}' is "
                                      f"{dims[0]}x{dims[1]}x{dims[2]} voxels, frame 0 is "
                                      f"{ref_dims[0]}x{ref_dims[1]}x{ref_dims[2]}")
            if dims[2] != 1:
                raise FSVOSSceneError(f"frame {i} of '{sequence.GetName()}' has {dims[2]} slices; "
                                      "a cine frame must be a single slice")
            if not np.allclose(_ijk_to_ras(dn), ref_m, atol=1e-4):
                raise FSVOSSceneError(f"geometry mismatch: frame {i} of '{sequence.GetName()}' has another "
                                      "position/orientation/spacing than frame 0")
            frames.append(_grey(_np_from_vtk_image(img))[0])
        spacing = first.GetSpacing()
        proxy = browser.GetProxyNode(sequence) if browser is not None else None
        return CineInput(frames=np.stack(frames), kind="sequence", volume=proxy, sequence=sequence, browser=browser,
                         index_values=[sequence.GetNthIndexValue(i) for i in range(n)],
                         spacing_mm=(float(spacing[1]), float(spacing[0])), frame_node=first)

    img = node.GetImageData()
    if img is None:
        raise FSVOSSceneError(f"volume '{name}' has no image data")
    arr = _grey(_np_from_vtk_image(img))
    if arr.shape[0] < 2:
        raise FSVOSSceneError(f"volume '{name}' is a single frame; select a cine (a sequence, or a 3D volume whose "
                              "K axis is time)")
    spacing = node.GetSpacing()
    return CineInput(frames=np.ascontiguousarray(arr), kind="volume", volume=node,
                     index_values=[str(i) for i in range(arr.shape[0])],
                     spacing_mm=(float(spacing[1]), float(spacing[0])), frame_node=node)


# ----------------------------------------------------------------------------- segments


@dataclass
class SegmentInfo:
    segment_id: str
    name: str
    color: Tuple[float, float, float]
    terminology: str
    label: int  # 1..K in the label stack given to the engine

    def as_object(self) -> Dict[str, Any]:
        """The fsvos object description (name, category from the terminology, colour 0..255)."""
        from fsvos.io import seg_codes

        return {"label": self.label, "name": self.name,
                "category": seg_codes.category_from_slicer_terminology(self.terminology),
                "color": tuple(int(round(c * 255)) for c in self.color)}


def _terminology(segment) -> str:
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    value = ""
    try:
        import vtk

        ref = vtk.reference("")
        if segment.GetTag("TerminologyEntry", ref):
            value = str(ref)
    except Exception:  # pragma: no cover - very old Slicer
        pass
    return value


def segment_infos(segmentation_node, segment_ids: Optional[Sequence[str]] = None) -> List[SegmentInfo]:
    """Descriptions of the chosen segments (all when None), label i+1 for the i-th."""
    if segmentation_node is None:
        raise FSVOSSceneError("no segmentation selected: paint the supports in a segmentation")
    seg = segmentation_node.GetSegmentation()
    all_ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    ids = list(all_ids if segment_ids is None else segment_ids)
    if not ids:
        raise FSVOSSceneError(f"segmentation '{segmentation_node.GetName()}' has no segment to propagate")
    if len(ids) > 255:
        raise FSVOSSceneError("at most 255 segments can be propagated at once")
    out = []
    for i, sid in enumerate(ids):
        s = seg.GetSegment(sid)
        if s is None:
            raise FSVOSSceneError(f"segmentation '{segmentation_node.GetName()}' has no segment '{sid}'")
        out.append(SegmentInfo(segment_id=sid, name=s.GetName(), color=tuple(s.GetColor()),
                               terminology=_terminology(s), label=i + 1))
    return out


def _reference_image(frame_node):
    """vtkOrientedImageData with the geometry of `frame_node` (a volume)."""
    slicer = _slicer()
    return slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(frame_node)


def segment_mask(segmentation_node, segment_id: str, reference) -> np.ndarray:
    """Boolean (K, J, I) mask of one segment resampled (nearest) onto the reference geometry."""
    slicer = _slicer()
    dims = reference.GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return np.zeros(shape, bool)
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id,
                                                                                     labelmap)
    ext = labelmap.GetExtent()
    if labelmap.GetPointData().GetScalars() is None or ext[1] < ext[0] or ext[3] < ext[2] or ext[5] < ext[4]:
        return np.zeros(shape, bool)
    out = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, out,
                                                                                      False, True)
    arr = _np_from_vtk_image(out)
    value = segment.GetLabelValue() if hasattr(segment, "GetLabelValue") else 1
    return arr == value


def labels_of(segmentation_node, infos: Sequence[SegmentInfo], reference) -> np.ndarray:
    """uint8 (K, J, I) label stack of the chosen segments (label = info.label; later segments win overlaps)."""
    dims = reference.GetDimensions()
    lab = np.zeros((dims[2], dims[1], dims[0]), np.uint8)
    for info in infos:
        lab[segment_mask(segmentation_node, info.segment_id, reference)] = info.label
    return lab


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(np.ascontiguousarray(mask, dtype=bool)).tobytes()
                        + str(mask.shape).encode()).hexdigest()[:20]


def _unchanged_since_propagation(record: Optional[str], lab2d: np.ndarray, infos: Sequence[SegmentInfo]) -> bool:
    if not record:
        return False
    try:
        digests = json.loads(record)
    except ValueError:
        return False
    empty = _digest(np.zeros(lab2d.shape, bool))
    return all(digests.get(i.segment_id, empty) == _digest(lab2d == i.label) for i in infos)


# ----------------------------------------------------------------------------- supports


@dataclass
class Supports:
    """The painted frames: {frame: uint8 (H, W) labels} and the segments they describe."""

    labels: Dict[int, np.ndarray]
    segments: List[SegmentInfo]
    segmentation_sequence: Any = None  # the segmentation sequence in the cine's browser, if any


def segmentation_sequence_of(cine: CineInput, segmentation_node) -> Any:
    if cine.kind != "sequence" or cine.browser is None or segmentation_node is None:
        return None
    if cine.browser.GetSequenceNode(segmentation_node) is None:
        return None
    return cine.browser.GetSequenceNode(segmentation_node)


def read_supports(ctx: SceneContext, cine: CineInput, segmentation_node,
                  segment_ids: Optional[Sequence[str]] = None) -> Supports:
    """Every frame with painted labels of the chosen segments is a support (frames written by an earlier
    propagation and not edited since are not).  Raises FSVOSSceneError when nothing is painted or a chosen
    segment is empty everywhere."""
    infos = segment_infos(segmentation_node, segment_ids)
    reference = _reference_image(cine.frame_node)
    t, h, w = cine.shape
    supports: Dict[int, np.ndarray] = {}
    seg_seq = segmentation_sequence_of(cine, segmentation_node)
    if cine.kind == "volume":
        lab = labels_of(segmentation_node, infos, reference)
        if lab.shape != (t, h, w):  # pragma: no cover - reference is the volume itself
            raise FSVOSSceneError(f"geometry mismatch: labels {lab.shape} vs cine {(t, h, w)}")
        record = json.loads(segmentation_node.GetAttribute(PROPAGATED_ATTRIBUTE) or "{}")
        for k in range(t):
            if lab[k].any() and not _unchanged_since_propagation(
                    json.dumps(record[str(k)]) if str(k) in record else None, lab[k], infos):
                supports[k] = lab[k]
    elif seg_seq is not None:
        # the proxy may hold edits not yet saved into the sequence (recording off): read it for the current item
        current = cine.browser.GetSelectedItemNumber()
        current_value = cine.sequence.GetNthIndexValue(current) if current >= 0 else None
        for i in range(seg_seq.GetNumberOfDataNodes()):
            value = seg_seq.GetNthIndexValue(i)
            f = cine.frame_index_of(value)
            if f is None:
                continue
            node = seg_seq.GetNthDataNode(i)
            if value == current_value and not cine.browser.GetSaveChanges(seg_seq):
                node = segmentation_node
            lab = labels_of(node, infos, reference)[0]
            if lab.any() and not _unchanged_since_propagation(node.GetAttribute(PROPAGATED_ATTRIBUTE), lab, infos):
                supports[f] = lab
    else:
        current = cine.browser.GetSelectedItemNumber() if cine.browser is not None else -1
        if current < 0:
            raise FSVOSSceneError("the cine's browser shows no frame; select the frame you painted")
        proxy_value = cine.browser.GetMasterSequenceNode().GetNthIndexValue(current)
        f = cine.frame_index_of(proxy_value)
        if f is None:
            f = current
        lab = labels_of(segmentation_node, infos, reference)[0]
        if lab.any():
            supports[f] = lab
    if not supports:
        raise FSVOSSceneError(f"no painted frame: segmentation '{segmentation_node.GetName()}' has no labels of the "
                              "chosen segments on any frame (frames left as propagated do not count)")
    present = set()
    for lab in supports.values():
        present.update(int(v) for v in np.unique(lab) if v)
    empty = [i.name for i in infos if i.label not in present]
    if empty:
        raise FSVOSSceneError("segment " + ", ".join(f"'{n}'" for n in empty) + " is empty on every painted frame; "
                              "paint it on at least one frame or leave it out")
    return Supports(labels=supports, segments=infos, segmentation_sequence=seg_seq)


# ----------------------------------------------------------------------------- writing


def _oriented_from_mask(mask2d_or_3d: np.ndarray, reference):
    slicer = _slicer()
    from vtk.util import numpy_support

    vtk = _vtk()
    img = slicer.vtkOrientedImageData()
    img.SetExtent(reference.GetExtent())
    img.SetSpacing(reference.GetSpacing())
    img.SetOrigin(reference.GetOrigin())
    m = vtk.vtkMatrix4x4()
    reference.GetDirectionMatrix(m)
    img.SetDirectionMatrix(m)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = np.ascontiguousarray(
        mask2d_or_3d, dtype=np.uint8).ravel()
    return img


def set_segment_labels(segmentation_node, infos: Sequence[SegmentInfo], labels: np.ndarray, reference) -> None:
    """Replace the chosen segments' content by `labels` (K, J, I) on the reference geometry."""
    slicer = _slicer()
    L = slicer.vtkSlicerSegmentationsModuleLogic
    for info in infos:
        ok = L.SetBinaryLabelmapToSegment(_oriented_from_mask(labels == info.label, reference), segmentation_node,
                                          info.segment_id, L.MODE_REPLACE)
        if not ok:  # pragma: no cover
            raise RuntimeError(f"could not write segment '{info.name}'")


def _empty_like(segmentation_node, frame_node):
    """A segmentation node (not in a scene) with the same segments (names, colours, terminology), all empty."""
    slicer = _slicer()
    node = slicer.vtkMRMLSegmentationNode()
    node.SetReferenceImageGeometryParameterFromVolumeNode(frame_node)
    src = segmentation_node.GetSegmentation()
    dst = node.GetSegmentation()
    for i in range(src.GetNumberOfSegments()):
        sid = src.GetNthSegmentID(i)
        s = src.GetSegment(sid)
        new_id = dst.AddEmptySegment(sid, s.GetName(), s.GetColor())
        copy = dst.GetSegment(new_id)
        term = _terminology(s)
        if term:
            if hasattr(copy, "SetTerminology"):
                copy.SetTerminology(term)
            else:  # pragma: no cover
                copy.SetTag("TerminologyEntry", term)
    return node


def _copy_of(node):
    slicer = _slicer()
    copy = slicer.vtkMRMLSegmentationNode()
    copy.DeepCopy(node) if hasattr(copy, "DeepCopy") else copy.Copy(node)
    return copy


@dataclass
class ApplyRecord:
    """What an applied result made: for the module's review and undo."""

    segmentation_sequence: Any
    table: Any
    supports: List[int]
    undo_saved: bool


def _remove_with_helpers(scene, node) -> None:
    """Remove a node and its display and storage nodes."""
    helpers = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetStorageNode") and node.GetStorageNode() is not None:
        helpers.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for h in helpers:
        if h is not None and h.GetScene() is scene:
            scene.RemoveNode(h)


def _synchronize(scene, browser, sequence, proxy) -> None:
    """Add `sequence` to the browser with `proxy` as its proxy node, recording edits (save changes) on.
    The proxy the browser makes on its own is removed."""
    browser.AddSynchronizedSequenceNode(sequence)
    auto = browser.GetProxyNode(sequence)
    browser.AddProxyNode(proxy, sequence, False)
    if auto is not None and auto is not proxy and auto.GetScene() is scene:
        _remove_with_helpers(scene, auto)
    browser.SetOverwriteProxyName(sequence, False)
    browser.SetSaveChanges(sequence, True)


def _enable_undo(nodes) -> None:
    for n in nodes:
        if n is not None:
            n.SetUndoEnabled(True)


def apply_result(ctx: SceneContext, cine: CineInput, segmentation_node, supports: Supports, labels: np.ndarray,
                 confidence: Optional[np.ndarray] = None, table_name: Optional[str] = None) -> ApplyRecord:
    """Write a propagation result into the scene in one undoable step (MRML undo).

    Sequence cines: every non-support frame of the segmentation sequence (created in the cine's browser when the
    segmentation node is not in it yet, the node becoming its proxy) is replaced for the chosen segments; other
    segments and the support frames stay as they are.  Volume cines: the chosen segments of the segmentation node
    get the whole stack, support slices unchanged.  A table of per-frame confidence is added.
    """
    t, h, w = cine.shape
    labels = np.asarray(labels, np.uint8)
    if labels.shape != (t, h, w):
        raise FSVOSSceneError(f"geometry mismatch: the result is {labels.shape}, the cine {(t, h, w)}")
    for f, lab in supports.labels.items():  # support frames stay exactly as painted
        labels[f] = lab
    infos = supports.segments
    reference = _reference_image(cine.frame_node)
    scene = ctx.scene
    seg_seq = supports.segmentation_sequence if cine.kind == "sequence" else None
    # The browser itself is not put under undo: restoring it from its undo copy drops its synchronised
    # sequences (seen with MRML 5.13).  A segmentation sequence created here is a new node, so undo removes it
    # and the browser forgets it with it.
    touched = [segmentation_node, seg_seq]

    was_undo_on = scene.GetUndoFlag()
    scene.SetUndoOn()
    _enable_undo(touched)
    scene.SaveStateForUndo()
    scene.StartState(scene.BatchProcessState)
    try:
        new_nodes = []
        if cine.kind == "volume":
            set_segment_labels(segmentation_node, infos, labels, reference)
            record = {str(k): {i.segment_id: _digest(labels[k] == i.label) for i in infos}
                      for k in range(t) if k not in supports.labels}
            old = json.loads(segmentation_node.GetAttribute(PROPAGATED_ATTRIBUTE) or "{}")
            for k in supports.labels:
                old.pop(str(k), None)
            old.update(record)
            segmentation_node.SetAttribute(PROPAGATED_ATTRIBUTE, json.dumps(old))
        else:
            browser = cine.browser
            if seg_seq is None:
                seg_seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode")
                seg_seq.SetUndoEnabled(True)
                new_nodes.append(seg_seq)
                seg_seq.SetName(scene.GenerateUniqueName(segmentation_node.GetName() + " sequence"))
                seg_seq.SetIndexName(cine.sequence.GetIndexName())
                seg_seq.SetIndexUnit(cine.sequence.GetIndexUnit())
                seg_seq.SetIndexType(cine.sequence.GetIndexType())
            existing = {seg_seq.GetNthIndexValue(i): i for i in range(seg_seq.GetNumberOfDataNodes())}
            template = _empty_like(segmentation_node, cine.frame_node)
            for f in range(t):
                value = cine.index_values[f]
                if f in supports.labels:
                    if value not in existing:  # painted on a plain segmentation node: store it as painted
                        node = _copy_of(segmentation_node)
                        node.RemoveAttribute(PROPAGATED_ATTRIBUTE)
                        seg_seq.SetDataNodeAtValue(node, value)
                    continue
                if value in existing:
                    node = _copy_of(seg_seq.GetNthDataNode(existing[value]))
                else:
                    node = _copy_of(template)
                set_segment_labels(node, infos, labels[f][np.newaxis], reference)
                node.SetAttribute(PROPAGATED_ATTRIBUTE,
                                  json.dumps({i.segment_id: _digest(labels[f] == i.label) for i in infos}))
                seg_seq.SetDataNodeAtValue(node, value)
            if not browser.IsSynchronizedSequenceNode(seg_seq, True):
                _synchronize(scene, browser, seg_seq, segmentation_node)
        table = None
        if confidence is not None:
            table = _confidence_table(scene, cine, infos, confidence, sorted(supports.labels),
                                      table_name or (segmentation_node.GetName() + " confidence"))
            table.SetUndoEnabled(True)
            new_nodes.append(table)
            table.SetAttribute(RESULT_ATTRIBUTE, segmentation_node.GetID() or "")
    finally:
        scene.EndState(scene.BatchProcessState)
        if not was_undo_on:
            scene.SetUndoOff()
    if cine.kind == "sequence":
        ctx.update_proxies(cine.browser)
    return ApplyRecord(segmentation_sequence=seg_seq, table=table, supports=sorted(supports.labels), undo_saved=True)


def undo(ctx: SceneContext, browser=None) -> None:
    """Undo the last applied result (one MRML undo step)."""
    scene = ctx.scene
    was_on = scene.GetUndoFlag()
    scene.SetUndoOn()
    try:
        scene.Undo()
    finally:
        if not was_on:
            scene.SetUndoOff()
    ctx.update_proxies(browser)


def _confidence_table(scene, cine: CineInput, infos, confidence: np.ndarray, supports: List[int], name: str):
    """Table node: frame, index value, support?, minimum confidence, one column per segment."""
    vtk = _vtk()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    table.SetName(scene.GenerateUniqueName(name))
    t = cine.n_frames
    conf = np.asarray(confidence, np.float32).reshape(t, -1)
    columns = [("frame", vtk.vtkIntArray), ("index", vtk.vtkStringArray), ("support", vtk.vtkIntArray),
               ("min confidence", vtk.vtkDoubleArray)] + [(i.name, vtk.vtkDoubleArray) for i in infos]
    arrays = []
    for cname, cls in columns:
        a = cls()
        a.SetName(cname)
        arrays.append(a)
    for f in range(t):
        arrays[0].InsertNextValue(f)
        arrays[1].InsertNextValue(cine.index_values[f])
        arrays[2].InsertNextValue(1 if f in supports else 0)
        arrays[3].InsertNextValue(1.0 if f in supports else float(conf[f].min()))
        for k in range(len(infos)):
            arrays[4 + k].InsertNextValue(1.0 if f in supports else float(conf[f, k]))
    for a in arrays:
        table.AddColumn(a)
    return table


def least_certain_frames(confidence: np.ndarray, supports: Sequence[int], n: int = 5) -> List[Tuple[int, float]]:
    """The n non-support frames with the lowest minimum confidence over objects: [(frame, confidence)]."""
    conf = np.asarray(confidence, np.float32)
    worst = conf.min(axis=1) if conf.ndim == 2 and conf.shape[1] else np.ones(conf.shape[0], np.float32)
    order = [int(f) for f in np.argsort(worst, kind="stable") if int(f) not in set(supports)]
    return [(f, float(worst[f])) for f in order[:n]]


# ----------------------------------------------------------------------------- set-up helpers


def create_segmentation_sequence(ctx: SceneContext, cine: CineInput, name: str = "FSVOS segmentation",
                                 segments: Sequence[Tuple[str, Tuple[float, float, float], str]] = ()):
    """A segmentation node made the proxy of a new segmentation sequence in the cine's browser (one empty
    segmentation per frame, recording on), so that each frame can be painted on its own.

    segments: (name, colour 0..1, Slicer terminology string) of segments to create.  Returns the node.
    """
    if cine.kind != "sequence":
        raise FSVOSSceneError("a segmentation sequence needs a sequence cine; for a 3D volume paint a segmentation "
                              "on the volume")
    scene = ctx.scene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetName(scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(cine.frame_node)
    for seg_name, color, term in segments:
        sid = node.GetSegmentation().AddEmptySegment("", seg_name, list(color))
        if term:
            s = node.GetSegmentation().GetSegment(sid)
            s.SetTerminology(term) if hasattr(s, "SetTerminology") else s.SetTag("TerminologyEntry", term)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    seq.SetName(scene.GenerateUniqueName(node.GetName() + " sequence"))
    seq.SetIndexName(cine.sequence.GetIndexName())
    seq.SetIndexUnit(cine.sequence.GetIndexUnit())
    seq.SetIndexType(cine.sequence.GetIndexType())
    for value in cine.index_values:
        seq.SetDataNodeAtValue(node, value)
    _synchronize(scene, cine.browser, seq, node)
    ctx.update_proxies(cine.browser)
    return node


def paint_frame(ctx: SceneContext, cine: CineInput, segmentation_node, frame: int, labels2d: np.ndarray,
                segment_ids: Sequence[str]) -> None:
    """Write labels (value i+1 -> segment_ids[i]) on one frame, as the Segment Editor would: select the frame in
    the browser, replace the proxy segmentation's segments, save into the sequence item."""
    reference = _reference_image(cine.frame_node)
    infos = [SegmentInfo(sid, "", (0, 0, 0), "", i + 1) for i, sid in enumerate(segment_ids)]
    if cine.kind == "volume":
        full = labels_of(segmentation_node, infos, reference)
        full[frame] = labels2d
        set_segment_labels(segmentation_node, infos, full, reference)
        return
    browser = cine.browser
    browser.SetSelectedItemNumber(frame)
    ctx.update_proxies(browser)
    set_segment_labels(segmentation_node, infos, np.asarray(labels2d, np.uint8)[np.newaxis], reference)
    seq = browser.GetSequenceNode(segmentation_node)
    if seq is not None and browser.GetSaveChanges(seq):
        # what the browser does on a proxy modification when recording is on
        seq.SetDataNodeAtValue(segmentation_node, cine.index_values[frame])


def result_labels(ctx: SceneContext, cine: CineInput, segmentation_node,
                  segment_ids: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, List[SegmentInfo]]:
    """The (T, H, W) label stack of the chosen segments on every frame (segmentation sequence or 3D volume)."""
    infos = segment_infos(segmentation_node, segment_ids)
    reference = _reference_image(cine.frame_node)
    t, h, w = cine.shape
    if cine.kind == "volume":
        return labels_of(segmentation_node, infos, reference), infos
    out = np.zeros((t, h, w), np.uint8)
    seq = segmentation_sequence_of(cine, segmentation_node)
    if seq is None:
        raise FSVOSSceneError(f"segmentation '{segmentation_node.GetName()}' is not a sequence in the cine's browser; "
                              "propagate first")
    for i in range(seq.GetNumberOfDataNodes()):
        f = cine.frame_index_of(seq.GetNthIndexValue(i))
        if f is not None:
            out[f] = labels_of(seq.GetNthDataNode(i), infos, reference)[0]
    return out, infos


def scene_fingerprint(scene) -> List[Tuple[str, str, int]]:
    """(ID, class, modified time) of every node: equal before and after means the scene was not changed."""
    out = []
    for i in range(scene.GetNumberOfNodes()):
        n = scene.GetNthNode(i)
        out.append((n.GetID(), n.GetClassName(), int(n.GetMTime())))
    return out
