"""Loading weights: the XRAVOS/STCN layout strict, fsvos checkpoints, and bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import moving_disc_cine, randomised_model, run_fsvos
from fsvos import FsvosInputError, Propagator, load_model, save_checkpoint
from fsvos.model.network import COMPACT_ARCH, COMPACT_REFINE_ARCH, FSVOSNet, XRAVOS_ARCH
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
    assert m.fsvos_info["trained"] is False and m.arch == COMPACT_REFINE_ARCH  # the bundled default's


def test_bundled_default_is_the_recorded_file_and_says_it_is_preliminary():
    from fsvos.model.weights import BUNDLED_DEFAULT_NAME, BUNDLED_DEFAULT_SHA256, BUNDLED_WEIGHTS_DIR

    path = BUNDLED_WEIGHTS_DIR / BUNDLED_DEFAULT_NAME
    assert file_sha256(path) == BUNDLED_DEFAULT_SHA256
    assert path.stat().st_size < 20 * 1024 * 1024
    with pytest.warns(UserWarning, match="PRELIMINARY"):
        m = load_model(None)
    assert m.arch == COMPACT_REFINE_ARCH and m.fsvos_info["kind"] == "bundled-default"
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


def test_weights_average_writes_the_mean_of_the_models(tmp_path):
    """`fsvos weights average` (the real command): every float tensor, batch-norm statistics
    included, is the mean of the inputs'; the metadata lists the inputs and takes --meta."""
    a, b = randomised_model(COMPACT_ARCH, seed=1), randomised_model(COMPACT_ARCH, seed=2)
    save_checkpoint(a, tmp_path / "a.pth", meta={"steps": 100})
    save_checkpoint(b, tmp_path / "b.pth", meta={"steps": 200})
    (tmp_path / "meta.json").write_text(json.dumps({"note": "soup of a and b"}))
    r = run_fsvos("weights", "average", tmp_path / "a.pth", tmp_path / "b.pth", "--out", tmp_path / "ab.pth",
                   "--precision", "fp32", "--meta", tmp_path / "meta.json")
    assert r.returncode == 0, r.stderr
    assert file_sha256(tmp_path / "ab.pth") in r.stdout
    m = load_model(tmp_path / "ab.pth")
    sa, sb, sm = a.state_dict(), b.state_dict(), m.state_dict()
    for name, value in sm.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (sa[name] + sb[name]) / 2, rtol=0, atol=1e-7, msg=name)
        else:
            assert torch.equal(value, sa[name]), name
    assert not torch.equal(sm["decoder.pred.weight"], sa["decoder.pred.weight"])
    meta = m.fsvos_info["meta"]
    assert meta["note"] == "soup of a and b"
    assert [s["sha256"] for s in meta["averaged_from"]] == [file_sha256(tmp_path / "a.pth"),
                                                              file_sha256(tmp_path / "b.pth")]
    assert [s["steps"] for s in meta["averaged_from"]] == [100, 200]
    # the default storage is fp16, as fsvos train's final.pth
    r = run_fsvos("weights", "average", tmp_path / "a.pth", tmp_path / "b.pth", "--out", tmp_path / "ab16.pth")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ab16.pth").stat().st_size < (tmp_path / "ab.pth").stat().st_size * 0.7
    torch.testing.assert_close(load_model(tmp_path / "ab16.pth").state_dict()["decoder.pred.weight"],
                               sm["decoder.pred.weight"], rtol=1e-3, atol=1e-4)


def test_weights_average_refuses_bad_input_without_writing(tmp_path, capsys):
    from fsvos.cli import main
    from fsvos.model.network import COMPACT_V0_ARCH

    save_checkpoint(randomised_model(COMPACT_ARCH, seed=1), tmp_path / "a.pth")
    save_checkpoint(randomised_model(COMPACT_V0_ARCH, seed=1), tmp_path / "v0.pth")
    out = tmp_path / "out.pth"
    cases = [
        ((tmp_path / "a.pth",), "at least two weights files"),
        ((tmp_path / "a.pth", tmp_path / "v0.pth"), "v0.pth: architecture differs"),
        ((tmp_path / "a.pth", tmp_path / "missing.pth"), "missing.pth: weights file not found"),
    ]
    for files, message in cases:
        assert main(["weights", "average", *map(str, files), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.glob("*.partial"))
    (tmp_path / "meta.json").write_text("[1, 2]")
    assert main(["weights", "average", str(tmp_path / "a.pth"), str(tmp_path / "a.pth"), "--out", str(out),
                 "--meta", str(tmp_path / "meta.json")]) == 2
    assert "meta.json: expected a JSON object" in capsys.readouterr().err and not out.exists()
    out.write_bytes(b"keep me")
    assert main(["weights", "average", str(tmp_path / "a.pth"), str(tmp_path / "a.pth"), "--out", str(out)]) == 2
    assert "exists (use --overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["weights", "average", str(tmp_path / "a.pth"), str(tmp_path / "a.pth"), "--out", str(out),
                 "--overwrite", "--precision", "fp32"]) == 0
    a = load_model(tmp_path / "a.pth").state_dict()
    assert all(torch.equal(v, a[k]) for k, v in load_model(out).state_dict().items())  # a soup of one model


def test_weights_info_describes_the_file(tmp_path, capsys, compact_model):
    from fsvos.cli import main

    save_checkpoint(compact_model, tmp_path / "c.pth", meta={"steps": 1234, "note": "test weights"})
    assert main(["weights", "info", str(tmp_path / "c.pth"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["sha256"] == file_sha256(tmp_path / "c.pth") and d["architecture"] == "compact"
    assert d["steps"] == 1234 and d["meta"]["note"] == "test weights"
    assert d["parameters"] == sum(p.numel() for p in compact_model.parameters())
    assert main(["weights", "info", "default"]) == 0
    text = capsys.readouterr().out
    from fsvos.model.weights import BUNDLED_DEFAULT_SHA256
    assert f"sha256:       {BUNDLED_DEFAULT_SHA256}" in text and "kind:         bundled-default" in text
    assert main(["weights", "info", str(tmp_path / "none.pth")]) == 2
    assert "none.pth: weights file not found" in capsys.readouterr().err
