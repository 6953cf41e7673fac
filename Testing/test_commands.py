"""The eval, bench and demo commands and DICOM-SEG output of propagate, as subprocesses on generated data."""

from __future__ import annotations

import csv
import os
import sys
import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import moving_disc_cine, randomised_model
from fsvos import save_checkpoint
from fsvos.io.seg import read_seg
from fsvos.io.xa_write import write_xa_cine
from fsvos.model.network import COMPACT_ARCH
from fsvos.synth import write_dataset
from test_cli_propagate import fsvos


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "w.pth"
    save_checkpoint(randomised_model(COMPACT_ARCH, seed=2), path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds") / "synthetic"
    write_dataset(d, cases=2, seed=5, size=96, frames=(10, 12), split="devices")
    return d


def test_eval_flow_and_engine_write_tables_and_pictures(dataset, weights, tmp_path):
    r = fsvos("eval", dataset, "--method", "flow", "--out", tmp_path / "flow")
    assert r.returncode == 0, r.stderr
    assert "overall" in r.stdout and "J&F" in r.stdout and "device objects" in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "flow" / "results.csv")))
    assert {row["case"] for row in rows} == {"case_000", "case_001"}
    summary = json.loads((tmp_path / "flow" / "results.json").read_text())
    jf = np.mean([float(row["JF"]) for row in rows])
    assert summary["overall"]["JF"] == pytest.approx(jf, abs=1e-9)
    assert 0.0 <= summary["overall"]["JF"] <= 1.0 and summary["device_objects"]["n_objects"] >= 2
    cats = summary["categories"]  # per category: the mean over its objects
    assert sum(c["n_objects"] for c in cats.values()) == len(rows) and "catheter" in cats
    assert cats["catheter"]["JF"] == pytest.approx(np.mean([float(r["JF"]) for r in rows if r["category"] == "catheter"]))
    assert "by category: " in r.stdout and "catheter " in r.stdout
    assert (tmp_path / "flow" / "case_000.png").exists()
    r = fsvos("eval", dataset, "--method", "engine", "--weights", weights, "--window", "7", "--out",
              tmp_path / "engine", "--no-pictures")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "engine" / "results.json").read_text())["engine"]["window"] == 7
    assert not (tmp_path / "engine" / "case_000.png").exists()
    r = fsvos("eval", tmp_path / "nothing-here")
    assert r.returncode == 2 and "no such dataset folder" in r.stderr


def test_bench_prints_a_table_and_json(weights):
    r = fsvos("bench", "--size", "64", "--frames", "6", "--objects", "2", "--weights", weights,
              "--configs", "global:r2,local-similarity:k7:r6")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("global:r2") for line in lines)
    assert any(line.startswith("local-similarity:k7:r6") for line in lines)
    r = fsvos("bench", "--size", "64", "--frames", "6", "--objects", "2", "--arch", "compact",
              "--configs", "local-fixed:k7:r1", "--share-at", "3", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["fps"] > 0 and res["peak_rss_mb"] > 0 and res["model"] == "compact"
    assert res["encode_s"] > 0 and res["match_s"] > 0 and res["decode_s"] > 0
    assert res["precision"] == "fp32" and res["winograd_convs"] > 0 and res["winograd_compiled"] is True
    assert res["selection"] == "fp32"
    # r1: frame f (1..5) is matched against f memory frames; one frame has exactly 3
    assert res["share_at"] == 3 and res["share_frames"] == 1 and 0 < res["match_share"] < 1
    r = fsvos("bench", "--configs", "nearest:k3")
    assert r.returncode == 2 and "bad configuration" in r.stderr
    r = fsvos("bench", "--size", "64", "--frames", "6", "--objects", "2", "--arch", "compact",
              "--configs", "local-fixed:k7:r1", "--repeat", "3", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["repeat"] == 3 and len(res["fps_runs"]) == 3
    assert res["fps"] == sorted(res["fps_runs"])[1] and res["fps_min"] <= res["fps"] <= res["fps_max"]
    r = fsvos("bench", "--size", "64", "--frames", "6", "--objects", "2", "--arch", "compact",
              "--configs", "local-fixed:k7:r1", "--repeat", "2", "--precision", "bf16")
    assert r.returncode == 0 and "range" in r.stdout and "median of 2 runs" in r.stdout, r.stderr
    assert "bf16" in r.stdout and "candidates selected on int8 keys" in r.stdout
    assert fsvos("bench", "--repeat", "0").returncode == 2


def test_propagate_writes_a_dicom_seg_of_every_frame(weights, tmp_path):
    frames, truth = moving_disc_cine(n_frames=6, size=64)
    write_xa_cine(tmp_path / "cine.dcm", frames, frame_time_ms=66.7, pixel_spacing_mm=0.3,
                  patient_name="TEST^PATIENT", patient_id="ID42")
    Image.fromarray(truth[1]).save(tmp_path / "m.png")
    (tmp_path / "objects.json").write_text(json.dumps([{"label": 1, "name": "LAD", "category": "coronary artery"},
                                                       {"label": 2, "name": "Balloon", "category": "balloon"}]))
    r = fsvos("propagate", tmp_path / "cine.dcm", "--support", f"1={tmp_path / 'm.png'}", "--output",
              tmp_path / "seg.dcm", "--weights", weights, "--window", "7", "--objects", tmp_path / "objects.json")
    assert r.returncode == 0, r.stderr
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.PatientID == "ID42" and seg.SegmentationType == "BINARY"
    labels, objects = read_seg(tmp_path / "seg.dcm")
    assert np.array_equal(labels[1], truth[1]) and [o["name"] for o in objects] == ["LAD", "Balloon"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "41801008"
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(tmp_path / "seg.dcm")], capture_output=True, text=True)
        assert "Error" not in out.stdout + out.stderr, out.stderr
    # a .dcm output from a non-DICOM cine is refused before any work
    np.save(tmp_path / "cine.npy", frames)
    r = fsvos("propagate", tmp_path / "cine.npy", "--support", f"1={tmp_path / 'm.png'}", "--output",
              tmp_path / "seg2.dcm", "--weights", weights)
    assert r.returncode == 2 and "needs a DICOM cine" in r.stderr and not (tmp_path / "seg2.dcm").exists()


def test_demo_writes_seg_labels_and_picture(weights, tmp_path):
    out = tmp_path / "demo"
    r = fsvos("demo", out, "--size", "96", "--frames", "10", "--weights", weights, "--window", "7")
    assert r.returncode == 0, r.stderr
    for name in ("segmentation.dcm", "labels.nrrd", "overview.png", "demo.json", "cine/cine.dcm"):
        assert (out / name).exists(), name
    summary = json.loads((out / "demo.json").read_text())
    assert 0.0 <= summary["JF"] <= 1.0 and summary["frames_per_second"] > 0
    assert summary["precision"] == "fp32" and "precision fp32" in r.stderr  # "auto": these weights have no bf16 check
    assert Image.open(out / "overview.png").size[0] == 4 * 256
    r = fsvos("demo", out, "--size", "96", "--frames", "10", "--weights", weights)  # replaces its own output
    assert r.returncode == 0, r.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    r = fsvos("demo", tmp_path / "other", "--weights", weights)
    assert r.returncode == 2 and (tmp_path / "other" / "keep.txt").exists()


_HEAP_PROBE = """
import ctypes, sys
from fsvos.runtime import tune_allocator
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tuned = tune_allocator()
block = libc.malloc(20 << 20)
mmapped = libc.mallinfo2().hblkhd >= (20 << 20)
libc.free(block)
print(tuned, mmapped)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_allocator_tuning_keeps_large_blocks_in_the_heap():
    import ctypes

    if not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    run = lambda env: subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True,
                                     env={**os.environ, **env}, check=True).stdout.split()
    assert run({}) == ["True", "False"]  # a 20 MB tensor-sized block is served from the heap
    assert run({"FSVOS_MALLOPT": "0"}) == ["False", "True"]  # glibc's default: a fresh mmap
