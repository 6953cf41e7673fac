"""Loading and saving weights.

Three kinds of file load with :func:`load_model`:

* a plain ``state_dict`` laid out as XRAVOS/STCN (the paper's released
  ``xravos_sw13_s3_125000.pth`` / ``xravos_sw15_s3_125000.pth``, STCN's
  ``stcn.pth``): the XRAVOS architecture, ``strict=True``.  A stage-0 (single
  object) value encoder with 4 input channels is widened with a zero channel, as
  the public evaluation script does; a DDP ``module.`` prefix is removed; a
  training checkpoint ``{"network": state_dict, ...}`` is unwrapped;
* an fsvos checkpoint written by :func:`save_checkpoint`: a dict with the
  architecture settings (so compact variants load the same way), the state_dict,
  a SHA-256 of the tensors (checked at load) and free-form metadata;
* ``None``: the bundled default model.

Every file is read with ``torch.load(..., weights_only=True)``: no pickled code
is ever executed.  The SHA-256 of the file is computed and kept on the model
(``model.fsvos_info["sha256"]``) so that runs can be traced to their weights.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from ..errors import FsvosInputError
from .network import COMPACT_REFINE_ARCH, XRAVOS_ARCH, ArchConfig, FSVOSNet

CHECKPOINT_FORMAT = "fsvos-checkpoint"
CHECKPOINT_VERSION = 1

#: Where the bundled default weights live (FSVOSPropagate/Resources/Weights/).
BUNDLED_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Weights"
BUNDLED_DEFAULT_NAME = "fsvos_default.pth"
#: SHA-256 of the bundled default weights file (checked at load).
BUNDLED_DEFAULT_SHA256: Optional[str] = "953ef91daf6f2a615d46d139f26334f44624b8ca8a9c208142bfbf10c1caf8c8"

UNTRAINED_WARNING = (
    "NO TRAINED DEFAULT WEIGHTS ARE BUNDLED YET: the default model is randomly initialised and its "
    "segmentations are meaningless. Pass --weights with the paper's released checkpoint "
    "(see model_weights.md)."
)


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state_dict's tensors (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(model: FSVOSNet, path: Union[str, os.PathLike], *, half: bool = False,
                    meta: Optional[Dict[str, Any]] = None) -> str:
    """Write an fsvos checkpoint (architecture + state_dict + tensor SHA-256); returns the file's SHA-256.

    half: store floating tensors as float16 (halves the size; loaded back as float32).
    Written to a temporary name first, then renamed.
    """
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
          for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": model.arch.to_dict(),
        "state_dict": sd,
        "state_dict_sha256": state_dict_sha256(sd),
        "meta": dict(meta or {}),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def _read(path: Path) -> Any:
    spath = os.fspath(path)
    if not path.exists():
        raise FsvosInputError("weights file not found", spath)
    if path.is_dir():
        raise FsvosInputError("is a folder, expected a weights file (.pth)", spath)
    try:
        return torch.load(spath, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FsvosInputError(f"not a readable PyTorch weights file, truncated or corrupt? ({msg[:160]})",
                              spath) from None


def _normalise_plain_state_dict(sd: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        out[k[len("module."):] if k.startswith("module.") else k] = v
    w = out.get("value_encoder.conv1.weight")
    if w is not None and w.dim() == 4 and w.shape[1] == 4:  # stage-0 single-object value encoder
        out["value_encoder.conv1.weight"] = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)
    return out


def _load_state(model: FSVOSNet, sd: Mapping[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of wrong shape (first: {wrong[0]})")
        raise FsvosInputError("weights do not match the XRAVOS/STCN layout: " + "; ".join(parts), path)
    sd = {k: v.to(own[k].dtype) if own[k].is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)


def _untrained_default() -> FSVOSNet:
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = FSVOSNet(COMPACT_REFINE_ARCH)  # the bundled default's architecture
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def load_model(path: Optional[Union[str, os.PathLike]] = None) -> FSVOSNet:
    """Load a network for :class:`fsvos.Propagator`.

    path: an XRAVOS/STCN state_dict, an fsvos checkpoint, or None for the bundled default.

    The model is returned in eval mode on the CPU, float32.  ``model.fsvos_info``
    holds {"source", "sha256", "kind", "trained", "meta"}.  Bad files raise
    :class:`FsvosInputError` naming the file and the problem.
    """
    if path is None:
        bundled = Path(os.environ.get("FSVOS_DEFAULT_WEIGHTS", BUNDLED_WEIGHTS_DIR / BUNDLED_DEFAULT_NAME))
        if bundled.exists():
            model = load_model(bundled)
            if BUNDLED_DEFAULT_SHA256 and "FSVOS_DEFAULT_WEIGHTS" not in os.environ \
                    and model.fsvos_info["sha256"] != BUNDLED_DEFAULT_SHA256:
                raise FsvosInputError(
                    f"bundled weights SHA-256 {model.fsvos_info['sha256']} differs from the expected "
                    f"{BUNDLED_DEFAULT_SHA256}; the file is damaged", bundled)
            model.fsvos_info["kind"] = "bundled-default"
            meta = model.fsvos_info["meta"]
            if meta.get("preliminary"):
                warnings.warn(f"the bundled default weights are PRELIMINARY ({meta.get('note', '')}; J&F "
                              f"{meta.get('synthetic_val_JF')} on synthetic validation): check every result, "
                              "or use the paper's checkpoint with --weights (see model_weights.md)", stacklevel=2)
            return model
        warnings.warn(UNTRAINED_WARNING, stacklevel=2)
        model = _untrained_default()
        model.fsvos_info = {"source": None, "sha256": None, "kind": "untrained-default", "trained": False,
                            "meta": {}}
        return model.eval()

    p = Path(path)
    spath = os.fspath(p)
    obj = _read(p)
    if not isinstance(obj, Mapping):
        raise FsvosInputError(f"expected a state_dict or an fsvos checkpoint, found a {type(obj).__name__}",
                              spath)
    meta: Dict[str, Any] = {}
    if obj.get("format") == CHECKPOINT_FORMAT:
        try:
            arch = ArchConfig.from_dict(obj["arch"])
            sd = dict(obj["state_dict"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FsvosInputError(f"damaged fsvos checkpoint ({exc})", spath) from None
        expected = obj.get("state_dict_sha256")
        if expected and state_dict_sha256(sd) != expected:
            raise FsvosInputError("tensor SHA-256 does not match the one recorded in the checkpoint; "
                                  "the file is damaged", spath)
        meta = dict(obj.get("meta") or {})
        kind = "fsvos"
    else:
        if "network" in obj and isinstance(obj["network"], Mapping):
            obj = obj["network"]
        elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        sd = _normalise_plain_state_dict(obj)
        if not sd:
            raise FsvosInputError("contains no tensors; not a weights file", spath)
        arch = XRAVOS_ARCH
        kind = "xravos-state-dict"
    model = FSVOSNet(arch)
    _load_state(model, sd, spath)
    model.fsvos_info = {"source": spath, "sha256": file_sha256(p), "kind": kind, "trained": True, "meta": meta}
    return model.eval()


def describe(model: FSVOSNet) -> str:
    """One line naming the weights a model came from (for logs and outputs)."""
    info = getattr(model, "fsvos_info", {}) or {}
    if not info.get("trained", True):
        return "untrained default model (random weights)"
    src = info.get("source") or "in-memory model"
    sha = info.get("sha256")
    return f"{info.get('kind', 'model')} {src}" + (f" sha256={sha}" if sha else "")


def average_models(paths: Sequence[Union[str, os.PathLike]]) -> FSVOSNet:
    """The uniform average of the weights of several models of one architecture ("model soup",
    Wortsman et al. 2022): useful for models fine-tuned from the same weights on different data.

    paths: two or more files :func:`load_model` reads.  Floating tensors (parameters and
    batch-norm statistics) are averaged in float32; integer ones (``num_batches_tracked``) are
    the first model's.  The result is in eval mode, float32; ``fsvos_info["meta"]["averaged_from"]``
    lists the inputs (file, SHA-256, steps).  Raises :class:`FsvosInputError` when fewer than two
    files are given or their architectures differ.
    """
    if len(paths) < 2:
        raise FsvosInputError(f"averaging needs at least two weights files, got {len(paths)}")
    models = [load_model(p) for p in paths]
    first = models[0]
    for p, m in zip(paths[1:], models[1:]):
        if m.arch != first.arch:
            raise FsvosInputError(f"architecture differs from that of {os.fspath(paths[0])} "
                                  f"({m.arch.to_dict()} vs {first.arch.to_dict()})", p)
    states = [m.state_dict() for m in models]
    avg = {}
    for name, value in states[0].items():
        if value.is_floating_point():
            avg[name] = torch.stack([sd[name].float() for sd in states]).mean(dim=0).to(value.dtype)
        else:
            avg[name] = value
    model = FSVOSNet(first.arch)
    model.load_state_dict(avg, strict=True)
    sources = [{"file": os.fspath(p), "sha256": m.fsvos_info["sha256"], "steps": m.fsvos_info["meta"].get("steps")}
               for p, m in zip(paths, models)]
    model.fsvos_info = {"source": None, "sha256": None, "kind": "fsvos", "trained": True,
                        "meta": {"averaged_from": sources}}
    return model.eval()


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
