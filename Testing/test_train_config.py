"""Training configs: TOML and YAML agree, the shipped examples load, bad configs give one-line
errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsvos.cli import main
from fsvos.errors import FsvosInputError
from fsvos.train.config import TrainConfig

TRAINING = Path(__file__).resolve().parents[1] / "FSVOSPropagate" / "Resources" / "Training"


def test_toml_and_yaml_examples_give_the_same_config():
    a = TrainConfig.load(TRAINING / "finetune_example.toml")
    b = TrainConfig.load(TRAINING / "finetune_example.yaml")
    assert a == b
    assert a.source == "cines" and a.lr == 1e-5 and a.weight_decay == 0.05 and a.contrastive == 0.01
    assert a.data[1]["frames"] == [0, 10, 20]
    assert a.data[0]["cine"] == str(TRAINING / "my_cines/*.dcm")  # relative to the config's folder
    assert a.init == str(TRAINING / "../Weights/fsvos_default.pth")


def test_toml_and_yaml_written_here_agree(tmp_path):
    (tmp_path / "c.toml").write_text('[train]\nsteps = 7\nlr = 1\nlr_drops = [3, 5]\n[loss]\ntemporal = 0.5\n'
                                     '[output]\nout = "x"\n')
    (tmp_path / "c.yml").write_text('train: {steps: 7, lr: 1e0, lr_drops: [3, 5]}\nloss: {temporal: 0.5}\nout: x\n')
    a, b = TrainConfig.load(tmp_path / "c.toml"), TrainConfig.load(tmp_path / "c.yml")
    assert a == b and a.lr == 1.0 and isinstance(a.lr, float)


def test_existing_config_keeps_todays_behaviour():
    cfg = TrainConfig.load(TRAINING / "default_compact.toml")
    assert (cfg.ce, cfg.contrastive, cfg.temporal, cfg.consistency, cfg.jaccard) == (1.0, 0.0, 0.0, 0.0, 0.0)
    stage6 = TrainConfig.load(TRAINING / "default_compact_stage6.toml")  # v5 + the soft Jaccard loss
    assert stage6.jaccard == 0.5 and stage6.ce == 1.0 and stage6.init == "runs/default_compact_v5/final.pth"
    assert cfg.source == "synth" and cfg.data == [] and cfg.device == "cpu"
    static = TrainConfig.load(TRAINING / "static_pretrain.toml")
    assert static.source == "static" and static.contrastive == 0.01
    stage2 = TrainConfig.load(TRAINING / "default_compact_stage2.toml")  # the default's second stage
    assert stage2.init == "runs/default_compact_v1/final.pth" and stage2.out != cfg.out
    assert (stage2.refresh_every, stage2.refresh_cases, stage2.data_seed != cfg.data_seed) == (250, 16, True)
    stage3 = TrainConfig.load(TRAINING / "default_compact_stage3.toml")  # the third, from the v3 default
    assert stage3.init == "runs/default_compact_v3.pth" and stage3.out not in (cfg.out, stage2.out)
    assert stage3.data_seed not in (cfg.data_seed, stage2.data_seed) and (stage3.steps, stage3.lr_drops) == (6000, [4500])
    stage4 = TrainConfig.load(TRAINING / "default_compact_stage4.toml")  # wider intensity augmentation, from v4
    assert stage4.init == "runs/default_compact_v4.pth" and stage4.out not in (cfg.out, stage2.out, stage3.out)
    assert stage4.data_seed not in (cfg.data_seed, stage2.data_seed, stage3.data_seed)
    assert (stage4.contrast_sigma, stage4.gamma_sigma, stage4.steps) == (0.4, 0.3, 4000) and stage3.contrast_sigma == 0.2


@pytest.mark.parametrize("text, needle", [
    ("[train]\nsteps = \"many\"\n", "key 'steps' in [train] must be a whole number, not 'many'"),
    ("[loss]\ncontrastive = -1\n", "key 'contrastive': must be >= 0"),
    ("[loss]\ncontrastve = 0.1\n", "unknown key 'contrastve' in [loss]"),
    ("[data]\nsource = \"videos\"\n", "key 'source': must be one of"),
    ("[data]\nsource = \"cines\"\n", "key 'data': source 'cines' needs at least one entry"),
    ("[train]\nsteps = 3\n[output]\nsteps = 4\n", "key 'steps' is set twice ([train] and [output])"),
    ("[train]\nwindow = 8\n", "key 'window': must be an odd number"),
    ("[train]\nlr_drops = [1.5]\n", "key 'lr_drops' in [train] must be a list of whole numbers"),
    ("[train]\ndevice = \"gpu\"\n", "key 'device': must be 'cpu', 'cuda' or 'cuda:N'"),
    ("[data]\nsource = \"cines\"\n[[data.data]]\ncine = \"a.dcm\"\nlabel = \"b\"\n", "unknown entry key 'label'"),
    ("steps = [\n", "not a valid config file"),
    ("[data]\nsource = \"static\"\nrefresh_every = 500\n", "key 'refresh_every': refreshing the pool needs source"),
    ("[data]\ncases = 8\nrefresh_cases = 9\n", "key 'refresh_cases': must be <= cases (8)"),
    ("[data]\nrefresh_every = -1\n", "key 'refresh_every': must be >= 0"),
    ("[data]\ncontrast_sigma = -0.1\n", "key 'contrast_sigma': must be >= 0"),
])
def test_bad_configs_name_the_file_and_the_key(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FsvosInputError) as err:
        TrainConfig.load(path)
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value)


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch: 0\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "key 'batch': must be >= 1" in err
