"""The training loop: Adam, optional bf16 autocast, gradient clipping, checkpoints, a CSV log,
a progress bar, and DistributedDataParallel under ``torchrun``.

``<out>/last.pth`` (resume state): ``model``, ``optimizer``, ``step``, ``rng`` (NumPy data
stream, JSON), ``torch_rng``; under torchrun also ``rng_ranks``/``torch_rng_ranks`` (one per
process); with the contrastive loss also ``heads``/``heads_optimizer`` (its projection head).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

from ..errors import FsvosInputError
from ..model.network import ARCHITECTURES, FSVOSNet
from ..model.weights import load_model, save_checkpoint
from .config import TrainConfig
from .data import collate


def build_model(cfg: TrainConfig) -> Tuple[FSVOSNet, List[str]]:
    """The network to train and the names of the parameters that ``init`` did not have (a refiner
    added to weights without one: it starts as the identity, so the network starts as ``init``)."""
    if not cfg.init:
        torch.manual_seed(cfg.seed)
        return FSVOSNet(replace(ARCHITECTURES[cfg.arch], refine_dim=cfg.refine_dim or 0)).train(), []
    model = load_model(cfg.init)
    if cfg.refine_dim is None or cfg.refine_dim == model.arch.refine_dim:
        return model.train(), []
    if model.arch.refine_dim:
        raise FsvosInputError(f"refine_dim {cfg.refine_dim} differs from the refiner of these weights "
                              f"({model.arch.refine_dim} channels)", cfg.init)
    torch.manual_seed(cfg.seed)
    grown = FSVOSNet(replace(model.arch, refine_dim=cfg.refine_dim))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(n.startswith("refiner.") for n in missing), (missing, unexpected)
    grown.fsvos_info = model.fsvos_info
    return grown.train(), list(missing)


def param_groups(net: FSVOSNet, new_names: List[str]) -> List[dict]:
    """Adam's parameter groups: the parameters ``init`` had (learning rate ``lr``), then, when there
    are any, the new ones (``lr_new``; group key "new")."""
    new = set(new_names)
    groups = [{"params": [p for n, p in net.named_parameters() if n not in new], "new": False}]
    if new:
        groups.append({"params": [p for n, p in net.named_parameters() if n in new], "new": True})
    return groups


def lr_at(cfg: TrainConfig, step: int, new: bool = False) -> float:
    """Learning rate at ``step``: ``lr`` (``lr_new`` for the parameters that ``init`` lacked, when
    set) divided by 10 at each step of ``lr_drops`` passed."""
    base = cfg.lr_new if new and cfg.lr_new > 0 else cfg.lr
    return base * 0.1 ** sum(1 for s in cfg.lr_drops if step >= s)


def make_validation(cfg: TrainConfig):
    """Synthetic validation cines (seeds from ``val_seed``, never the training ``data_seed``)."""
    from ..synth import generate_case

    rng = np.random.default_rng(cfg.val_seed)
    cases = []
    for _ in range(cfg.val_cases):
        n = int(rng.integers(cfg.val_frames[0], cfg.val_frames[1] + 1))
        cases.append(generate_case(int(rng.integers(0, 2**31 - 1)), size=cfg.size, n_frames=n, split=cfg.split))
    return cases


def validate(model: FSVOSNet, cases, window: int, device="cpu") -> dict:
    """J&F (DAVIS) of propagating each case's support frame through the whole cine."""
    from ..inference.propagator import Propagator
    from ..metrics import evaluate_sequence, summarize

    was_training = model.training
    prop = Propagator(model, matching="local", reference="similarity", window=window, mem_every=6,
                      device=str(device))
    results = []
    try:
        for case in cases:
            sup = case.labels[case.support_frame]
            present = [int(v) for v in np.unique(sup) if v]
            pred = prop.propagate(case.frames, {case.support_frame: sup}).labels
            results.append(evaluate_sequence(pred, case.labels, present, exclude_frames=[case.support_frame]))
    finally:
        model.train(was_training)
    return summarize(results)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _open_log(path: Path, columns, new: bool):
    """CSV log; when appending to an older log its own header is kept (extra columns are dropped)."""
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), None)
        if header:
            columns = header
    fh = open(path, "w" if new else "a", newline="")
    writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
    if new:
        writer.writeheader()
    return fh, writer


def _rng_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def train(cfg: TrainConfig, pool=None, log: Callable[[str], None] = print, return_model: bool = False):
    """Train per ``cfg``; returns the path of the final checkpoint (``<out>/final.pth``), with
    ``return_model`` (path, the trained network in eval mode).

    ``pool``: a :class:`CinePool`/:class:`StaticPool` to draw samples from (default: built from
    ``cfg.source``).  Under ``torchrun`` every process trains on its own samples through
    DistributedDataParallel and only rank 0 writes logs, checkpoints and runs validation.
    """
    from . import distributed

    cfg.check()
    info = distributed.setup(cfg.device)
    try:
        final, net = _train(cfg, pool, log if info.main else (lambda msg: None), info)
    finally:
        distributed.cleanup(info)
    return (final, net) if return_model else final


def _train(cfg: TrainConfig, pool, log: Callable[[str], None], info):
    from tqdm import tqdm

    from . import distributed
    from .data import collate_flags
    from .objective import Objective
    from .sources import build_pool

    out = Path(cfg.out)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resume = out / "last.pth"
    # every process reads the checkpoint that rank 0 sees (a shared folder is assumed under torchrun)
    state = None
    if distributed.broadcast(info, resume.exists()):
        state = torch.load(resume, map_location="cpu", weights_only=True)
    start = int(state["step"]) if state is not None else 0
    if pool is None:
        pool = build_pool(cfg, log, at_step=start)
    refresh_every = cfg.refresh_every if getattr(pool, "synth", None) is not None else 0
    val_cases = make_validation(cfg) if cfg.val_cases and info.main else []
    device = info.device
    net, new_names = build_model(cfg)
    if cfg.contrastive > 0:
        torch.manual_seed(cfg.seed + 1)  # the projection head's initial weights
    objective = Objective(net, cfg).to(device)
    opt = torch.optim.Adam(param_groups(net, new_names), lr=cfg.lr, weight_decay=cfg.weight_decay)
    heads = objective.heads()
    opt_heads = torch.optim.Adam(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) \
        if heads is not None else None
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if heads is not None:
            if "heads" in state:
                heads.load_state_dict(state["heads"])
                opt_heads.load_state_dict(state["heads_optimizer"])
            else:
                log("the checkpoint has no contrastive projection head: it starts fresh")
        rng = np.random.default_rng()
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == info.world:
            rng.bit_generator.state = json.loads(ranks[info.rank])
            torch.set_rng_state(state["torch_rng_ranks"][info.rank])
        elif info.world == 1:
            rng.bit_generator.state = json.loads(state["rng"])
            torch.set_rng_state(state["torch_rng"])
        else:  # another number of processes than the checkpoint's: new streams, still one per rank
            rng = np.random.default_rng([cfg.seed, info.rank, start])
            torch.manual_seed(cfg.seed * 1000 + info.rank + start)
            log(f"resuming with {info.world} processes from a checkpoint of another process count: "
                "new random streams")
        log(f"resumed from {resume} at step {start}")
    else:
        # one data stream per process; a single process keeps the original stream
        rng = np.random.default_rng(cfg.seed if info.world == 1 else [cfg.seed, info.rank])
    model = objective
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    aux_names = [n for n in ("jaccard", "contrastive", "temporal", "consistency") if getattr(cfg, n) > 0]
    columns = ["step", "loss", "top_p", "iou", "seconds"] + [f"loss_{n}" for n in aux_names]
    log_path = out / "log.csv"
    fh = writer = None
    if info.main:
        fh, writer = _open_log(log_path, columns, new=not log_path.exists() or start == 0)
    autocast = _autocast(cfg, device)
    unlabelled_targets = cfg.consistency > 0
    t_start = time.perf_counter()
    run: dict = {}
    n_run = 0
    val_path = out / "val.csv"
    if val_cases and (start == 0 or not val_path.exists()):
        val_path.write_text("step,J,F,JF\n")
    bar = tqdm(total=cfg.steps, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=None if info.main else True, desc="fsvos train")
    try:
        for step in range(start, cfg.steps):
            for o in (opt, opt_heads):
                for group in (o.param_groups if o is not None else []):
                    group["lr"] = lr_at(cfg, step, group.get("new", False))
            if refresh_every and step > 0 and step % refresh_every == 0:
                t_refresh = time.perf_counter()
                slots = pool.refresh(step // refresh_every)
                log(f"step {step}: {len(slots)} new synthetic cines in the pool "
                    f"({time.perf_counter() - t_refresh:.0f} s)")
            batch = [pool.sample(rng, cfg.crop, cfg.max_skip, cfg.objects, unlabelled_targets=unlabelled_targets)
                     for _ in range(cfg.batch)]
            frames, labels, selector = collate(batch, cfg.objects)
            labelled, gap = collate_flags(batch)
            frames, labels, selector = frames.to(device), labels.to(device), selector.to(device)
            labelled, gap = labelled.to(device), gap.to(device)
            loss, parts, logits = model(frames, labels, selector, labelled, gap, step, autocast=autocast)
            opt.zero_grad(set_to_none=True)
            if opt_heads is not None:
                opt_heads.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
            opt.step()
            if opt_heads is not None:
                torch.nn.utils.clip_grad_norm_(heads.parameters(), cfg.clip)
                opt_heads.step()
            with torch.no_grad():
                rows = labelled[:, 2]
                pred = logits[-1][rows].argmax(1)
                truth = labels[rows, 2]
                fg_t, fg_p = truth > 0, pred > 0
                inter = ((pred == truth) & fg_t).sum().item()
                union = (fg_t | fg_p).sum().item()
            run["loss"] = run.get("loss", 0.0) + float(loss.detach())
            run["iou"] = run.get("iou", 0.0) + inter / max(union, 1)
            for n in aux_names:
                run[n] = run.get(n, 0.0) + parts.get(n, 0.0)
            n_run += 1
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                el = time.perf_counter() - t_start
                mean = {k: v / n_run for k, v in run.items()}
                if writer is not None:
                    row = {"step": step + 1, "loss": f"{mean['loss']:.4f}", "top_p": f"{parts['top_p']:.3f}",
                           "iou": f"{mean['iou']:.4f}", "seconds": f"{el:.0f}"}
                    row.update({f"loss_{n}": f"{mean[n]:.4f}" for n in aux_names})
                    writer.writerow(row)
                    fh.flush()
                extra = "".join(f" {n} {mean[n]:.4f}" for n in aux_names)
                log(f"step {step + 1}/{cfg.steps} loss {mean['loss']:.4f} iou {mean['iou']:.3f}{extra} "
                    f"({el:.0f} s)")
                bar.set_postfix(loss=f"{mean['loss']:.4f}", iou=f"{mean['iou']:.3f}")
                run, n_run = {}, 0
            validating = cfg.val_cases > 0 and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps)
            if validating and val_cases:
                t_val = time.perf_counter()
                res = validate(net, val_cases, cfg.window, device=device)
                with open(val_path, "a") as vf:
                    vf.write(f"{step + 1},{res['J']:.4f},{res['F']:.4f},{res['JF']:.4f}\n")
                log(f"validation at step {step + 1}: J&F {100 * res['JF']:.1f} (J {100 * res['J']:.1f}, "
                    f"F {100 * res['F']:.1f}) on {len(val_cases)} cines ({time.perf_counter() - t_val:.0f} s)")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                streams = distributed.gather(info, (_rng_state(rng), torch.get_rng_state()))
                if info.main:
                    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                             "rng": _rng_state(rng), "torch_rng": torch.get_rng_state()}
                    if info.distributed:
                        state["rng_ranks"] = [s[0] for s in streams]
                        state["torch_rng_ranks"] = [s[1] for s in streams]
                    if heads is not None:
                        state["heads"] = heads.state_dict()
                        state["heads_optimizer"] = opt_heads.state_dict()
                    tmp = out / "last.pth.partial"
                    torch.save(state, tmp)
                    os.replace(tmp, resume)
            if validating:
                distributed.barrier(info)  # the others wait while rank 0 validates
    finally:
        bar.close()
        if fh is not None:
            fh.close()
    final = out / "final.pth"
    if info.main:
        save_checkpoint(net.eval(), final, half=True,
                        meta={"trained_with": "fsvos train", "config": cfg.to_dict(), "steps": cfg.steps,
                              # the frame size it learnt at: synthetic cines are made at cfg.size,
                              # user images and cines are used at their own size (native)
                              "work_size": cfg.size if cfg.source == "synth" else None})
    else:
        net.eval()
    distributed.barrier(info)
    return final, net
