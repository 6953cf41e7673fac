"""The real `fsvos propagate` command as a subprocess: outputs, progress, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nrrd
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import moving_disc_cine, randomised_model, run_fsvos
from fsvos.model.network import COMPACT_ARCH
from fsvos import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


fsvos = run_fsvos


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    frames, truth = moving_disc_cine(n_frames=6, size=64)
    np.save(d / "cine.npy", frames)
    Image.fromarray(truth[0]).save(d / "mask0.png")
    Image.fromarray(truth[5].astype(np.uint16) * 1000 // 1000).save(d / "mask5.png")
    np.save(d / "mask5.npy", truth[5])
    save_checkpoint(randomised_model(COMPACT_ARCH, seed=4), d / "w.pth")
    return d, frames, truth


def _no_partial(d: Path):
    return [p.name for p in d.iterdir() if ".partial" in p.name]


def test_propagate_npz_with_probs(case):
    d, frames, truth = case
    out = d / "out.npz"
    r = fsvos("propagate", d / "cine.npy", "--support", f"0={d / 'mask0.png'}", "--support", f"5={d / 'mask5.npy'}",
              "--output", out, "--weights", d / "w.pth", "--window", "7", "--save-probs")
    assert r.returncode == 0, r.stderr
    z = np.load(out)
    assert z["labels"].shape == frames.shape and z["labels"].dtype == np.uint8
    assert np.array_equal(z["labels"][0], truth[0]) and np.array_equal(z["labels"][5], truth[5])
    assert z["probs"].shape == (3, 6, 64, 64) and z["confidence"].shape == (6, 2)
    assert list(z["supports"]) == [0, 5]
    assert "frames/s" in r.stderr


def test_work_size_processes_smaller_and_writes_the_cine_size(case):
    d, frames, truth = case
    out = d / "small.npz"
    r = fsvos("propagate", d / "cine.npy", "--support", f"0={d / 'mask0.png'}", "--output", out,
              "--weights", d / "w.pth", "--window", "7", "--work-size", "32")
    assert r.returncode == 0, r.stderr
    assert "the network sees the frames at 32x32" in r.stderr
    labels = np.load(out)["labels"]
    assert labels.shape == frames.shape and np.array_equal(labels[0], truth[0])


def test_propagate_nrrd_and_png_folder_and_json_progress(case):
    d, frames, truth = case
    r = fsvos("propagate", d / "cine.npy", "--support", f"2={d / 'mask0.png'}", "--output", d / "out.nrrd",
              "--weights", d / "w.pth", "--matching", "global")
    assert r.returncode == 0, r.stderr
    data, header = nrrd.read(str(d / "out.nrrd"), index_order="C")
    assert data.shape == frames.shape and np.array_equal(data[2], truth[0])
    r = fsvos("propagate", d / "cine.npy", "--support", f"0={d / 'mask0.png'}", "--output", d / "pngs",
              "--weights", d / "w.pth", "--progress", "json", "--reference", "fixed", "--precision", "bf16")
    assert r.returncode == 0, r.stderr
    assert "precision bf16" in r.stderr  # asked for explicitly
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["done"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4, 5]
    assert events[-1]["event"] == "done" and events[-1]["frames"] == 6
    pngs = sorted((d / "pngs").iterdir())
    assert len(pngs) == 6 and np.array_equal(np.array(Image.open(pngs[0])), truth[0])


def test_default_weights_warn_loudly_when_untrained(case, tmp_path):
    d, _, _ = case
    env_path = tmp_path / "nothing.pth"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "FSVOSPropagate"), FSVOS_DEFAULT_WEIGHTS=str(env_path))
    r = subprocess.run([sys.executable, "-m", "fsvos", "propagate", str(d / "cine.npy"), "--support",
                        f"0={d / 'mask0.png'}", "--output", str(tmp_path / "o.npz")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "NO TRAINED DEFAULT WEIGHTS" in r.stderr


def _bad_inputs(d: Path, tmp: Path):
    frames, truth = moving_disc_cine(n_frames=6, size=64)
    np.save(tmp / "single.npy", frames[:1])
    np.save(tmp / "flat.npy", frames[0])
    nan = frames.astype(np.float32)
    nan[1, 2, 2] = np.nan
    np.save(tmp / "nan.npy", nan)
    (tmp / "notacine.npy").write_bytes(b"not numpy at all")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp / "empty.png")
    Image.fromarray(truth[0][:32]).save(tmp / "small.png")
    Image.fromarray(np.where(truth[0] > 0, 3, 0).astype(np.uint8)).save(tmp / "gap.png")
    Image.fromarray(np.stack([truth[0]] * 3, -1) * 80).save(tmp / "rgb.png")
    good = tmp / "w.pth"
    good.write_bytes((d / "w.pth").read_bytes())
    (tmp / "trunc.pth").write_bytes(good.read_bytes()[:5000])
    torch.save({"key_encoder.conv1.weight": torch.zeros(3)}, tmp / "layout.pth")
    cine, m0 = d / "cine.npy", f"0={d / 'mask0.png'}"
    w = ["--weights", good]
    return [
        (["propagate", tmp / "missing.npy", "--support", m0, *w], "missing.npy", "no such file"),
        (["propagate", tmp / "notacine.npy", "--support", m0, *w], "notacine.npy", "not a readable"),
        (["propagate", tmp / "single.npy", "--support", m0, *w], "single.npy", "at least 2 frames"),
        (["propagate", tmp / "flat.npy", "--support", m0, *w], "flat.npy", "(frames, height, width)"),
        (["propagate", tmp / "nan.npy", "--support", m0, *w], "nan.npy", "NaN"),
        (["propagate", cine, "--support", f"0={tmp / 'small.png'}", *w], "small.png", "does not match"),
        (["propagate", cine, "--support", f"9={d / 'mask0.png'}", *w], "cine.npy", "out of range"),
        (["propagate", cine, "--support", f"0={tmp / 'empty.png'}", *w], "empty.png", "empty"),
        (["propagate", cine, "--support", f"0={tmp / 'gap.png'}", *w], "gap.png", "without gaps"),
        (["propagate", cine, "--support", f"0={tmp / 'rgb.png'}", *w], "rgb.png", "colour PNG"),
        (["propagate", cine, "--support", f"0={tmp / 'nomask.png'}", *w], "nomask.png", "no such mask"),
        (["propagate", cine, "--support", "x=y", *w], "--support", "FRAME"),
        (["propagate", cine, "--support", m0, "--weights", tmp / "trunc.pth"], "trunc.pth", "truncated"),
        (["propagate", cine, "--support", m0, "--weights", tmp / "layout.pth"], "layout.pth", "layout"),
        (["propagate", cine, "--support", m0, "--weights", tmp / "nope.pth"], "nope.pth", "not found"),
        (["propagate", cine, "--support", m0, *w, "--window", "4"], "window", "odd"),
        (["propagate", cine, "--support", m0, *w, "--work-size", "8"], "work size", "at least 32"),
        (["propagate", cine, "--support", m0, *w, "--work-size", "large"], "work size", "'large'"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    d, _, _ = case
    for args, names, message in _bad_inputs(d, tmp_path):
        out = tmp_path / "result.npz"
        r = fsvos(*args, "--output", out)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2, (args, r.stderr)
        assert lines and lines[-1].startswith("fsvos: error:"), (args, r.stderr)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        assert names in lines[-1] and message in lines[-1], (args, lines[-1])
        assert not out.exists() and not _no_partial(tmp_path), args


def test_unknown_output_type_fails_before_any_work(case, tmp_path):
    d, _, _ = case
    r = fsvos("propagate", d / "cine.npy", "--support", f"0={d / 'mask0.png'}", "--output", tmp_path / "x.png")
    assert r.returncode == 2 and "unknown output type" in r.stderr
    r = fsvos("propagate", d / "cine.npy", "--support", f"0={d / 'mask0.png'}", "--output",
              tmp_path / "nodir" / "x.npz")
    assert r.returncode == 2 and "does not exist" in r.stderr
