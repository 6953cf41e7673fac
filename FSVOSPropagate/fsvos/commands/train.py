"""``fsvos train CONFIG``: train or fine-tune the network (TOML or YAML config)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune the network from a TOML/YAML config",
                       description="Train the FSVOS network on synthetic XA cines made on the fly "
                                   "(see Resources/Training/*.toml for the configs used for the bundled "
                                   "weights). Resumes from <out>/last.pth when present.")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    p.add_argument("--out", default=None, help="override the output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.config import TrainConfig
    from ..train.loop import train

    cfg = TrainConfig.load(args.config)
    if args.steps is not None:
        cfg.steps = args.steps
    if args.out is not None:
        cfg.out = args.out
    final = train(cfg, log=lambda msg: print(f"fsvos train: {msg}", file=sys.stderr, flush=True))
    print(f"fsvos train: wrote {final}", file=sys.stderr)
    return 0
