"""Loading weights: the XRAVOS/STCN layout strict, fsvos checkpoints, and bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import moving_disc_cine
from fsvos import FsvosInputError, Propagator, load_model, save_checkpoint
from fsvos.model.network import COMPACT_ARCH, FSVOSNet, XRAVOS_ARCH
from fsvos.model.weights import file_sha256

REFERENCE_LAYOUT = Path(__file__).resolve().parent / "data" / "xravos_state_dict.tsv"  # 405 tensors


def _layout():
    rows = [line.split("\t") for line in REFERENCE_LAYOUT.read_text().strip().splitlines()]
    return {name: (shape, dtype) for name, shape, dtype in rows}


def test_network_has_exact_xravos_layout():
    layout = _layout()
    sd = FSVOSNet(XRAVOS_ARCH).state_dict()
    assert len(layout) == 405
    assert set(sd) == set(layout)
    for name, (shape, dtype) in layout.items():
        assert str(tuple(sd[name].shape)) == shape, name
        assert str(sd[name].dtype) == dtype, name


def test_random_state_dict_with_xravos_layout_loads_strict(tmp_path, xravos_model):
    path = tmp_path / "xravos_sw15_s3_125000.pth"
    torch.save(xravos_model.state_dict(), path)  # a plain state_dict, as released
    model = load_model(path)
    assert model.arch == XRAVOS_ARCH
    assert model.fsvos_info["sha256"] == file_sha256(path)
    for k, v in xravos_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    frames, truth = moving_disc_cine(n_frames=3, size=48)
    a = Propagator(xravos_model, keep_probs=True, window=5).propagate(frames, {0: truth[0]})
    b = Propagator(model, keep_probs=True, window=5).propagate(frames, {0: truth[0]})
    assert np.array_equal(a.probs, b.probs)


def test_stcn_variants_load(tmp_path, xravos_model):
    sd = xravos_model.state_dict()
    # DDP prefix + training checkpoint wrapper
    wrapped = {"network": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}}
    torch.save(wrapped, tmp_path / "train.pth")
    m = load_model(tmp_path / "train.pth")
    assert torch.equal(m.state_dict()["decoder.pred.weight"], sd["decoder.pred.weight"])
    # stage-0 single-object value encoder (4 input channels) gets a zero 5th channel
    s0 = dict(sd)
    s0["value_encoder.conv1.weight"] = sd["value_encoder.conv1.weight"][:, :4].clone()
    torch.save(s0, tmp_path / "s0.pth")
    w = load_model(tmp_path / "s0.pth").state_dict()["value_encoder.conv1.weight"]
    assert w.shape[1] == 5 and torch.all(w[:, 4] == 0)


def test_fsvos_checkpoint_carries_architecture(tmp_path, compact_model):
    sha = save_checkpoint(compact_model, tmp_path / "c.pth", meta={"trained_on": "test"})
    assert sha == file_sha256(tmp_path / "c.pth")
    m = load_model(tmp_path / "c.pth")
    assert m.arch == COMPACT_ARCH and m.fsvos_info["meta"]["trained_on"] == "test"
    half = tmp_path / "h.pth"
    save_checkpoint(compact_model, half, half=True)
    assert half.stat().st_size < (tmp_path / "c.pth").stat().st_size * 0.7
    assert load_model(half).state_dict()["decoder.pred.weight"].dtype == torch.float32


def test_damaged_checkpoint_is_detected(tmp_path, compact_model):
    save_checkpoint(compact_model, tmp_path / "c.pth")
    payload = torch.load(tmp_path / "c.pth", weights_only=True)
    payload["state_dict"]["decoder.pred.bias"] += 1.0
    torch.save(payload, tmp_path / "bad.pth")
    with pytest.raises(FsvosInputError, match="SHA-256"):
        load_model(tmp_path / "bad.pth")


def test_bad_weight_files(tmp_path, xravos_model):
    with pytest.raises(FsvosInputError, match="not found"):
        load_model(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    torch.save(xravos_model.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100000])
    with pytest.raises(FsvosInputError, match="truncated or corrupt"):
        load_model(truncated)
    wrong = dict(xravos_model.state_dict())
    del wrong["decoder.pred.bias"]
    wrong["extra.weight"] = torch.zeros(1)
    wrong["key_proj.key_proj.weight"] = torch.zeros(32, 1024, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(FsvosInputError, match="missing.*unexpected.*wrong shape"):
        load_model(tmp_path / "wrong.pth")
    # weights_only: a pickle that would run code is refused
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(FsvosInputError, match="not a readable"):
        load_model(tmp_path / "evil.pth")


def test_default_model_says_it_is_untrained_when_no_weights_are_bundled(monkeypatch, tmp_path):
    monkeypatch.setenv("FSVOS_DEFAULT_WEIGHTS", str(tmp_path / "none.pth"))
    with pytest.warns(UserWarning, match="NO TRAINED DEFAULT WEIGHTS"):
        m = load_model(None)
    assert m.fsvos_info["trained"] is False and m.arch == COMPACT_ARCH


def test_bundled_default_is_the_recorded_file_and_says_it_is_preliminary():
    from fsvos.model.weights import BUNDLED_DEFAULT_NAME, BUNDLED_DEFAULT_SHA256, BUNDLED_WEIGHTS_DIR

    path = BUNDLED_WEIGHTS_DIR / BUNDLED_DEFAULT_NAME
    assert file_sha256(path) == BUNDLED_DEFAULT_SHA256
    assert path.stat().st_size < 20 * 1024 * 1024
    with pytest.warns(UserWarning, match="PRELIMINARY"):
        m = load_model(None)
    assert m.arch == COMPACT_ARCH and m.fsvos_info["kind"] == "bundled-default"
    assert m.fsvos_info["sha256"] == BUNDLED_DEFAULT_SHA256
    meta = m.fsvos_info["meta"]  # precision "auto" may choose bf16 only with the check it rests on
    assert meta["validated_precisions"] == ["fp32", "bf16"] and "bf16" in meta["bf16_check"]
    assert meta["work_size"] == 512 and Propagator(m).work_size == 512  # trained on 512 x 512 cines


def test_damaged_bundled_default_is_refused(tmp_path, monkeypatch):
    from fsvos.model import weights

    bad = tmp_path / weights.BUNDLED_DEFAULT_NAME
    bad.write_bytes((weights.BUNDLED_WEIGHTS_DIR / weights.BUNDLED_DEFAULT_NAME).read_bytes())
    with open(bad, "r+b") as fh:  # flip one byte inside the zip's stored tensors
        fh.seek(bad.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(weights, "BUNDLED_WEIGHTS_DIR", tmp_path)
    with pytest.raises(FsvosInputError):
        load_model(None)
