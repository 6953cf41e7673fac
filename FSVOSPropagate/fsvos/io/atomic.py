"""Writing files so that nothing partial is ever visible: a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Optional


def default_mode(base: int = 0o666) -> int:
    """``base`` with the process umask applied (mkstemp/mkdtemp create 0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_file(path: "os.PathLike[str] | str", mode: str = "wb", encoding: Optional[str] = None):
    """Open a temporary sibling of ``path`` for writing; on success it is renamed to ``path`` (with the
    usual file permissions), on any error it is removed and nothing appears at ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=os.fspath(out.parent))
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
        os.chmod(tmp, default_mode())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_dicom_atomic(ds, path: "os.PathLike[str] | str") -> None:
    """``ds.save_as`` to a temporary sibling of ``path``, then rename; the temporary file is removed on error."""
    with atomic_file(path) as fh:
        ds.save_as(fh, enforce_file_format=True)


def is_dicom_file(path: "os.PathLike[str] | str") -> bool:
    """True when the file has the DICOM preamble magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
