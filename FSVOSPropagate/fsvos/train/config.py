"""Training configuration (TOML or YAML file -> :class:`TrainConfig`).

Sections (``[model]``, ``[data]``, ``[train]``, ``[loss]``, ...) are only for
readability: every key is a field of :class:`TrainConfig` and may sit in any
section, but only once.  ``data`` is a list (TOML ``[[data.data]]`` tables or
strings); its relative paths are resolved against the config file's folder, and so is
a relative ``init`` found there (else it is relative to the current folder, as ``out``).
Every error names the file and the key.
"""

from __future__ import annotations

import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import FsvosInputError

SOURCES = ("synth", "static", "cines")


@dataclass
class TrainConfig:
    # model
    arch: str = "compact"  # "compact", "xravos"
    init: Optional[str] = None  # weights to start from (any file load_model reads)
    # channels of the full-resolution refiner (fsvos.model.refine; 0 = none); unset: as init's weights
    # (none without init); weights without one (init) get a new refiner that starts as the identity
    refine_dim: Optional[int] = None
    # data
    source: str = "synth"  # "synth": synthetic cines on the fly; "static": deformed single images; "cines": user cines
    data: List[Any] = field(default_factory=list)  # user data entries for "static"/"cines" (see fsvos.train.sources)
    cases: int = 24
    size: int = 512
    frames: List[int] = field(default_factory=lambda: [30, 60])
    split: str = "all"
    data_seed: int = 1000
    refresh_every: int = 0  # "synth": every N steps new cines replace part of the pool (0 = a fixed pool)
    refresh_cases: int = 0  # cines replaced per refresh (0 = a quarter of cases)
    crop: int = 192
    max_skip: int = 5
    objects: int = 3
    static_elastic: float = 0.02  # "static": elastic displacement amplitude, fraction of the image side
    # intensity augmentation (fsvos.train.data.Intensity): log-normal sigmas of gamma and contrast,
    # sigma of brightness, largest noise sigma, on frames scaled to [0, 1]
    gamma_sigma: float = 0.25
    contrast_sigma: float = 0.2
    brightness_sigma: float = 0.05
    noise_sigma: float = 0.02
    # optimisation
    steps: int = 3000
    batch: int = 4  # per process (the effective batch under torchrun is batch x processes)
    lr: float = 1e-4
    lr_new: float = 0.0  # learning rate of modules that init lacked (a new refiner); 0 = lr
    weight_decay: float = 1e-7
    clip: float = 1.0
    window: int = 15
    precision: str = "fp32"  # "fp32" or "bf16" autocast
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N" (under torchrun with CUDA: one GPU per process)
    seed: int = 0
    threads: int = 0  # 0 = torch default
    lr_drops: List[int] = field(default_factory=list)  # steps at which the learning rate is divided by 10
    bootstrap_start: int = 500
    bootstrap_end: int = 2000
    top_p: float = 0.15
    # losses: weights (0 = off) and their settings
    ce: float = 1.0  # bootstrapped cross-entropy
    contrastive: float = 0.0  # object-aware spatio-temporal contrastive loss (paper: 0.01)
    contrastive_tau: float = 0.1
    contrastive_dim: int = 128
    contrastive_min_fraction: float = 0.25
    contrastive_max_per_object: int = 0  # 0 = no cap on the balanced sample size n of Eq. 11
    temporal: float = 0.0  # TCMN temporal contrastive loss on memory values
    temporal_eps: float = 0.01
    consistency: float = 0.0  # neighbouring-frame consistency (frames without labels)
    consistency_pool: int = 4
    consistency_max_gap: int = 2
    jaccard: float = 0.0  # soft IoU of each object (frames with labels)
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
        spath = os.fspath(p)
        if not p.is_file():
            raise FsvosInputError("no such config file", spath)
        text = p.read_text()
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text)
                raw = {} if raw is None else raw
            else:
                import tomllib

                raw = tomllib.loads(text)
        except ModuleNotFoundError as exc:
            raise FsvosInputError(f"reading this config needs the '{exc.name}' package", spath) from None
        except Exception as exc:
            raise FsvosInputError(f"not a valid config file ({' '.join(str(exc).split())})", spath) from None
        if not isinstance(raw, dict):
            raise FsvosInputError("a config file must hold keys and sections, not a single value", spath)
        flat: Dict[str, Any] = {}
        where: Dict[str, str] = {}
        for key, value in raw.items():  # sections are only for readability
            items = value.items() if isinstance(value, dict) else [(key, value)]
            section = f"[{key}] " if isinstance(value, dict) else ""
            for k, v in items:
                if k in flat:
                    first, second = where[k] or "top level", section.strip() or "top level"
                    raise FsvosInputError(f"key '{k}' is set twice ({first} and {second})", spath)
                flat[k], where[k] = v, section.strip()
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - names)
        if unknown:
            k = unknown[0]
            raise FsvosInputError(f"unknown key '{k}'" + (f" in {where[k]}" if where[k] else "")
                                  + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""), spath)
        yaml_numbers = p.suffix.lower() in (".yaml", ".yml")
        for k, v in flat.items():
            flat[k] = _coerce(cls, k, v, spath, where[k], yaml_numbers)
        if "data" in flat:
            flat["data"] = [_resolve_entry(e, p.parent, spath) for e in flat["data"]]
        if flat.get("init") and (p.parent / os.path.expanduser(flat["init"])).exists():
            flat["init"] = _absolute(flat["init"], p.parent)  # else as before: relative to the current folder
        cfg = cls(**flat)
        cfg.check(spath)
        return cfg

    def check(self, path: Optional[str] = None) -> None:
        """Raise FsvosInputError naming ``path`` and the key for any value out of range."""

        def bad(key, problem):
            raise FsvosInputError(f"key '{key}': {problem}", path)

        if self.arch not in ("compact", "xravos"):
            bad("arch", f"must be 'compact' or 'xravos', not {self.arch!r}")
        if self.source not in SOURCES:
            bad("source", f"must be one of {', '.join(repr(s) for s in SOURCES)}, not {self.source!r}")
        if self.source == "cines" and not self.data:
            bad("data", "source 'cines' needs at least one entry (cine and labels files)")
        if self.source == "synth" and self.data:
            bad("data", "is only read when source is 'static' or 'cines'")
        if (self.refresh_every or self.refresh_cases) and self.source != "synth":
            bad("refresh_every", "refreshing the pool needs source 'synth'")
        if self.refresh_cases > self.cases:
            bad("refresh_cases", f"must be <= cases ({self.cases}), not {self.refresh_cases}")
        if self.precision not in ("fp32", "bf16"):
            bad("precision", f"must be 'fp32' or 'bf16', not {self.precision!r}")
        if not (self.device in ("cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            bad("device", f"must be 'cpu', 'cuda' or 'cuda:N', not {self.device!r}")
        for key in ("cases", "size", "crop", "max_skip", "objects", "steps", "batch", "log_every",
                    "checkpoint_every", "val_every", "contrastive_dim", "consistency_pool", "consistency_max_gap"):
            if getattr(self, key) < 1:
                bad(key, f"must be >= 1, not {getattr(self, key)}")
        if self.window < 1 or self.window % 2 == 0:
            bad("window", f"must be an odd number >= 1, not {self.window}")
        for key in ("frames", "val_frames"):
            v = getattr(self, key)
            if len(v) != 2 or not 3 <= v[0] <= v[1]:
                bad(key, f"must be [min, max] frame counts with 3 <= min <= max, not {v}")
        for key in ("lr", "weight_decay", "clip", "ce", "contrastive", "temporal", "consistency", "jaccard", "static_elastic",
                    "temporal_eps", "val_cases", "threads", "contrastive_max_per_object", "refresh_every",
                    "refresh_cases", "lr_new", "gamma_sigma", "contrast_sigma", "brightness_sigma", "noise_sigma"):
            if getattr(self, key) < 0:
                bad(key, f"must be >= 0, not {getattr(self, key)}")
        if self.refine_dim is not None and self.refine_dim < 0:
            bad("refine_dim", f"must be >= 0, not {self.refine_dim}")
        if self.contrastive_tau <= 0:
            bad("contrastive_tau", f"must be > 0, not {self.contrastive_tau}")
        if not 0 < self.contrastive_min_fraction <= 1:
            bad("contrastive_min_fraction", f"must be in (0, 1], not {self.contrastive_min_fraction}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], not {self.top_p}")
        if self.bootstrap_end <= self.bootstrap_start:
            bad("bootstrap_end", f"must be > bootstrap_start ({self.bootstrap_start}), not {self.bootstrap_end}")
        if self.ce == self.contrastive == self.temporal == self.consistency == self.jaccard == 0:
            bad("ce", "all loss weights are 0: nothing to train")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(cls, key: str, value: Any, path: str, section: str, yaml_numbers: bool = False) -> Any:
    """Check ``value`` against the type of field ``key``; ints are accepted where floats are, and in
    YAML also strings such as ``1e-5`` (YAML 1.1 reads a float without a dot as a string)."""
    hint = _HINTS[key]
    where = f"key '{key}'" + (f" in {section}" if section else "")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if value is None:
            return None
        hint = [a for a in args if a is not type(None)][0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(expected):
        raise FsvosInputError(f"{where} must be {expected}, not {value!r}", path)

    if hint is bool:
        return value if isinstance(value, bool) else fail("true or false")
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail("a whole number")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if yaml_numbers and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        fail("a number")
    if hint is str:
        return value if isinstance(value, str) else fail("a string")
    if origin in (list, List):
        if not isinstance(value, list):
            fail("a list")
        if args and args[0] is int and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            fail("a list of whole numbers")
        return list(value)
    return value


_ENTRY_KEYS = {"cine", "labels", "frames", "image", "mask"}


def _absolute(s: str, base: Path) -> str:
    s = os.path.expanduser(s)
    return s if os.path.isabs(s) else os.fspath(base / s)


def _resolve_entry(entry: Any, base: Path, path: str) -> Any:
    """A ``data`` entry with its relative paths made absolute against ``base`` (the config's folder)."""

    def absolute(s: str) -> str:
        return _absolute(s, base)

    if isinstance(entry, str):
        return absolute(entry)
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        if unknown:
            known = ", ".join(sorted(_ENTRY_KEYS))
            raise FsvosInputError(f"key 'data': unknown entry key '{unknown[0]}' (known: {known})", path)
        return {k: absolute(v) if k != "frames" and isinstance(v, str) else v for k, v in entry.items()}
    raise FsvosInputError(f"key 'data': entries must be paths or tables, not {entry!r}", path)
