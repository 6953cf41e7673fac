"""``fsvos synth``: write synthetic X-ray angiography cines with dense labels.

    fsvos synth OUT --cases N --seed S [--size 512] [--frames 30-80]
                [--split all|no-devices|devices] [--low-dose random|yes|no] [--overwrite]

Writes ``OUT/case_000`` ... (``cine.dcm``, ``labels.npz``, ``support.png``,
``meta.json``) and ``OUT/dataset.json``; see :mod:`fsvos.synth`.  The same
arguments always give the same pixels and labels.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Tuple

from ..errors import FsvosInputError

MAX_SIZE = 4096
MAX_FRAMES = 2000


def parse_frames(text: str) -> Tuple[int, int]:
    """``"30-80"`` -> (30, 80); ``"50"`` -> (50, 50).  Raises FsvosInputError when malformed or out of range."""
    from ..synth.case import MIN_FRAMES

    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text or "")
    if not m:
        raise FsvosInputError(f"--frames must be a number or a range like 30-80, got {text!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo > hi:
        raise FsvosInputError(f"--frames range {text!r} is empty (minimum above maximum)")
    if lo < MIN_FRAMES or hi > MAX_FRAMES:
        raise FsvosInputError(f"--frames must lie in {MIN_FRAMES}..{MAX_FRAMES}, got {text!r}")
    return lo, hi


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``synth`` sub-command."""
    p = subparsers.add_parser(
        "synth",
        help="write synthetic XA cines with exact labels",
        description=(
            "Write synthetic coronary angiography cines (multi-frame XA DICOM) with dense "
            "per-frame labels, a support frame and its mask, deterministic by seed."
        ),
    )
    p.add_argument("out", metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--cases", type=int, required=True, help="number of cases (>= 1)")
    p.add_argument("--seed", type=int, required=True, help="dataset seed (>= 0)")
    p.add_argument("--size", type=int, default=512, help="frame height and width in pixels (default 512)")
    p.add_argument("--frames", default="30-80",
                   help="frames per case: a number or a range MIN-MAX drawn per case (default 30-80)")
    p.add_argument("--split", default="all", choices=["all", "no-devices", "devices"],
                   help="object classes: all (devices in some cases), no-devices (never a balloon, "
                        "stent or marker), devices (at least one in every case)")
    p.add_argument("--low-dose", default="random", choices=["random", "yes", "no"],
                   help="low-dose fluoroscopy: drawn per case (random, ~25%%), all or none")
    p.add_argument("--overwrite", action="store_true", help="replace existing cases in OUT")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Generate the dataset; returns 0.  Bad arguments raise FsvosInputError."""
    from ..synth.case import MIN_SIZE
    from ..synth.writer import write_dataset

    out = Path(args.out)
    if args.cases is None or args.cases < 1:
        raise FsvosInputError(f"--cases must be at least 1, got {args.cases}")
    if args.seed < 0:
        raise FsvosInputError(f"--seed must be >= 0, got {args.seed}")
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        raise FsvosInputError(f"--size must lie in {MIN_SIZE}..{MAX_SIZE}, got {args.size}")
    frames = parse_frames(args.frames)
    if out.exists() and not out.is_dir():
        raise FsvosInputError("exists and is not a folder", out)
    low_dose = {"random": None, "yes": True, "no": False}[args.low_dose]

    from tqdm import tqdm

    bar = tqdm(total=args.cases, desc="synth", unit="case", file=sys.stderr,
               disable=None)  # disabled automatically when stderr is not a terminal

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        folders = write_dataset(out, args.cases, args.seed, size=args.size, frames=frames,
                                split=args.split, low_dose=low_dose, overwrite=args.overwrite,
                                progress=progress)
    except FileExistsError as exc:
        raise FsvosInputError(f"{exc.strerror}; use --overwrite or another folder", out) from None
    except OSError as exc:
        raise FsvosInputError(f"cannot write: {exc.strerror or exc}", out) from None
    finally:
        bar.close()
    print(f"wrote {len(folders)} case(s) to {out}", file=sys.stderr)
    return 0
