"""``fsvos bench``: speed and memory of propagation, several configurations in one run.

For each configuration a fresh process loads the model, warms up on a few
frames, then propagates a synthetic cine forward from frame 0 and reports
frames/s of the propagation alone (model loaded, warm), seconds per frame in
encode (key + value encoders) / match (affinity + readout) / decode, the share
of the frame time spent in matching + readout on the frames matched against
exactly 8 memory frames (``--share-at`` to change), and the process's peak
resident memory.  Configurations are written
``MATCHING[-REFERENCE]:kK:rR``, e.g. ``global:r6``, ``local-fixed:k15:r6``,
``local-similarity:k7:r1``.  With ``--repeat N`` each configuration runs in N fresh
processes and the table shows the median of each figure and the range of frames/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..errors import FsvosInputError
from ._engine_options import add_engine_options

DEFAULT_CONFIGS = ("global:r1,global:r6,local-fixed:k7:r1,local-fixed:k7:r6,local-fixed:k15:r1,local-fixed:k15:r6,"
                   "local-similarity:k7:r1,local-similarity:k7:r6,local-similarity:k15:r1,local-similarity:k15:r6")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="frames/s, per-stage time and peak memory of propagation",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("--size", type=int, default=512, help="frame size in pixels (default: 512)")
    p.add_argument("--frames", type=int, default=60, help="frames in the cine (default: 60)")
    p.add_argument("--objects", type=int, default=3, help="objects propagated (default: 3)")
    p.add_argument("--arch", choices=("default", "xravos", "compact", "compact-refine"), default="default",
                   help="without --weights: the bundled default model, or random weights of the paper's "
                        "(xravos), the compact architecture, or the compact one with a full-resolution refiner "
                        "(compact-refine); speed does not depend on weight values")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated configurations (see above)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--share-at", type=int, default=8, metavar="N",
                   help="report the matching share of frame time on frames with N memory frames (default: 8)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each configuration N times (N fresh processes) and report the median, with "
                        "the range of frames/s (default: 1); machines whose speed drifts need several")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_engine_options(p)
    p.set_defaults(func=run)


def parse_config(spec: str) -> Dict:
    parts = spec.strip().split(":")
    head = parts[0]
    if head == "global":
        cfg = {"matching": "global", "reference": "fixed"}
    elif head in ("local-fixed", "local-similarity"):
        cfg = {"matching": "local", "reference": head.split("-", 1)[1]}
    else:
        raise FsvosInputError(f"bad configuration {spec!r}: expected global, local-fixed or local-similarity first")
    for part in parts[1:]:
        try:
            if part.startswith("k"):
                cfg["window"] = int(part[1:])
            elif part.startswith("r"):
                cfg["mem_every"] = int(part[1:])
            else:
                raise ValueError
        except ValueError:
            raise FsvosInputError(f"bad configuration {spec!r}: {part!r} is not kN or rN") from None
    cfg["name"] = spec.strip()
    return cfg


def _make_cine(size: int, frames: int, objects: int, path: Path) -> None:
    """A synthetic cine of ``frames`` frames whose first frame holds ``objects`` objects.

    Cines longer than 240 frames are a 240-frame synthetic cine played back and forth (the
    generator's cost grows with length; memory and speed only depend on the frame count).
    """
    from ..synth import generate_case

    made = min(frames, 240)
    for seed in range(100):
        case = generate_case(7000 + seed, size=size, n_frames=made + 30,
                             split="devices" if objects > 3 else "all")
        # the cine starts at a frame a clinician would paint (or early enough to leave `made` frames)
        s = min(case.support_frame, case.n_frames - made)
        labels = np.where(case.labels[s:s + made] <= objects, case.labels[s:s + made], 0).astype(np.uint8)
        if len(case.objects) >= objects and labels.shape[0] == made and len(np.unique(labels[0])) == objects + 1:
            idx = np.arange(frames) % (2 * made - 2) if made > 1 else np.zeros(frames, int)
            idx = np.where(idx < made, idx, 2 * made - 2 - idx)  # 0, 1, .., made-1, made-2, .., 1, 0, 1, ..
            np.savez(path, frames=case.frames[s:s + made][idx], labels=labels[idx])
            return
    raise FsvosInputError(f"could not make a synthetic cine with {objects} objects")


def _child(args: argparse.Namespace) -> int:
    import resource
    import time

    import torch

    from ..inference.propagator import Propagator, working_shape
    from ..model import winograd_kernels
    from ..model.network import ARCHITECTURES, FSVOSNet, arch_name
    from ._engine_options import load_weights

    job = json.loads(args.child)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weights or args.arch == "default":
        model = load_weights(args.weights)
    else:
        torch.manual_seed(0)
        model = FSVOSNet(ARCHITECTURES[args.arch]).eval()
    data = np.load(job["cine"])
    frames = data["frames"]
    support = data["labels"][0].copy()  # the other frames' labels are not kept (262 MB at 1000 frames)
    p = Propagator(model, matching=job["matching"], reference=job["reference"], window=job.get("window", args.window),
                   top_k=args.top_k or None, mem_every=job.get("mem_every", args.mem_every),
                   precision=args.precision, device=args.device, max_memory_frames=args.max_memory,
                   batch_size=args.batch_size, work_size=args.work_size,
                   winograd=False if args.direct_conv else None)
    arch = arch_name(model.arch)
    del model  # the propagator runs its own inference copy (208 MB for the paper's network in fp32)
    p.propagate(frames[:4], {0: support}, directions=("forward",))  # warm-up
    t0 = time.perf_counter()
    r = p.propagate(frames, {0: support}, directions=("forward",))
    elapsed = time.perf_counter() - t0
    n = frames.shape[0] - 1
    stats = r.frame_stats
    at = stats[stats[:, 0] == args.share_at]
    share = float(at[:, 1].sum() / at[:, 2].sum()) if len(at) else None
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = {"name": job["name"], "fps": n / elapsed, "seconds": elapsed, "frames": int(frames.shape[0]),
           "encode_s": r.timings["encode"] / n, "match_s": r.timings["match"] / n, "decode_s": r.timings["decode"] / n,
           "match_share": share, "share_at": args.share_at, "share_frames": int(len(at)),
           "peak_rss_mb": peak_mb, "threads": torch.get_num_threads(), "precision": p.precision,
           "network_size": max(working_shape(frames.shape[1], frames.shape[2], p.work_size, p.enlarge)),
           "winograd_convs": p.winograd_convs, "winograd_compiled": winograd_kernels.available(),
           "selection": "int8-fused" if p.fused_int8 else p.selection, "model": arch}
    print(json.dumps(out))
    return 0


#: what the matching selects candidates on (Propagator.selection), as the bench header says it
_SELECTION = {"fp32": "float32 similarities", "bf16": "bf16 similarities", "int8": "int8 keys",
              "int8-fused": "int8 keys (products inside the selection loop, AVX-512 VNNI)"}


def run(args: argparse.Namespace) -> int:
    if args.child:
        return _child(args)
    configs = [parse_config(s) for s in args.configs.split(",") if s.strip()]
    if args.size < 32 or args.frames < 5 or args.objects < 1:
        raise FsvosInputError("--size >= 32, --frames >= 5 and --objects >= 1 are needed")
    if args.repeat < 1:
        raise FsvosInputError(f"--repeat must be >= 1, not {args.repeat}")
    results: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="fsvos-bench-") as tmp:
        cine = Path(tmp) / "cine.npz"
        _make_cine(args.size, args.frames, args.objects, cine)
        base = [sys.executable, "-m", "fsvos", "bench", "--arch", args.arch, "--precision", args.precision,
                "--device", args.device, "--top-k", str(args.top_k), "--max-memory", str(args.max_memory),
                "--threads", str(args.threads), "--share-at", str(args.share_at), "--window", str(args.window),
                "--mem-every", str(args.mem_every), "--work-size", str(args.work_size)]
        if args.direct_conv:
            base.append("--direct-conv")
        if args.weights:
            base += ["--weights", args.weights]
        if args.batch_size:
            base += ["--batch-size", str(args.batch_size)]
        for cfg in configs:
            job = dict(cfg, cine=str(cine))
            runs = []
            for _ in range(args.repeat):
                proc = subprocess.run(base + ["--child", json.dumps(job)], capture_output=True, text=True)
                if proc.returncode != 0:
                    msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                    raise FsvosInputError(f"configuration {cfg['name']}: {msg}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                if not args.json:
                    print(f"  {cfg['name']}: {runs[-1]['fps']:.2f} frames/s", file=sys.stderr, flush=True)
            results.append(_median_of_runs(runs))
    if args.json:
        print(json.dumps({"size": args.size, "frames": args.frames, "objects": args.objects, "results": results},
                         indent=2))
        return 0
    r0 = results[0]
    seen = r0.get("network_size", args.size)
    work = "" if seen == args.size else f" (network at {seen}x{seen}, --work-size)"
    selections = sorted({_SELECTION[r["selection"]] for r in results if "selection" in r})
    print(f"fsvos bench: {args.size}x{args.size}{work}, {args.frames} frames, {args.objects} objects, "
          f"model {r0['model']}, {r0['precision']}, {r0['threads']} threads, top-k {args.top_k}, "
          f"{r0.get('winograd_convs', 0)} Winograd convolutions"
          + (f" ({'compiled' if r0.get('winograd_compiled') else 'torch'} tile transforms)"
             if r0.get("winograd_convs") else "")
          + (f", candidates selected on {' / '.join(selections)}" if selections else ""))
    share_head = f"match %@{args.share_at}mem"
    span = args.repeat > 1
    print(f"{'configuration':<24} {'frames/s':>9}" + (f" {'range':>13}" if span else "")
          + f" {'encode s/f':>11} {'match s/f':>10} {'decode s/f':>11} {share_head:>14} {'peak RSS MB':>12}")
    for r in results:
        share = "n/a" if r["match_share"] is None else f"{100 * r['match_share']:.1f}"
        rng = f" {r['fps_min']:6.2f}-{r['fps_max']:<6.2f}" if span else ""
        print(f"{r['name']:<24} {r['fps']:9.2f}{rng} {r['encode_s']:11.4f} {r['match_s']:10.4f} "
              f"{r['decode_s']:11.4f} {share:>14} {r['peak_rss_mb']:12.0f}")
    if span:
        print(f"(median of {args.repeat} runs per configuration; range: slowest-fastest frames/s)")
    return 0


def _median_of_runs(runs: List[Dict]) -> Dict:
    """One result from repeated runs of a configuration: the median of every number (peak memory:
    the largest), the range of frames/s, and the runs' frames/s."""
    out = dict(runs[0])
    for key in ("fps", "seconds", "encode_s", "match_s", "decode_s", "match_share"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = float(np.median(values)) if values else None
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    fps = [r["fps"] for r in runs]
    out.update(fps_min=min(fps), fps_max=max(fps), fps_runs=fps, repeat=len(runs))
    return out
