"""``fsvos propagate``: one cine, one or more painted frames -> labels on every frame."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..errors import FsvosInputError
from ._engine_options import add_engine_options, load_weights, make_propagator


def add_parser(sub) -> None:
    p = sub.add_parser(
        "propagate", help="propagate painted support frame(s) to every frame of a cine",
        description="Propagate the labels of one or more painted support frames to every frame of a cine. "
                    "CINE: a multi-frame DICOM file, a folder of one DICOM series, or a .npy/.nrrd (T, H, W) "
                    "stack. MASK: a 2-D label map (PNG 8/16-bit, .npy, .nrrd), 0 = background, 1..K objects. "
                    "OUT by extension: .npz, .nrrd, .dcm (DICOM-SEG) or a folder of PNGs.")
    p.add_argument("cine", metavar="CINE")
    p.add_argument("--support", action="append", required=True, metavar="FRAME=MASK",
                   help="support frame (0-based) and its label map; repeat for several supports")
    p.add_argument("--output", "-o", required=True, metavar="OUT")
    p.add_argument("--save-probs", action="store_true", help="also store probabilities (.npz output only)")
    p.add_argument("--directions", default="forward,backward",
                   help="comma-separated: forward, backward (default: both)")
    p.add_argument("--seg-geometry", choices=("xa", "pseudo3d"), default="xa",
                   help="DICOM-SEG layout for .dcm output (default: xa)")
    p.add_argument("--objects", metavar="JSON", default=None,
                   help='names/categories/colours of the objects for .dcm output: [{"label": 1, "name": "LAD", '
                        '"category": "coronary artery"}, ...] (default: "Object i", generic)')
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="progress as a bar on a terminal, JSON lines on stdout, or none (default: bar)")
    add_engine_options(p)
    p.set_defaults(func=run)


def parse_support(spec: str):
    frame, sep, mask = spec.partition("=")
    if not sep or not mask:
        raise FsvosInputError(f"--support {spec!r}: expected FRAME=MASK, e.g. 0=mask.png")
    try:
        index = int(frame)
    except ValueError:
        raise FsvosInputError(f"--support {spec!r}: FRAME must be a 0-based frame number") from None
    return index, mask


def load_supports(specs, cine):
    """--support specs -> {frame: labels}, each checked against the cine with the mask's file named."""
    from ..inference.propagator import check_supports
    from ..io.masks import load_mask

    supports = {}
    paths = {}
    n = len(cine)
    for spec in specs:
        index, mask_path = parse_support(spec)
        if not 0 <= index < n:
            raise FsvosInputError(f"--support {spec}: frame {index} is out of range, the cine has frames 0..{n - 1}",
                                  cine.source)
        if index in supports:
            raise FsvosInputError(f"--support: frame {index} is given twice")
        labels = load_mask(mask_path)
        if labels.shape != cine.frames.shape[1:]:
            raise FsvosInputError(f"mask of size {labels.shape[1]}x{labels.shape[0]} does not match the cine's "
                                  f"{cine.frames.shape[2]}x{cine.frames.shape[1]} frames", mask_path)
        if not labels.any():
            raise FsvosInputError("the mask is empty (no labelled pixel)", mask_path)
        supports[index] = labels
        paths[index] = mask_path
    try:
        check_supports(supports, n, cine.frames.shape[1:])
    except FsvosInputError as exc:
        raise FsvosInputError(exc.problem, ", ".join(paths[i] for i in sorted(paths))) from None
    return supports


class _Progress:
    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.mode == "json":
            print(json.dumps({"event": "progress", "done": done, "total": total}), flush=True)
        elif self.mode == "bar":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="frame", desc="propagating", file=sys.stderr,
                                disable=None, leave=False)
            self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from ..io.cine import load_cine
    from ..io.outputs import check_output_path, write_labels
    from ..model.weights import describe

    kind = check_output_path(args.output)
    if args.save_probs and kind != "npz":
        raise FsvosInputError("--save-probs needs a .npz output", args.output)
    directions = tuple(d.strip() for d in args.directions.split(",") if d.strip())
    cine = load_cine(args.cine)
    supports = load_supports(args.support, cine)
    if kind == "dcm" and cine.dicom is None and args.seg_geometry == "xa":
        raise FsvosInputError("a DICOM-SEG output needs a DICOM cine as input (or use --seg-geometry pseudo3d)",
                              args.cine)
    objects = None
    if args.objects:
        from .export_seg import load_objects

        objects = load_objects(args.objects)
    model = load_weights(args.weights)
    propagator = make_propagator(args, model)
    print(f"fsvos: weights: {describe(model)}; precision {propagator.precision}", file=sys.stderr)
    del model  # the propagator runs its own inference copy (208 MB for the paper's network in fp32)
    from ..inference.propagator import working_shape

    seen = working_shape(*cine.frames.shape[1:], propagator.work_size, propagator.enlarge)
    if seen != tuple(cine.frames.shape[1:]):
        print(f"fsvos: the network sees the frames at {seen[1]}x{seen[0]} (--work-size {propagator.work_size}); "
              f"results are at the cine's {cine.frames.shape[2]}x{cine.frames.shape[1]}", file=sys.stderr)

    progress = _Progress(args.progress)
    t0 = time.perf_counter()
    try:
        result = propagator.propagate(cine.frames, supports, directions=directions, progress=progress)
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    n_pred = int(len(cine) - len(supports))

    seg_writer = None
    if kind == "dcm":
        from ..io.seg import write_seg

        if objects is None:
            objects = [{"label": i, "name": f"Object {i}", "category": "generic"} for i in result.object_ids]
        seg_writer = lambda path: write_seg(path, result.labels, cine, objects,  # noqa: E731
                                            geometry=args.seg_geometry)

    out = write_labels(args.output, result.labels, probs=result.probs if args.save_probs else None,
                       confidence=result.confidence, supports=result.supports,
                       spacing_mm=cine.pixel_spacing_mm, seg_writer=seg_writer)
    fps = n_pred / elapsed if elapsed > 0 else float("inf")
    summary = {"event": "done", "output": os.fspath(out), "frames": len(cine), "predicted_frames": n_pred,
               "seconds": round(elapsed, 3), "frames_per_second": round(fps, 3),
               "objects": len(result.object_ids), "supports": result.supports}
    if args.progress == "json":
        print(json.dumps(summary), flush=True)
    else:
        print(f"fsvos: wrote {out} ({len(cine)} frames, {len(result.object_ids)} objects; "
              f"{n_pred} frames propagated in {elapsed:.1f} s, {fps:.2f} frames/s)", file=sys.stderr)
    return 0
