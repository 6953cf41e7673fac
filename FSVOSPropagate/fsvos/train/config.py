"""Training configuration (TOML or YAML file -> :class:`TrainConfig`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import FsvosInputError


@dataclass
class TrainConfig:
    # model
    arch: str = "compact"  # "compact", "xravos"
    init: Optional[str] = None  # weights to start from (any file load_model reads)
    # data
    source: str = "synth"  # "synth": synthetic XA cines made on the fly
    cases: int = 24
    size: int = 512
    frames: List[int] = field(default_factory=lambda: [30, 60])
    split: str = "all"
    data_seed: int = 1000
    crop: int = 192
    max_skip: int = 5
    objects: int = 3
    # optimisation
    steps: int = 3000
    batch: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-7
    clip: float = 1.0
    window: int = 15
    precision: str = "fp32"  # "fp32" or "bf16" autocast
    seed: int = 0
    threads: int = 0  # 0 = torch default
    lr_drops: List[int] = field(default_factory=list)  # steps at which the learning rate is divided by 10
    bootstrap_start: int = 500
    bootstrap_end: int = 2000
    top_p: float = 0.15
    # validation: J&F of whole-cine propagation on synthetic cines of other seeds
    val_cases: int = 0  # 0 = no validation
    val_seed: int = 424242
    val_frames: List[int] = field(default_factory=lambda: [30, 40])
    val_every: int = 500
    # output
    out: str = "runs/train"
    log_every: int = 20
    checkpoint_every: int = 250

    @classmethod
    def load(cls, path: "os.PathLike[str] | str") -> "TrainConfig":
        p = Path(path)
        if not p.is_file():
            raise FsvosInputError("no such config file", os.fspath(p))
        text = p.read_text()
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text) or {}
            else:
                import tomllib

                raw = tomllib.loads(text)
        except ModuleNotFoundError as exc:
            raise FsvosInputError(f"reading this config needs the '{exc.name}' package", os.fspath(p)) from None
        except Exception as exc:
            raise FsvosInputError(f"not a valid config file ({exc})", os.fspath(p)) from None
        flat: Dict[str, Any] = {}
        for key, value in raw.items():  # sections are only for readability
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - names)
        if unknown:
            raise FsvosInputError(f"unknown settings {unknown}", os.fspath(p))
        cfg = cls(**flat)
        if cfg.arch not in ("compact", "xravos"):
            raise FsvosInputError(f"arch must be 'compact' or 'xravos', not {cfg.arch!r}", os.fspath(p))
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)
