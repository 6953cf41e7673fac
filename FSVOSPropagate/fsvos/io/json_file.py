"""Reading a JSON file a user names on the command line, with one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json_file(path: "os.PathLike[str] | str", what: str) -> Any:
    """The parsed contents of a JSON file; ``what`` names the file's role in the errors
    (:class:`~fsvos.errors.FsvosInputError` naming the file: missing, unreadable or not JSON)."""
    from ..errors import FsvosInputError

    p = Path(path)
    if not p.is_file():
        raise FsvosInputError(f"no such {what} file", p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FsvosInputError(f"not a readable JSON file ({exc})", p) from None
