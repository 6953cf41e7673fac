"""Synthetic XA cines: properties users rely on, the files written, the XA DICOM writer, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import run_fsvos
from fsvos.io.xa_write import XA_SOP_CLASS_UID, write_xa_cine
from fsvos.synth import DEVICE_CATEGORIES, generate_case, write_case, write_dataset
from fsvos.synth.writer import case_frame_count, case_seed

ROOT = Path(__file__).resolve().parents[1]
DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> list:
    """Lines of dciodvfy output that are errors (warnings are fine)."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")]


needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not on PATH; CI installs it")


@pytest.fixture(scope="module")
def case():
    return generate_case(3, size=128, n_frames=24, low_dose=False)


# ---------------------------------------------------------------- the generator

def test_shapes_dtypes_and_objects(case):
    t, h, w = case.frames.shape
    assert (t, h, w) == (24, 128, 128)
    assert case.frames.dtype == np.uint8 and case.labels.dtype == np.uint8
    assert case.labels.shape == case.frames.shape
    labels = [o["label"] for o in case.objects]
    assert labels == list(range(1, len(labels) + 1)) and len(labels) <= 5
    assert case.objects[0]["category"] == "vessel" and case.objects[1]["category"] == "catheter"
    assert int(case.labels.max()) <= len(labels)
    for o in case.objects:  # every object is painted on the support frame
        assert (case.labels[case.support_frame] == o["label"]).any(), o
    assert case.frame_time_ms > 0 and case.pixel_spacing_mm > 0
    json.dumps(case.params)  # JSON-able


def test_same_seed_gives_identical_cines_and_other_seeds_differ(case):
    again = generate_case(3, size=128, n_frames=24, low_dose=False)
    assert again.frames.tobytes() == case.frames.tobytes()
    assert again.labels.tobytes() == case.labels.tobytes()
    assert again.support_frame == case.support_frame and again.objects == case.objects
    other = generate_case(4, size=128, n_frames=24, low_dose=False)
    assert other.frames.tobytes() != case.frames.tobytes()


def test_contrast_washes_in_then_out_and_support_is_early(case):
    area = (case.labels == 1).sum(axis=(1, 2))
    assert area[0] == 0, "no contrast before the injection"
    first = int(np.argmax(area > 0))
    peak = int(np.argmax(area))
    assert 0 < first < peak
    assert area[first] < 0.5 * area[peak], "the bolus front fills the tree progressively"
    assert area[-1] < area[peak], "wash-out removes visible contrast"
    s = case.support_frame
    assert 0 < area[s] <= area[peak] and s <= peak, "support: early in the injection, may be partial"


def test_vessels_are_darker_than_their_surroundings(case):
    t = int(np.argmax((case.labels == 1).sum(axis=(1, 2))))
    vessel = case.labels[t] == 1
    ring = cv2.dilate(vessel.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & (case.labels[t] == 0)
    frame = case.frames[t].astype(float)
    assert frame[vessel].mean() < frame[ring].mean() - 15
    # objects move: the catheter label is not the same in every frame (cardiac + breathing motion)
    cath = case.labels == 2
    assert any((cath[i] != cath[0]).any() for i in range(1, len(cath)))


def test_low_dose_is_noisier():
    def noise(c):
        # frame difference before the injection, high-passed: quantum noise (motion is smooth)
        d = c.frames[0].astype(np.float32) - c.frames[1].astype(np.float32)
        return float(np.std(d - cv2.GaussianBlur(d, (0, 0), 3.0)))

    cine = generate_case(8, size=128, n_frames=10, low_dose=False)
    low = generate_case(8, size=128, n_frames=10, low_dose=True)
    assert low.low_dose and not cine.low_dose
    assert noise(low) > 1.5 * noise(cine)


def test_splits_control_device_classes():
    for seed in range(5):
        c = generate_case(seed, size=64, n_frames=8, split="no-devices")
        assert not any(o["category"] in DEVICE_CATEGORIES or o["device"] for o in c.objects)
        d = generate_case(seed, size=64, n_frames=8, split="devices")
        devs = [o for o in d.objects if o["device"]]
        assert devs and all(o["category"] in DEVICE_CATEGORIES for o in devs)
        for o in devs:
            assert (d.labels[d.support_frame] == o["label"]).any()


def test_geometry_scales_with_size():
    small = generate_case(5, size=128, n_frames=10)
    big = generate_case(5, size=256, n_frames=10)
    assert big.frames.shape == (10, 256, 256)
    assert big.pixel_spacing_mm == pytest.approx(small.pixel_spacing_mm / 2, rel=1e-3)
    s = small.support_frame
    ratio = (big.labels[s] == 2).sum() / max((small.labels[s] == 2).sum(), 1)
    assert 2.0 < ratio < 6.0  # catheter area grows with the pixel count (4x), thin parts aside


def test_bad_arguments_raise():
    for kwargs in ({"size": 16}, {"n_frames": 3}, {"split": "weird"}):
        with pytest.raises(ValueError):
            generate_case(1, **kwargs)


# ---------------------------------------------------------------- files

def test_write_case_files_reread(case, tmp_path):
    folder = write_case(case, tmp_path / "case_x")
    assert sorted(p.name for p in folder.iterdir()) == ["cine.dcm", "labels.npz", "meta.json", "support.png"]
    with np.load(folder / "labels.npz") as z:
        np.testing.assert_array_equal(z["labels"], case.labels)
    np.testing.assert_array_equal(np.array(Image.open(folder / "support.png")), case.labels[case.support_frame])
    meta = json.loads((folder / "meta.json").read_text())
    for key in ("objects", "support_frame", "n_frames", "size", "seed", "split", "params", "frame_time_ms"):
        assert key in meta
    assert meta["support_frame"] == case.support_frame and meta["n_frames"] == 24
    ds = pydicom.dcmread(folder / "cine.dcm")
    assert ds.SOPClassUID == XA_SOP_CLASS_UID and ds.Modality == "XA"
    assert int(ds.NumberOfFrames) == 24
    assert float(ds.FrameTime) == pytest.approx(case.frame_time_ms, rel=1e-4)
    np.testing.assert_array_equal(ds.pixel_array, case.frames)
    with pytest.raises(FileExistsError):
        write_case(case, folder)
    write_case(case, folder, replace=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    if DCIODVFY:
        assert dciodvfy_errors(folder / "cine.dcm") == []


@pytest.mark.parametrize("dtype,bits,rle", [(np.uint8, 8, False), (np.uint8, 8, True),
                                            (np.uint16, 12, False), (np.uint16, 16, True)])
def test_xa_writer_roundtrip(tmp_path, dtype, bits, rle):
    rng = np.random.default_rng(bits)
    frames = rng.integers(0, 2 ** bits, size=(3, 20, 24), dtype=np.uint64).astype(dtype)
    path = tmp_path / "x.dcm"
    write_xa_cine(path, frames, frame_time_ms=33.3, pixel_spacing_mm=0.3, bits_stored=bits, rle=rle,
                  extra={"PatientSex": "O"})
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ("1.2.840.10008.1.2.5" if rle else "1.2.840.10008.1.2.1")
    assert int(ds.BitsStored) == bits and ds.PatientSex == "O"
    assert ds.FrameIncrementPointer == 0x00181063
    np.testing.assert_array_equal(ds.pixel_array, frames)
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]


@needs_dciodvfy
def test_xa_writer_passes_dciodvfy(tmp_path):
    frames = np.random.default_rng(0).integers(0, 4096, size=(4, 16, 16), dtype=np.uint16)
    for rle in (False, True):
        path = tmp_path / f"c{int(rle)}.dcm"
        write_xa_cine(path, frames, frame_time_ms=66.7, bits_stored=12, rle=rle)
        assert dciodvfy_errors(path) == []


def test_xa_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        write_xa_cine(tmp_path / "a.dcm", np.full((2, 4, 4), 300, np.uint16), frame_time_ms=10, bits_stored=8)
    with pytest.raises(ValueError):
        write_xa_cine(tmp_path / "b.dcm", np.zeros((4, 4), np.uint8), frame_time_ms=10)
    with pytest.raises(ValueError):
        write_xa_cine(tmp_path / "c.dcm", np.zeros((1, 4, 4), np.uint8), frame_time_ms=0)
    assert list(tmp_path.iterdir()) == []


def test_write_dataset_is_deterministic_and_refuses_to_overwrite(tmp_path):
    folders = write_dataset(tmp_path / "ds", cases=2, seed=11, size=64, frames=(8, 12))
    assert [f.name for f in folders] == ["case_000", "case_001"]
    listing = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert [c["name"] for c in listing["cases"]] == ["case_000", "case_001"]
    for i, entry in enumerate(listing["cases"]):
        assert entry["seed"] == case_seed(11, i)
        assert entry["n_frames"] == case_frame_count(11, i, (8, 12))
        assert 8 <= entry["n_frames"] <= 12
        c = generate_case(entry["seed"], size=64, n_frames=entry["n_frames"])
        with np.load(folders[i] / "labels.npz") as z:
            np.testing.assert_array_equal(z["labels"], c.labels)
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "ds", cases=1, seed=11, size=64, frames=8)
    write_dataset(tmp_path / "ds", cases=1, seed=12, size=64, frames=8, overwrite=True)
    assert not [p for p in (tmp_path / "ds").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- the command

fsvos = run_fsvos


def test_cli_writes_a_dataset(tmp_path):
    out = tmp_path / "synth"
    proc = fsvos("synth", out, "--cases", 2, "--seed", 1, "--size", 64, "--frames", "8-10",
                 "--split", "no-devices", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads((out / "dataset.json").read_text())
    assert listing["split"] == "no-devices" and len(listing["cases"]) == 2
    for name in ("case_000", "case_001"):
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == ["cine.dcm", "labels.npz", "meta.json", "support.png"]
        meta = json.loads((out / name / "meta.json").read_text())
        assert 8 <= meta["n_frames"] <= 10 and meta["size"] == 64 and meta["split"] == "no-devices"
        assert int(pydicom.dcmread(out / name / "cine.dcm").NumberOfFrames) == meta["n_frames"]
    # running again into the same folder is refused (no silent overwrite)
    again = fsvos("synth", out, "--cases", 1, "--seed", 1, "--size", 64, "--frames", 8, cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr


BASE_ARGS = ["--cases", "1", "--seed", "0", "--size", "64", "--frames", "8"]


def _with(bad):
    args = list(BASE_ARGS)
    args[args.index(bad[0]) + 1] = bad[1]
    return args


@pytest.mark.parametrize("bad", [["--cases", "0"], ["--frames", "ten"]])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, bad):
    out = tmp_path / "never"
    proc = fsvos("synth", out, *_with(bad), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsvos: error:"), proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("bad", [["--frames", "10-5"], ["--frames", "3"], ["--frames", "8-x"],
                                 ["--size", "8"], ["--seed", "-1"], ["--cases", "-2"]])
def test_bad_arguments_in_process(tmp_path, capsys, bad):
    from fsvos.cli import main

    out = tmp_path / "never"
    assert main(["synth", str(out), *_with(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fsvos: error:")
    assert not out.exists()


def test_cli_refuses_a_file_as_output(tmp_path, capsys):
    from fsvos.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["synth", str(f), *BASE_ARGS]) == 2
    assert "not a folder" in capsys.readouterr().err
