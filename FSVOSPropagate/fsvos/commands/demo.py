"""``fsvos demo OUT``: the main job end to end on bundled/generated data.

Makes a synthetic XA cine (DICOM) with its support mask, propagates the support
to every frame with the default model (or ``--weights``), and writes into OUT:
``cine/`` (the cine as DICOM + its true labels), ``segmentation.dcm`` (DICOM-SEG
of every frame), ``labels.nrrd``, ``overview.png`` (frames with predicted
contours in colour, true contours in white) and prints J&F against the truth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import FsvosInputError
from ._engine_options import add_engine_options, load_weights, make_propagator


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="make a synthetic XA cine, propagate its support frame, write SEG + picture",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("out", metavar="OUT", help="output folder (created; replaced if it holds a previous demo)")
    p.add_argument("--seed", type=int, default=20261121, help="seed of the synthetic cine")
    p.add_argument("--size", type=int, default=512, help="frame size in pixels (default: 512)")
    p.add_argument("--frames", type=int, default=40, help="number of frames (default: 40)")
    add_engine_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.cine import load_cine
    from ..io.masks import load_mask
    from ..io.outputs import write_labels
    from ..io.seg import write_seg
    from ..metrics import evaluate_sequence, summarize
    from ..model.weights import describe
    from ..synth import generate_case, write_case
    from ..viz import contact_sheet

    out = Path(args.out)
    if out.exists() and not (out / "demo.json").exists() and any(out.iterdir()):
        raise FsvosInputError("exists and is not a previous demo output; choose a new folder", str(out))
    model = load_weights(args.weights)
    propagator = make_propagator(args, model)
    weights_label, untrained = describe(model), not model.fsvos_info.get("trained", True)
    del model  # the propagator runs its own inference copy
    print(f"fsvos demo: weights: {weights_label}; precision {propagator.precision}", file=sys.stderr)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    case = generate_case(args.seed, size=args.size, n_frames=args.frames)
    case_dir = write_case(case, out / "cine")
    meta = json.loads((case_dir / "meta.json").read_text())
    cine = load_cine(case_dir / "cine.dcm")
    support = int(meta["support_frame"])
    mask = load_mask(case_dir / "support.png")
    print(f"fsvos demo: cine {case_dir / 'cine.dcm'}: {len(cine)} frames {cine.frames.shape[2]}x"
          f"{cine.frames.shape[1]}, support frame {support}, objects: "
          + ", ".join(o["name"] for o in meta["objects"]), file=sys.stderr)

    t0 = time.perf_counter()
    result = propagator.propagate(cine.frames, {support: mask})
    elapsed = time.perf_counter() - t0
    objects = [{"label": o["label"], "name": o["name"], "category": o["category"]} for o in meta["objects"]]
    write_seg(out / "segmentation.dcm", result.labels, cine, objects)
    write_labels(out / "labels.nrrd", result.labels, spacing_mm=cine.pixel_spacing_mm)
    truth = np.load(case_dir / "labels.npz")["labels"]
    per_object = evaluate_sequence(result.labels, truth, [o["label"] for o in objects], exclude_frames=[support])
    overall = summarize([per_object])
    title = (f"FSVOS demo: J&F {100 * overall['JF']:.1f} (colour: propagated, white: truth)"
             + ("  UNTRAINED MODEL" if untrained else ""))
    contact_sheet(out / "overview.png", cine.frames, result.labels, truth, supports=[support], title=title)
    fps = (len(cine) - 1) / elapsed
    summary = {"cine": str(case_dir / "cine.dcm"), "support_frame": support, "weights": weights_label,
               "precision": propagator.precision, "frames_per_second": round(fps, 2),
               "J": overall["J"], "F": overall["F"], "JF": overall["JF"],
               "outputs": ["segmentation.dcm", "labels.nrrd", "overview.png"]}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"fsvos demo: propagated {len(cine) - 1} frames in {elapsed:.1f} s ({fps:.2f} frames/s); "
          f"J&F against the truth {100 * overall['JF']:.1f} (J {100 * overall['J']:.1f}, F {100 * overall['F']:.1f})",
          file=sys.stderr)
    print(f"fsvos demo: wrote {out / 'segmentation.dcm'}, {out / 'labels.nrrd'}, {out / 'overview.png'}",
          file=sys.stderr)
    return 0
