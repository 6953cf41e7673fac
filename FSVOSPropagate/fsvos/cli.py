"""The ``fsvos`` command.

Each sub-command lives in :mod:`fsvos.commands` as a module with
``add_parser(subparsers)`` and ``run(args) -> int``.  User errors
(:class:`~fsvos.errors.FsvosInputError`) become one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from . import __version__
from .errors import FsvosCancelled, FsvosInputError
from .runtime import tune_allocator

#: sub-command name -> module in fsvos.commands (imported lazily: torch is slow to import)
COMMANDS = {
    "propagate": "propagate",
    "demo": "demo",
    "synth": "synth",
    "eval": "evaluate",
    "bench": "bench",
    "train": "train",
    "export-seg": "export_seg",
    "weights": "weights",
}


def _available_commands():
    for name, module in COMMANDS.items():
        try:
            yield name, importlib.import_module(f"fsvos.commands.{module}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"fsvos.commands.{module}":
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsvos",
        description="Propagate a painted frame of an X-ray angiography cine to every frame.",
    )
    parser.add_argument("--version", action="version", version=f"fsvos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for _name, module in _available_commands():
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_allocator()
    try:
        return int(args.func(args) or 0)
    except FsvosInputError as exc:
        print(f"fsvos: error: {exc}", file=sys.stderr)
        return 2
    except FsvosCancelled:
        print("fsvos: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fsvos: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
