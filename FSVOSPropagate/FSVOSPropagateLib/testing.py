"""Test bodies shared by pytest (slicer-core: real MRML without the GUI) and the module's self-test in Slicer.

Each ``check_*`` function takes a :class:`Fixture` and raises AssertionError on failure.  The scene is
built as Slicer's DICOMImageSequencePlugin builds it for an XA cine: the multi-frame DICOM file is read
with vtkITK's GDCM reader, every frame becomes a single-slice scalar volume (IJK to RAS diag(-sx, -sy, 1),
origin 0) stored in a sequence indexed by ``time`` (s), shown through a sequence browser; each frame
volume carries the ``DICOM.instanceUIDs`` attribute.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from . import scene as sc
from .logic import FSVOSPropagateLogic
from .runner import CANCELLED, DONE, EngineSettings, RunCancelled, RunFailed

N_FRAMES = 10
SIZE = 64
SEED = 7


@dataclass
class Fixture:
    ctx: sc.SceneContext
    work: Path  # an empty folder for files
    python: str = sys.executable  # PythonSlicer inside Slicer
    weights: Optional[str] = None  # a small checkpoint (made by make_checkpoint) or None: bundled default
    case: Any = None
    dicom_file: Optional[Path] = None
    uid_to_file: Dict[str, str] = field(default_factory=dict)
    engine: Dict[str, Any] = field(default_factory=dict)  # engine settings other than the defaults

    def settings(self, **kw) -> EngineSettings:
        return EngineSettings(weights=self.weights, device="cpu", **{**self.engine, **kw})

    def logic(self, **kw) -> FSVOSPropagateLogic:
        return FSVOSPropagateLogic(self.ctx, self.settings(**kw), python=self.python,
                                   instance_to_file=self.uid_to_file.get)


def run_dciodvfy(path: str):
    """dicom3tools' dciodvfy on a file: (error lines, warning lines, full output); None when not installed."""
    import shutil
    import subprocess

    if not shutil.which("dciodvfy"):
        return None
    proc = subprocess.run(["dciodvfy", os.fspath(path)], capture_output=True, text=True, timeout=120)
    text = proc.stdout + proc.stderr
    return ([ln for ln in text.splitlines() if ln.startswith("Error")],
            [ln for ln in text.splitlines() if ln.startswith("Warning")], text)


def make_checkpoint(path: Path, seed: int = 1) -> str:
    """A compact network with seeded random weights saved as an fsvos checkpoint (fast, deterministic)."""
    import torch

    from fsvos.model.network import COMPACT_ARCH, FSVOSNet
    from fsvos.model.weights import save_checkpoint

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = FSVOSNet(COMPACT_ARCH).eval()
    finally:
        torch.random.set_rng_state(state)
    save_checkpoint(model, path)
    return os.fspath(path)


def write_synthetic_cine(folder: Path, seed: int = SEED, n_frames: int = N_FRAMES, size: int = SIZE):
    """A synthetic XA cine (fsvos.synth) written as a multi-frame XA DICOM file with its true labels."""
    from fsvos.synth import generate_case, write_case

    case = generate_case(seed, size=size, n_frames=n_frames)
    write_case(case, folder, replace=True)
    return case, folder / "cine.dcm"


def _itk_reader():
    try:
        import vtkITK  # Slicer

        return vtkITK.vtkITKArchetypeImageSeriesScalarReader()
    except ImportError:
        import slicer  # slicer-core

        return slicer.vtkITKArchetypeImageSeriesScalarReader()


def load_xa_like_slicer(ctx: sc.SceneContext, path: Path, name: str = "1: XA cine"):
    """Load a multi-frame XA file into the scene the way DICOMImageSequencePlugin does; returns the browser."""
    import pydicom
    import vtk

    scene = ctx.scene
    reader = _itk_reader()
    reader.SetArchetype(os.fspath(path))
    reader.AddFileName(os.fspath(path))
    reader.SetSingleFile(True)
    reader.SetOutputScalarTypeToNative()
    reader.SetDesiredCoordinateOrientationToNative()
    reader.SetUseNativeOriginOn()
    reader.SetDICOMImageIOApproachToGDCM()
    reader.Update()
    assert reader.GetErrorCode() == 0, f"vtkITK could not read {path}"
    image = reader.GetOutput()
    uid = str(pydicom.dcmread(os.fspath(path), stop_before_pixels=True).SOPInstanceUID)

    temp = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    ijk_to_ras = vtk.vtkMatrix4x4()
    ijk_to_ras.SetElement(0, 0, -1.0)
    ijk_to_ras.SetElement(1, 1, -1.0)
    temp.SetIJKToRASMatrix(ijk_to_ras)
    sx, sy, frame_ms = image.GetSpacing()
    image.SetSpacing(1.0, 1.0, 1.0)
    temp.SetSpacing(sx, sy, 1.0)
    temp.SetAttribute("DICOM.instanceUIDs", uid)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    seq.SetName(name)
    if frame_ms == 1.0:
        step, fps = 1, 10.0
        seq.SetIndexName("frame")
        seq.SetIndexUnit("")
    else:
        step = frame_ms * 0.001
        fps = 1.0 / step
        seq.SetIndexName("time")
        seq.SetIndexUnit("s")
    ext = image.GetExtent()
    for frame in range(ext[5] - ext[4] + 1):
        clip = vtk.vtkImageClip()
        clip.SetInputData(image)
        clip.SetOutputWholeExtent(ext[0], ext[1], ext[2], ext[3], ext[4] + frame, ext[4] + frame)
        clip.ClipDataOn()
        clip.Update()
        out = clip.GetOutput()
        out.SetExtent(ext[0], ext[1], ext[2], ext[3], 0, 0)
        out.SetOrigin(0.0, 0.0, 0.0)
        temp.SetAndObserveImageData(out)
        value = str(frame * step) if isinstance(step, int) else f"{frame * step:.3f}"
        seq.SetDataNodeAtValue(temp, value)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    seq.SetAndObserveStorageNodeID(storage.GetID())
    scene.RemoveNode(temp)
    import slicer

    browser = slicer.vtkMRMLSequenceBrowserNode()
    browser.SetName(scene.GenerateUniqueName(name + " browser"))
    browser.SetPlaybackRateFps(fps)
    scene.AddNode(browser)
    browser.AddSynchronizedSequenceNode(seq)
    browser.SetSelectedItemNumber(0)
    ctx.update_proxies(browser)
    return browser, uid


def setup_xa_scene(fx: Fixture, n_objects: int = 2, n_frames: int = N_FRAMES):
    """Synthetic XA cine on disk, loaded as Slicer loads it, a segmentation sequence with n_objects segments
    (names, colours, terminology of the synthetic objects) and the support frame painted.
    Returns (browser, cine, segmentation node, segment ids)."""
    from fsvos.io import seg_codes

    fx.case, fx.dicom_file = write_synthetic_cine(fx.work / "case", n_frames=n_frames)
    browser, uid = load_xa_like_slicer(fx.ctx, fx.dicom_file)
    fx.uid_to_file[uid] = os.fspath(fx.dicom_file)
    cine = sc.read_cine(fx.ctx, browser)
    objs = fx.case.objects[:n_objects]
    segments = [(o["name"], tuple(c / 255.0 for c in seg_codes.default_color(o["category"], k)),
                 seg_codes.slicer_terminology(o["category"])) for k, o in enumerate(objs)]
    seg = sc.create_segmentation_sequence(fx.ctx, cine, "Vessels", segments)
    ids = [seg.GetSegmentation().GetNthSegmentID(k) for k in range(len(objs))]
    sc.paint_frame(fx.ctx, cine, seg, fx.case.support_frame, support_labels(fx, n_objects), ids)
    return browser, sc.read_cine(fx.ctx, browser), seg, ids


def support_labels(fx: Fixture, n_objects: int = 2, frame: Optional[int] = None) -> np.ndarray:
    lab = fx.case.labels[fx.case.support_frame if frame is None else frame].copy()
    lab[lab > n_objects] = 0
    return lab


def engine_labels(fx: Fixture, frames: np.ndarray, supports: Dict[int, np.ndarray]):
    """The engine run directly (the reference the scene must match)."""
    from fsvos import Propagator, load_model

    s = fx.settings()
    p = Propagator(load_model(s.weights), matching=s.matching, reference=s.reference, window=s.window,
                   top_k=s.top_k, mem_every=s.mem_every, precision=s.precision, device="cpu",
                   work_size=s.work_size)
    return p.propagate(frames, supports)


def _segment_props(node) -> List[tuple]:
    seg = node.GetSegmentation()
    out = []
    for i in range(seg.GetNumberOfSegments()):
        s = seg.GetNthSegment(i)
        out.append((seg.GetNthSegmentID(i), s.GetName(), tuple(round(c, 5) for c in s.GetColor()),
                    sc._terminology(s)))
    return out


def check_result_in_scene(fx: Fixture, browser, seg, ids, expected: np.ndarray, supports: Dict[int, np.ndarray]):
    cine = sc.read_cine(fx.ctx, browser)
    seq = browser.GetSequenceNode(seg)
    assert seq is not None and browser.GetSequenceNode(seg) is not None, "the segmentation is not a proxy in the cine's browser"
    assert seq.GetNumberOfDataNodes() == cine.n_frames, (seq.GetNumberOfDataNodes(), cine.n_frames)
    assert [seq.GetNthIndexValue(i) for i in range(cine.n_frames)] == cine.index_values
    got, _ = sc.result_labels(fx.ctx, cine, seg, ids)
    for f, lab in supports.items():
        assert np.array_equal(got[f], lab), f"support frame {f} changed"
    mismatch = np.argwhere((got != expected).reshape(cine.n_frames, -1).any(axis=1)).ravel().tolist()
    assert not mismatch, f"frames {mismatch} differ from the engine's labels"
    props = _segment_props(seg)
    for i in range(seq.GetNumberOfDataNodes()):
        assert _segment_props(seq.GetNthDataNode(i)) == props, f"segments of item {i} differ from the proxy's"
    return got


# ----------------------------------------------------------------------------- checks


def check_in_process(fx: Fixture) -> None:
    browser, cine, seg, ids = setup_xa_scene(fx)
    props_before = _segment_props(seg)
    logic = fx.logic()
    seen = []
    record, result = logic.propagate(browser, seg, ids, out_of_process=False, progress=lambda d, t: seen.append(d))
    assert seen and seen[-1] == cine.n_frames - 1, seen
    supports = {fx.case.support_frame: support_labels(fx)}
    ref = engine_labels(fx, cine.frames, supports)
    assert np.array_equal(result.labels, ref.labels)
    check_result_in_scene(fx, browser, seg, ids, ref.labels, supports)
    assert _segment_props(seg) == props_before, "segment names/colours/terminology changed"
    assert [s.segment_id for s in logic.last_job.supports.segments] == ids
    # review: the table and the least certain frames
    table = record.table
    assert table is not None and table.GetNumberOfRows() == cine.n_frames
    worst = logic.least_certain_frames(3)
    assert len(worst) == 3 and all(f != fx.case.support_frame for f, _ in worst)
    conf = ref.confidence.min(axis=1)
    assert abs(worst[0][1] - min(conf[f] for f in range(cine.n_frames) if f != fx.case.support_frame)) < 1e-5
    logic.jump_to_frame(cine, worst[0][0])
    assert browser.GetSelectedItemNumber() == worst[0][0]


def check_out_of_process(fx: Fixture) -> None:
    browser, cine, seg, ids = setup_xa_scene(fx)
    logic = fx.logic()
    job = logic.prepare(browser, seg, ids)
    progress = []
    runner = logic.start(job, progress=lambda d, t: progress.append((d, t)))
    assert runner.poll() in ("running", DONE)
    state = runner.wait(timeout=300)
    assert state == DONE, runner.error
    assert progress and progress[-1] == (cine.n_frames - 1, cine.n_frames - 1), progress
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert any(e.get("event") == "done" for e in runner.events)
    assert not runner.work_dir.exists(), "the temporary folder was not removed"
    result = runner.raise_for_state()
    supports = {fx.case.support_frame: support_labels(fx)}
    ref = engine_labels(fx, cine.frames, supports)
    agree = float((result.labels == ref.labels).mean())
    assert agree > 0.995, f"out-of-process labels agree with the in-process engine on only {agree:.4f} of pixels"
    assert result.confidence.shape == (cine.n_frames, len(ids))
    logic.apply(job, result)
    check_result_in_scene(fx, browser, seg, ids, result.labels, supports)


def check_cancel_leaves_scene(fx: Fixture) -> None:
    browser, cine, seg, ids = setup_xa_scene(fx, n_frames=4 * N_FRAMES)  # long enough to be cancelled mid-run
    logic = fx.logic()
    job = logic.prepare(browser, seg, ids)
    before = sc.scene_fingerprint(fx.ctx.scene)
    before_labels, _ = sc.result_labels(fx.ctx, cine, seg, ids)
    runner = logic.start(job)
    pid = runner.process.pid
    pgid = os.getpgid(pid) if os.name != "nt" else None
    t_end = time.monotonic() + 120
    while runner.poll() == "running" and runner.done == 0 and time.monotonic() < t_end:
        time.sleep(0.02)  # until the engine is really at work (first frame done), or finished
    runner.cancel()
    assert runner.state == CANCELLED, f"{runner.state} (frames done {runner.done}/{runner.total})"
    assert 0 < runner.done < runner.total, (runner.done, runner.total)
    assert runner.process.poll() is not None, "the engine process still runs"
    if pgid is not None:
        try:
            os.killpg(pgid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, "a process of the engine's process group still runs"
    assert not runner.work_dir.exists(), "the temporary folder was not removed"
    try:
        runner.raise_for_state()
        raise AssertionError("raise_for_state did not raise after cancel")
    except RunCancelled:
        pass
    assert sc.scene_fingerprint(fx.ctx.scene) == before, "the scene changed although the run was cancelled"
    after_labels, _ = sc.result_labels(fx.ctx, cine, seg, ids)
    assert np.array_equal(before_labels, after_labels)
    # in-process cancel
    ev = threading.Event()
    ev.set()
    try:
        logic.run_in_process(job, cancel=ev)
        raise AssertionError("run_in_process did not raise after cancel")
    except RunCancelled:
        pass
    assert sc.scene_fingerprint(fx.ctx.scene) == before


def check_failed_run_leaves_scene(fx: Fixture) -> None:
    browser, cine, seg, ids = setup_xa_scene(fx)
    bad = fx.work / "broken.pth"
    bad.write_bytes(b"not a weights file")
    logic = FSVOSPropagateLogic(fx.ctx, EngineSettings(weights=os.fspath(bad), device="cpu"), python=fx.python)
    before = sc.scene_fingerprint(fx.ctx.scene)
    try:
        logic.propagate(browser, seg, ids, out_of_process=True, timeout=300)
        raise AssertionError("a run with a broken weights file did not fail")
    except RunFailed as exc:
        msg = str(exc)
        assert "exit status 2" in msg and "broken.pth" in msg, msg
    assert sc.scene_fingerprint(fx.ctx.scene) == before


def check_undo(fx: Fixture) -> None:
    browser, cine, seg, ids = setup_xa_scene(fx)
    scene = fx.ctx.scene
    n_nodes = scene.GetNumberOfNodes()
    ids_before = sorted(scene.GetNthNode(i).GetID() for i in range(n_nodes))
    before_labels, _ = sc.result_labels(fx.ctx, cine, seg, ids)
    logic = fx.logic()
    logic.propagate(browser, seg, ids, out_of_process=False)
    after, _ = sc.result_labels(fx.ctx, cine, seg, ids)
    assert (after != before_labels).any(), "the result did not change the segmentation"
    assert scene.GetNumberOfNodes() > n_nodes  # the confidence table
    logic.undo()
    restored, _ = sc.result_labels(fx.ctx, cine, seg, ids)
    assert np.array_equal(restored, before_labels), "undo did not restore the segmentation sequence"
    assert sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())) == ids_before
    assert browser.GetSequenceNode(seg) is not None


def check_plain_segmentation_and_undo(fx: Fixture) -> None:
    """A plain segmentation (not in the browser) painted on the current frame: the result creates the
    segmentation sequence in the browser; one undo removes it again."""
    from fsvos.io import seg_codes

    fx.case, fx.dicom_file = write_synthetic_cine(fx.work / "case")
    browser, uid = load_xa_like_slicer(fx.ctx, fx.dicom_file)
    cine = sc.read_cine(fx.ctx, browser)
    scene = fx.ctx.scene
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetName("Painted")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(cine.volume)
    sid = seg.GetSegmentation().AddEmptySegment("", "vessel tree", [0.8, 0.2, 0.2])
    s = seg.GetSegmentation().GetSegment(sid)
    s.SetTerminology(seg_codes.slicer_terminology("vessel")) if hasattr(s, "SetTerminology") else None
    f = fx.case.support_frame
    browser.SetSelectedItemNumber(f)
    fx.ctx.update_proxies(browser)
    sc.set_segment_labels(seg, [sc.SegmentInfo(sid, "", (0, 0, 0), "", 1)], support_labels(fx, 1)[np.newaxis],
                          sc._reference_image(cine.frame_node))
    ids_before = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    logic = fx.logic()
    record, result = logic.propagate(browser, seg, [sid], out_of_process=False)
    supports = {f: support_labels(fx, 1)}
    ref = engine_labels(fx, cine.frames, supports)
    check_result_in_scene(fx, browser, seg, [sid], ref.labels, supports)
    logic.undo()
    assert browser.GetSequenceNode(seg) is None, "undo left the segmentation in the browser"
    ids_after = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    assert ids_after == ids_before, (sorted(set(ids_after) - set(ids_before)), sorted(set(ids_before) - set(ids_after)))


def check_correction_is_extra_support(fx: Fixture) -> None:
    browser, cine, seg, ids = setup_xa_scene(fx)
    logic = fx.logic()
    logic.propagate(browser, seg, ids, out_of_process=False)
    job = logic.prepare(browser, seg, ids)
    sf = fx.case.support_frame
    assert sorted(job.supports.labels) == [sf], "propagated frames were taken as supports"
    fix = (sf + 4) % cine.n_frames
    corrected = support_labels(fx, 2, fix)
    sc.paint_frame(fx.ctx, cine, seg, fix, corrected, ids)
    job = logic.prepare(browser, seg, ids)
    assert sorted(job.supports.labels) == sorted({sf, fix}), sorted(job.supports.labels)
    result = logic.run_in_process(job)
    logic.apply(job, result)
    supports = {sf: support_labels(fx), fix: corrected}
    ref = engine_labels(fx, cine.frames, supports)
    check_result_in_scene(fx, browser, seg, ids, ref.labels, supports)


def check_volume_path(fx: Fixture) -> None:
    """A 3D volume whose K axis is time, one segmentation painted on some slices."""
    import vtk
    from vtk.util import numpy_support

    from fsvos.synth import generate_case

    case = generate_case(SEED + 1, size=SIZE, n_frames=N_FRAMES)
    scene = fx.ctx.scene
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    vol.SetName("cine volume")
    img = vtk.vtkImageData()
    t, h, w = case.frames.shape
    img.SetDimensions(w, h, t)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = case.frames.ravel()
    vol.SetAndObserveImageData(img)
    vol.SetSpacing(case.pixel_spacing_mm, case.pixel_spacing_mm, 1.0)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    sid = seg.GetSegmentation().AddEmptySegment("", "vessel tree", [0.8, 0.2, 0.2])
    cine = sc.read_cine(fx.ctx, vol)
    assert cine.kind == "volume" and cine.shape == (t, h, w)
    f = case.support_frame
    lab = case.labels[f].copy()
    lab[lab > 1] = 0
    sc.paint_frame(fx.ctx, cine, seg, f, lab, [sid])
    logic = fx.logic()
    record, result = logic.propagate(vol, seg, [sid], out_of_process=False)
    ref = engine_labels(fx, cine.frames, {f: lab})
    got, _ = sc.result_labels(fx.ctx, cine, seg, [sid])
    assert np.array_equal(got[f], lab)
    assert np.array_equal(got, ref.labels)
    assert sorted(logic.prepare(vol, seg, [sid]).supports.labels) == [f]
    logic.undo()
    got, _ = sc.result_labels(fx.ctx, cine, seg, [sid])
    assert np.array_equal(got[f], lab) and not np.delete(got, f, axis=0).any(), "undo did not restore the volume"


def _expect_error(fn, *words):
    try:
        fn()
    except sc.FSVOSSceneError as exc:
        msg = str(exc)
        assert all(w in msg for w in words), f"error {msg!r} does not name {words}"
        return msg
    raise AssertionError(f"no error raised (expected one naming {words})")


def check_errors(fx: Fixture) -> None:
    import vtk

    browser, cine, seg, ids = setup_xa_scene(fx)
    logic = fx.logic()
    _expect_error(lambda: logic.prepare(None, seg, ids), "no cine selected")
    _expect_error(lambda: logic.prepare(browser, None, ids), "no segmentation selected")
    _expect_error(lambda: logic.prepare(browser, seg, []), "no segment chosen")
    empty_id = seg.GetSegmentation().AddEmptySegment("", "balloon", [0, 1, 1])
    _expect_error(lambda: logic.prepare(browser, seg, ids + [empty_id]), "'balloon'", "empty")
    # a frame with nothing painted anywhere
    seg2 = sc.create_segmentation_sequence(fx.ctx, cine, "Empty", [("vessel", (1, 0, 0), "")])
    _expect_error(lambda: logic.prepare(browser, seg2, None), "no painted frame")
    # a single 2D volume
    single = fx.ctx.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    single.SetName("one frame")
    img = vtk.vtkImageData()
    img.SetDimensions(SIZE, SIZE, 1)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    single.SetAndObserveImageData(img)
    _expect_error(lambda: logic.prepare(single, seg, ids), "single frame")
    # geometry mismatch: one frame of another size in the sequence
    seq = cine.sequence
    odd = fx.ctx.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    img2 = vtk.vtkImageData()
    img2.SetDimensions(SIZE + 8, SIZE, 1)
    img2.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    odd.SetAndObserveImageData(img2)
    seq.SetDataNodeAtValue(odd, "99")
    _expect_error(lambda: logic.prepare(browser, seg, ids), "geometry mismatch", "frame")


def check_export(fx: Fixture) -> bool:
    """Propagate, export a DICOM-SEG (XA geometry and pseudo-3D) and a .seg.nrrd from the scene, read them back;
    load the SEG back onto the XA sequence.  Returns False when dciodvfy was not there to validate the SEG."""
    from fsvos.io.cine import load_cine
    from fsvos.io.seg import read_seg
    from fsvos.io.slicer_formats import read_seg_nrrd

    from .dicomseg import describe_fsvos_seg, find_cine_for_instances, load_seg_onto_sequence

    browser, cine, seg, ids = setup_xa_scene(fx)
    logic = fx.logic()
    logic.propagate(browser, seg, ids, out_of_process=False)
    labels, infos = sc.result_labels(fx.ctx, cine, seg, ids)
    out = fx.work / "export"
    out.mkdir(exist_ok=True)
    seg_path = logic.export_seg(browser, seg, out / "seg.dcm")
    src = load_cine(fx.dicom_file)
    back, objects = read_seg(seg_path, src)
    assert np.array_equal(back, labels), "the exported SEG does not hold the scene's labels"
    assert [o["name"] for o in objects] == [i.name for i in infos]
    assert [o["category"] for o in objects] == [o["category"] for o in fx.case.objects[:len(ids)]]
    try:
        import highdicom as hd

        h = hd.seg.segread(os.fspath(seg_path))
        assert h.number_of_segments == len(ids)
        assert [h.get_segment_description(k + 1).segment_label for k in range(len(ids))] == [i.name for i in infos]
    except ImportError:  # pragma: no cover - highdicom is a test dependency
        pass
    checked = run_dciodvfy(os.fspath(seg_path))
    if checked is not None:
        errors, _warnings, text = checked
        assert not errors, text
    p3 = logic.export_seg(browser, seg, out / "seg3d.dcm", geometry="pseudo3d")
    assert np.array_equal(read_seg(p3, src)[0], labels)
    nrrd_path = logic.export_seg_nrrd(browser, seg, out / "result.seg.nrrd")
    lab3, objs3, _hdr = read_seg_nrrd(nrrd_path)
    assert np.array_equal(lab3, labels), "the .seg.nrrd does not hold the scene's labels"
    assert [o["name"] for o in objs3] == [i.name for i in infos]
    # the DICOM plugin's path: recognise the SEG, find the XA sequence, load it as a segmentation sequence
    desc = describe_fsvos_seg(seg_path)
    assert desc is not None and not desc["pseudo3d"]
    seq = find_cine_for_instances(fx.ctx, desc["referenced_instances"])
    assert seq is cine.sequence
    node = load_seg_onto_sequence(fx.ctx, seg_path, cine, fx.uid_to_file[desc["referenced_instances"][0]])
    loaded, _ = sc.result_labels(fx.ctx, sc.read_cine(fx.ctx, browser), node)
    assert np.array_equal(loaded, labels), "the SEG loaded back differs from the scene's labels"
    assert [s[1] for s in _segment_props(node)] == [i.name for i in infos]
    assert describe_fsvos_seg(fx.dicom_file) is None
    return checked is not None


ALL_CHECKS = [check_in_process, check_out_of_process, check_cancel_leaves_scene, check_failed_run_leaves_scene,
              check_undo, check_plain_segmentation_and_undo, check_correction_is_extra_support, check_volume_path,
              check_errors, check_export]
