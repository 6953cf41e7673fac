"""``fsvos eval DATASET``: accuracy of the engine (or the optical-flow anchor) on labelled cines.

DATASET is a folder written by ``fsvos synth`` (``dataset.json`` and ``case_*``
folders with ``cine.dcm``, ``labels.npz``, ``support.png``, ``meta.json``).
Every case is propagated from its support frame; J, F, J&F (DAVIS 2017
definitions) and Dice are computed per object over all frames but the support,
then averaged over all objects of all cines.  Writes ``results.csv``,
``results.json`` and one overlay contact sheet per case into ``--out``
(default ``DATASET/eval-<method>``).

``--method bound`` is not a segmentation method but a property of the dataset: the score of the
best labels a decoder ending at 1/``--bound-stride`` (4 in the paper's network and this engine)
could draw, fitted to the true labels (:mod:`fsvos.bound`), on every ``--bound-every``-th frame.
It says how much of the gap to a perfect score the decoder's resolution alone leaves.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..errors import FsvosInputError
from ._engine_options import add_engine_options, load_weights, make_propagator


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="J, F, J&F and Dice of propagation on a labelled dataset",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--method", choices=("engine", "flow", "bound"), default="engine",
                   help="engine: the FSVOS model; flow: OpenCV DIS optical flow chained from the support; "
                        "bound: the best a decoder ending at 1/--bound-stride could score (fitted to the truth)")
    p.add_argument("--bound-stride", type=int, default=4, metavar="S",
                   help="--method bound: the decoder's output stride (default: 4, as the paper's network)")
    p.add_argument("--bound-every", type=int, default=6, metavar="N",
                   help="--method bound: score one frame in N (default: 6; a fit takes a few seconds per frame)")
    p.add_argument("--out", default=None, help="folder for results.csv/json and pictures")
    p.add_argument("--no-pictures", action="store_true", help="skip the contact sheets")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N cases")
    add_engine_options(p)
    p.set_defaults(func=run)


def find_cases(dataset: Path) -> List[Path]:
    if not dataset.is_dir():
        raise FsvosInputError("no such dataset folder", os.fspath(dataset))
    listing = dataset / "dataset.json"
    if listing.exists():
        try:
            names = [c if isinstance(c, str) else c.get("folder") or c.get("name")
                     for c in json.loads(listing.read_text())["cases"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FsvosInputError(f"damaged dataset.json ({exc})", os.fspath(listing)) from None
        cases = [dataset / n for n in names]
    else:
        cases = sorted(p for p in dataset.iterdir() if (p / "meta.json").exists())
    if not cases:
        raise FsvosInputError("no cases found (expected case folders with meta.json, as fsvos synth writes)",
                              os.fspath(dataset))
    return cases


def run(args: argparse.Namespace) -> int:
    from ..bound import bound_labels
    from ..flow import propagate_flow
    from ..io.cine import load_cine
    from ..io.masks import load_mask
    from ..metrics import evaluate_sequence, summarize
    from ..model.weights import describe
    from ..viz import contact_sheet

    dataset = Path(args.dataset)
    cases = find_cases(dataset)[:args.limit]
    out = Path(args.out) if args.out else dataset / f"eval-{args.method}"
    out.mkdir(parents=True, exist_ok=True)
    propagator = None
    if args.method == "bound" and (args.bound_stride < 1 or args.bound_every < 1):
        raise FsvosInputError(f"--bound-stride ({args.bound_stride}) and --bound-every ({args.bound_every}) must be >= 1")
    if args.method == "engine":
        model = load_weights(args.weights)
        propagator = make_propagator(args, model)
        label = describe(model)
        del model  # the propagator runs its own inference copy
    elif args.method == "flow":
        label = "OpenCV DIS optical flow"
    else:
        label = (f"bound of a decoder ending at stride {args.bound_stride} (logits fitted to the truth, "
                 f"one frame in {args.bound_every})")
    print(f"fsvos eval: {len(cases)} cases, method {args.method} ({label})", file=sys.stderr)

    rows: List[Dict] = []
    all_results = []
    device_results = []
    by_category: Dict[str, List[Dict]] = {}
    seconds = 0.0
    n_frames = 0
    from tqdm import tqdm

    for case_dir in tqdm(cases, desc="cases", unit="case", file=sys.stderr, disable=None):
        meta_path = case_dir / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise FsvosInputError(f"unreadable case metadata ({exc})", os.fspath(meta_path)) from None
        files = meta.get("files", {})
        cine = load_cine(case_dir / files.get("cine", "cine.dcm"))
        support = int(meta["support_frame"])
        mask = load_mask(case_dir / files.get("support", "support.png"))
        truth = np.load(case_dir / files.get("labels", "labels.npz"))["labels"]
        if truth.shape != cine.frames.shape:
            raise FsvosInputError(f"labels of shape {truth.shape} do not match the cine {cine.frames.shape}",
                                  os.fspath(case_dir))
        objects = {int(o["label"]): o for o in meta["objects"]}
        present = [lab for lab in objects if (mask == lab).any()]
        shown = list(range(len(truth)))  # the frames scored, with the support
        t0 = time.perf_counter()
        if propagator is not None:
            pred = propagator.propagate(cine.frames, {support: mask}).labels
        elif args.method == "flow":
            pred = propagate_flow(cine.frames, {support: mask})
        else:
            pred = np.zeros_like(truth, dtype=np.uint8)
            scored = [f for f in range(len(truth)) if f != support][::args.bound_every]
            pred[scored] = bound_labels(truth[scored], present, args.bound_stride)
            pred[support] = np.where(np.isin(mask, present), mask, 0)
            shown = sorted(scored + [support])
        seconds += time.perf_counter() - t0
        n_frames += len(shown) - 1
        unscored = sorted(set(range(len(truth))) - set(shown))
        per_object = evaluate_sequence(pred, truth, present, exclude_frames=[support] + unscored)
        all_results.append(per_object)
        for lab, res in per_object.items():
            o = objects[lab]
            row = {"case": case_dir.name, "label": lab, "name": o.get("name", ""), "category": o.get("category", ""),
                   "device": bool(o.get("device", False)), "J": res["J"], "F": res["F"], "JF": res["JF"],
                   "Dice": res.get("Dice")}
            rows.append(row)
            by_category.setdefault(row["category"] or "unknown", []).append(res)
            if row["device"]:
                device_results.append(res)
        if not args.no_pictures:
            jf = summarize([per_object])["JF"]
            contact_sheet(out / f"{case_dir.name}.png", cine.frames[shown], pred[shown], truth[shown],
                          supports=[shown.index(support)], frame_numbers=shown,
                          title=f"{case_dir.name} {args.method}: J&F {100 * jf:.1f} (colour: result, white: truth)")

    overall = summarize(all_results)
    devices = summarize(device_results) if device_results else None
    categories = {c: summarize(r) for c, r in sorted(by_category.items())}
    tmp = out / ".results.csv.partial"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "results.csv")
    summary = {"dataset": os.fspath(dataset), "method": args.method, "weights": label, "cases": len(cases),
               "overall": overall, "device_objects": devices, "categories": categories,
               "frames_per_second": n_frames / seconds if seconds else None, "objects": rows}
    if propagator is not None:
        summary["engine"] = {k: getattr(args, k) for k in ("matching", "reference", "window", "top_k", "mem_every")}
        summary["engine"]["precision"] = propagator.precision  # the one "auto" chose
        summary["engine"]["work_size"] = propagator.work_size  # None: native
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))

    print(f"{'case':<12} {'obj':>3} {'category':<10} {'J':>6} {'F':>6} {'J&F':>6} {'Dice':>6}")
    for r in rows:
        print(f"{r['case']:<12} {r['label']:>3} {r['category']:<10} {100 * r['J']:6.1f} {100 * r['F']:6.1f} "
              f"{100 * r['JF']:6.1f} {100 * (r['Dice'] or 0):6.1f}")
    print(f"overall ({overall['n_objects']} objects): J {100 * overall['J']:.1f}  F {100 * overall['F']:.1f}  "
          f"J&F {100 * overall['JF']:.1f}  Dice {100 * overall['Dice']:.1f}")
    if devices:
        print(f"device objects ({devices['n_objects']}): J&F {100 * devices['JF']:.1f}")
    print("by category: " + ", ".join(f"{c} {100 * r['JF']:.1f} (J {100 * r['J']:.1f}, {r['n_objects']})"
                                      for c, r in categories.items()))
    print(f"fsvos eval: wrote {out / 'results.csv'}, {out / 'results.json'}", file=sys.stderr)
    return 0
