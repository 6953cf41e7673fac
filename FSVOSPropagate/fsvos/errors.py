"""Errors the engine raises for bad input.

Every error a user can cause (a missing file, a mask of the wrong size, a
truncated weights file, ...) is an :class:`FsvosInputError`.  The command line
prints it as one line, ``fsvos: error: <path>: <problem>``, and exits with
status 2; no traceback, no partial output.
"""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class FsvosError(Exception):
    """Base class of the engine's own errors."""


class FsvosInputError(FsvosError, ValueError):
    """Bad input that the user can fix: names the file (when there is one) and the problem.

    Parameters
    ----------
    problem:
        What is wrong, in one sentence without a trailing full stop.
    path:
        The file or folder the problem is in, if any.
    """

    def __init__(self, problem: str, path: Optional[PathLike] = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class FsvosCancelled(FsvosError):
    """Raised inside :meth:`fsvos.Propagator.propagate` when the caller cancelled the run."""
