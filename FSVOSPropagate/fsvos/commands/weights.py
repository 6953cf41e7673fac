"""``fsvos weights``: inspect weights files, and average several into one.

    fsvos weights info FILE [--json]
    fsvos weights average FILE FILE [FILE ...] --out OUT.pth [--precision fp16|fp32]
                          [--meta META.json] [--overwrite]

``info`` prints what a weights file is (kind, architecture, parameters, the file's SHA-256,
training steps and the metadata recorded in it); FILE may also be ``default``, the bundled
default weights.  ``average`` writes the uniform average of models of one architecture, e.g.
runs fine-tuned from the same weights on different data (a "model soup", Wortsman et al. 2022),
as an fsvos checkpoint whose metadata lists its inputs; META.json (a JSON object) is merged into
that metadata.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import FsvosInputError


def add_parser(sub) -> None:
    p = sub.add_parser("weights", help="inspect weights files; average several into one",
                       description="Inspect weights files, or average models of one architecture into one file.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    info = actions.add_parser("info", help="kind, architecture, SHA-256 and metadata of a weights file",
                              description="Print the kind, architecture, parameter count, file SHA-256, training "
                                          "steps and recorded metadata of a weights file.")
    info.add_argument("file", metavar="FILE", help="a weights file, or 'default' for the bundled default weights")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(func=run_info)

    avg = actions.add_parser("average", help="the uniform average of several models of one architecture",
                             description="Write the uniform average of the weights of two or more models of one "
                                         "architecture (batch-norm statistics included) as an fsvos checkpoint.")
    avg.add_argument("files", metavar="FILE", nargs="+", help="weights files (two or more)")
    avg.add_argument("--out", required=True, metavar="OUT.pth", help="the checkpoint to write")
    avg.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                     help="storage of the averaged tensors (default fp16, as fsvos train's final.pth; "
                          "loaded back as float32)")
    avg.add_argument("--meta", metavar="META.json", help="a JSON object merged into the checkpoint's metadata")
    avg.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    avg.set_defaults(func=run_average)


def describe_file(file: Optional[str]) -> Dict[str, Any]:
    """What :func:`run_info` prints, as a dict; file None = the bundled default."""
    import warnings

    from ..model.network import arch_name
    from ..model.weights import load_model, parameter_count

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the preliminary-weights warning: info reports the metadata itself
        model = load_model(file)
    info = model.fsvos_info
    return {"file": info["source"], "sha256": info["sha256"], "kind": info["kind"], "architecture": arch_name(model.arch),
            "arch_settings": model.arch.to_dict(), "parameters": parameter_count(model),
            "steps": info["meta"].get("steps"), "meta": info["meta"]}


def run_info(args: argparse.Namespace) -> int:
    d = describe_file(None if args.file == "default" else args.file)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    print(f"file:         {d['file']}")
    print(f"sha256:       {d['sha256']}")
    print(f"kind:         {d['kind']}")
    print(f"architecture: {d['architecture']} ({d['parameters']:,} parameters)")
    if d["steps"] is not None:
        print(f"steps:        {d['steps']:,}")
    for key, value in d["meta"].items():
        if key != "steps":
            print(f"meta {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    return 0


def _read_meta(path: str) -> Dict[str, Any]:
    from ..io.json_file import read_json_file

    meta = read_json_file(path, "metadata")
    if not isinstance(meta, dict):
        raise FsvosInputError(f"expected a JSON object, found a {type(meta).__name__}", path)
    return meta


def run_average(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_file
    from ..model.weights import average_models, save_checkpoint

    out = Path(args.out)
    check_output_file(out)
    if out.exists() and not args.overwrite:
        raise FsvosInputError("exists (use --overwrite to replace it)", out)
    extra = _read_meta(args.meta) if args.meta else {}
    model = average_models(args.files)
    meta = dict(model.fsvos_info["meta"])
    meta.update(extra)
    sha = save_checkpoint(model, out, half=args.precision == "fp16", meta=meta)
    print(f"wrote {os.fspath(out)}: the average of {len(args.files)} models, sha256 {sha}")
    return 0
