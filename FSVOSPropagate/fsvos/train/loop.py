"""The training loop: Adam, optional bf16 autocast, gradient clipping, checkpoints, a CSV log."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..model.network import COMPACT_ARCH, XRAVOS_ARCH, FSVOSNet
from ..model.weights import load_model, save_checkpoint
from .config import TrainConfig
from .data import CinePool, collate
from .losses import BootstrappedCE
from .step import forward_triplet


def build_model(cfg: TrainConfig) -> FSVOSNet:
    if cfg.init:
        model = load_model(cfg.init)
    else:
        torch.manual_seed(cfg.seed)
        model = FSVOSNet(COMPACT_ARCH if cfg.arch == "compact" else XRAVOS_ARCH)
    return model.train()


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate at ``step``: ``lr`` divided by 10 at each step of ``lr_drops`` passed."""
    return cfg.lr * 0.1 ** sum(1 for s in cfg.lr_drops if step >= s)


def make_validation(cfg: TrainConfig):
    """Synthetic validation cines (seeds from ``val_seed``, never the training ``data_seed``)."""
    from ..synth import generate_case

    rng = np.random.default_rng(cfg.val_seed)
    cases = []
    for _ in range(cfg.val_cases):
        n = int(rng.integers(cfg.val_frames[0], cfg.val_frames[1] + 1))
        cases.append(generate_case(int(rng.integers(0, 2**31 - 1)), size=cfg.size, n_frames=n, split=cfg.split))
    return cases


def validate(model: FSVOSNet, cases, window: int) -> dict:
    """J&F (DAVIS) of propagating each case's support frame through the whole cine."""
    from ..inference.propagator import Propagator
    from ..metrics import evaluate_sequence, summarize

    was_training = model.training
    prop = Propagator(model, matching="local", reference="similarity", window=window, mem_every=6)
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


def train(cfg: TrainConfig, pool: Optional[CinePool] = None, log: Callable[[str], None] = print) -> Path:
    """Train per ``cfg``; returns the path of the final checkpoint (``<out>/final.pth``)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if pool is None:
        t0 = time.perf_counter()
        pool = CinePool.synthetic(cfg.cases, cfg.data_seed, size=cfg.size, frames=tuple(cfg.frames), split=cfg.split)
        log(f"generated {cfg.cases} synthetic cines in {time.perf_counter() - t0:.0f} s")
    val_cases = make_validation(cfg) if cfg.val_cases else []
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = BootstrappedCE(cfg.bootstrap_start, cfg.bootstrap_end, cfg.top_p)
    start = 0
    resume = out / "last.pth"
    if resume.exists():
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed from {resume} at step {start}")
    else:
        rng = np.random.default_rng(cfg.seed)
    log_path = out / "log.csv"
    new_log = not log_path.exists() or start == 0
    fh = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(fh)
    if new_log:
        writer.writerow(["step", "loss", "top_p", "iou", "seconds"])
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16"
                else torch.autocast("cpu", enabled=False))
    t_start = time.perf_counter()
    run_loss, run_iou, n_run = 0.0, 0.0, 0
    val_path = out / "val.csv"
    if val_cases and (start == 0 or not val_path.exists()):
        val_path.write_text("step,J,F,JF\n")
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        batch = [pool.sample(rng, cfg.crop, cfg.max_skip, cfg.objects) for _ in range(cfg.batch)]
        frames, labels, selector = collate(batch, cfg.objects)
        with autocast:
            logits = forward_triplet(model, frames, labels, selector, cfg.window)
        loss = 0.0
        p = 1.0
        for i, lg in enumerate(logits, start=1):
            li, p = loss_fn(lg.float(), labels[:, i], step)
            loss = loss + li
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        with torch.no_grad():
            pred = logits[-1].argmax(1)
            fg_t, fg_p = labels[:, 2] > 0, pred > 0
            inter = ((pred == labels[:, 2]) & fg_t).sum().item()
            union = (fg_t | fg_p).sum().item()
        run_loss += float(loss.detach())
        run_iou += inter / max(union, 1)
        n_run += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.perf_counter() - t_start
            writer.writerow([step + 1, f"{run_loss / n_run:.4f}", f"{p:.3f}", f"{run_iou / n_run:.4f}", f"{el:.0f}"])
            fh.flush()
            log(f"step {step + 1}/{cfg.steps} loss {run_loss / n_run:.4f} iou {run_iou / n_run:.3f} "
                f"({el:.0f} s)")
            run_loss, run_iou, n_run = 0.0, 0.0, 0
        if val_cases and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps):
            t_val = time.perf_counter()
            res = validate(model, val_cases, cfg.window)
            with open(val_path, "a") as vf:
                vf.write(f"{step + 1},{res['J']:.4f},{res['F']:.4f},{res['JF']:.4f}\n")
            log(f"validation at step {step + 1}: J&F {100 * res['JF']:.1f} (J {100 * res['J']:.1f}, "
                f"F {100 * res['F']:.1f}) on {len(val_cases)} cines ({time.perf_counter() - t_val:.0f} s)")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                     "rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state()}
            tmp = out / "last.pth.partial"
            torch.save(state, tmp)
            os.replace(tmp, resume)
    fh.close()
    final = out / "final.pth"
    save_checkpoint(model.eval(), final, half=True,
                    meta={"trained_with": "fsvos train", "config": cfg.to_dict(), "steps": cfg.steps})
    return final
