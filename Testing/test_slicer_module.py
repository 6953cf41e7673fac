"""The Slicer module's logic on real MRML (slicer-core, no GUI): the scene built as Slicer's DICOM loader
builds it for an XA cine, supports painted into a real segmentation sequence, the engine run in process and
through the out-of-process runner (a real subprocess), cancel, failure, undo, the 3D-volume path, export.

The bodies live in FSVOSPropagateLib/testing.py; the module's self-test runs the same ones inside Slicer.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides MRML without Slicer")
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover - another package named slicer
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from FSVOSPropagateLib import testing as bodies  # noqa: E402
from FSVOSPropagateLib.scene import SceneContext  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The engine in this process on one thread (as the subprocess runs with OMP_NUM_THREADS=1 here): on a
    busy two-core machine two threads slow these small runs down several times."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return bodies.make_checkpoint(tmp_path_factory.mktemp("weights") / "compact_random.pth")


@pytest.fixture()
def fx(tmp_path, weights):
    return bodies.Fixture(ctx=SceneContext.standalone(), work=tmp_path, weights=weights)


def test_sequence_in_process(fx):
    bodies.check_in_process(fx)


def test_sequence_out_of_process(fx):
    bodies.check_out_of_process(fx)


def test_frame_size_setting_reaches_both_engines(fx):
    """The module's frame size (work size) is used in process and passed to the fsvos process."""
    fx.engine = {"work_size": "32"}  # the test cine is 64 x 64: the network sees 32 x 32
    args = fx.settings().cli_args()
    assert args[args.index("--work-size") + 1] == "32"
    bodies.check_in_process(fx)  # equal to the engine run with the same settings
    bodies.check_out_of_process(fx)
    browser, cine, seg, ids = bodies.setup_xa_scene(fx)
    supports = {fx.case.support_frame: bodies.support_labels(fx)}
    small = bodies.engine_labels(fx, cine.frames, supports).labels
    fx.engine = {"work_size": "native"}
    assert not np.array_equal(small, bodies.engine_labels(fx, cine.frames, supports).labels)


def test_cancel_leaves_scene_untouched(fx):
    bodies.check_cancel_leaves_scene(fx)


def test_failed_run_leaves_scene_untouched(fx):
    bodies.check_failed_run_leaves_scene(fx)


def test_undo_restores_scene(fx):
    bodies.check_undo(fx)


def test_plain_segmentation_becomes_sequence_and_undo(fx):
    bodies.check_plain_segmentation_and_undo(fx)


def test_correction_is_extra_support(fx):
    bodies.check_correction_is_extra_support(fx)


def test_volume_path(fx):
    bodies.check_volume_path(fx)


def test_bad_input_errors(fx):
    bodies.check_errors(fx)


def test_export_seg_and_load_back(fx):
    if not bodies.check_export(fx):
        pytest.skip("dciodvfy (dicom3tools) is not installed; the rest of the export was checked")


def test_runner_parses_json_lines():
    import numpy as np

    from FSVOSPropagateLib.runner import EngineSettings, ProcessRunner

    seen = []
    r = ProcessRunner(np.zeros((3, 16, 16), np.uint8), {0: np.ones((16, 16), np.uint8)}, EngineSettings(device="cpu"),
                      progress=lambda d, t: seen.append((d, t)))
    for line in ['{"event": "progress", "done": 1, "total": 2}', "fsvos: some text", "",
                 '{"event": "progress", "done": 2, "total": 2}', '{"event": "done", "frames": 3}', "[1, 2]"]:
        r.handle_line(line)
    assert seen == [(1, 2), (2, 2)]
    assert (r.done, r.total) == (2, 2)
    assert [e["event"] for e in r.events] == ["progress", "text", "progress", "done"]
    cmd = r.command()
    assert cmd[1:4] == ["-m", "fsvos.cli", "propagate"] and "--progress" in cmd and "json" in cmd
    assert cmd[cmd.index("--support") + 1].startswith("0=")
    r.cleanup()
