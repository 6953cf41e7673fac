"""Engine options shared by propagate, eval and bench."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import FsvosInputError


def add_engine_options(parser: argparse.ArgumentParser, weights: bool = True) -> None:
    g = parser.add_argument_group("engine")
    if weights:
        g.add_argument("--weights", metavar="W", default=None,
                       help="weights file: the paper's released checkpoint, an STCN state_dict or an fsvos "
                            "checkpoint (default: the bundled default model)")
    g.add_argument("--matching", choices=("local", "global"), default="local",
                   help="local (the paper) or global (STCN) matching (default: local)")
    g.add_argument("--reference", choices=("similarity", "fixed"), default="similarity",
                   help="centre of each local window: most similar memory key (paper Eq. 8-9) or the "
                        "query position (released code) (default: similarity)")
    g.add_argument("--window", type=int, default=15, metavar="K", help="odd local window size k (default: 15)")
    g.add_argument("--top-k", type=int, default=20, metavar="N",
                   help="softmax over the N best candidates; 0 = all (default: 20)")
    g.add_argument("--mem-every", type=int, default=6, metavar="R", help="every R-th frame becomes memory (default: 6)")
    g.add_argument("--include-last", action="store_true", help="keep the previous frame as temporary memory")
    g.add_argument("--max-memory", type=int, default=64, metavar="N",
                   help="memory capacity in frames; the oldest keyframes are dropped (default: 64)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="network precision; auto: bf16 where the CPU/GPU computes bf16 natively (AVX-512 "
                        "BF16, AMX, recent GPUs) and the weights were validated in bf16 (the bundled "
                        "default), else fp32 (default: auto)")
    g.add_argument("--work-size", default="auto", metavar="N",
                   help="the network sees frames resized so that their longer side is N pixels; results "
                        "are resized back to the cine's size. native: no resizing; auto: cines larger than "
                        "the size the weights were trained at (512 for the bundled default and the "
                        "paper's checkpoints) are shrunk to it, smaller ones stay native (default: auto)")
    g.add_argument("--direct-conv", action="store_true",
                   help="run every convolution directly (the reference path); by default the wide 3x3 "
                        "convolutions of the paper's network run as Winograd F(4x4,3x3) on the CPU, about "
                        "1.5x faster (fp32: probabilities within 1e-4; bf16: the same J&F)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    g.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="frames whose query keys are encoded together (default: 1 on CPU, 8 on GPU)")


def load_weights(path):
    """load_model with its warnings (untrained or preliminary default weights) printed as one loud line each on stderr."""
    from ..model.weights import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"fsvos: WARNING: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


def make_propagator(args, model):
    from ..inference.propagator import Propagator

    if args.top_k is not None and args.top_k < 0:
        raise FsvosInputError(f"--top-k must be >= 0, not {args.top_k}")
    if args.max_memory is not None and args.max_memory < 1:
        raise FsvosInputError(f"--max-memory must be >= 1, not {args.max_memory}")
    return Propagator(model, matching=args.matching, reference=args.reference, window=args.window,
                      top_k=args.top_k or None, mem_every=args.mem_every, include_last=args.include_last,
                      precision=args.precision, device=args.device, max_memory_frames=args.max_memory,
                      batch_size=args.batch_size, keep_probs=bool(getattr(args, "save_probs", False)),
                      work_size=args.work_size, winograd=False if args.direct_conv else None)
