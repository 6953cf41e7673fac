"""``fsvos train CONFIG``: train or fine-tune the network (TOML or YAML config)."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune the network from a TOML/YAML config",
                       description="Train or fine-tune the FSVOS network: on synthetic XA cines made on the fly "
                                   "(source = \"synth\"), on deformed still images (\"static\") or on your own "
                                   "labelled cines (\"cines\"). See Resources/Training/ for example configs. "
                                   "Resumes from <out>/last.pth when present. Several GPUs or machines: "
                                   "torchrun --nproc_per_node N -m fsvos train CONFIG.")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    p.add_argument("--out", default=None, help="override the output folder")
    p.add_argument("--device", default=None,
                   help="override the device: cpu, cuda or cuda:N (under torchrun with cuda: one GPU per process)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..train.config import TrainConfig
    from ..train.loop import train

    cfg = TrainConfig.load(args.config)
    if args.steps is not None:
        cfg.steps = args.steps
    if args.out is not None:
        cfg.out = args.out
    if args.device is not None:
        cfg.device = args.device
    cfg.check(args.config)
    # tqdm.write keeps the progress bar below the log lines
    final = train(cfg, log=lambda msg: tqdm.write(f"fsvos train: {msg}", file=sys.stderr))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes
        print(f"fsvos train: wrote {final}", file=sys.stderr)
    return 0
