"""Label stacks out, atomically (temporary name, then rename; nothing partial is left).

By extension of the output path:

``.npz``     array ``labels`` uint8 (T, H, W), plus ``probs`` float32 (K+1, T, H, W) on request,
             ``confidence`` (T, K) and ``supports``.
``.nrrd``    labels as a 3-D volume, C order (T, H, W) -> NRRD sizes (W, H, T).
``.dcm``     a DICOM Segmentation of every frame (needs a DICOM source; see :mod:`fsvos.io.seg`).
folder       (a path without one of those suffixes) one 8-bit PNG per frame, ``frame_0000.png`` ...
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..errors import FsvosInputError

OUTPUT_KINDS = (".npz", ".nrrd", ".dcm")


def output_kind(path: "os.PathLike[str] | str") -> str:
    """"npz", "nrrd", "dcm" or "png-folder" from the output path."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in OUTPUT_KINDS:
        return suffix[1:]
    if suffix in ("", ) or p.is_dir():
        return "png-folder"
    raise FsvosInputError(f"unknown output type {suffix!r} (use .npz, .nrrd, .dcm or a folder name)", os.fspath(p))


def _check_parent_folder(p: Path) -> None:
    """Refuse an output path whose folder does not exist."""
    parent = p.resolve().parent
    if not parent.is_dir():
        raise FsvosInputError("the folder to write into does not exist", os.fspath(parent))


def check_output_file(path: "os.PathLike[str] | str") -> None:
    """Refuse, before any work is done, an output file whose folder does not exist or that names
    a folder (:class:`FsvosInputError` naming the path)."""
    p = Path(path)
    _check_parent_folder(p)
    if p.is_dir():
        raise FsvosInputError("is a folder; expected a file name", os.fspath(p))


def check_output_path(path: "os.PathLike[str] | str") -> str:
    """Validate an output path before any work is done; returns its kind."""
    p = Path(path)
    kind = output_kind(p)
    if kind == "png-folder":
        _check_parent_folder(p)
    else:
        check_output_file(p)
    return kind


def _tmp_sibling(p: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".partial" + suffix, dir=p.parent)
    os.close(fd)
    return Path(name)


def write_labels(path: "os.PathLike[str] | str", labels: np.ndarray, *, probs: Optional[np.ndarray] = None,
                 confidence: Optional[np.ndarray] = None, supports: Sequence[int] = (),
                 spacing_mm: Optional[Sequence[float]] = None, seg_writer: Any = None,
                 header: Optional[Dict[str, Any]] = None) -> Path:
    """Write a label stack uint8 (T, H, W) to ``path`` (kind by extension, see module doc).

    seg_writer: for ``.dcm``, a callable ``seg_writer(path)`` that writes the SEG (atomically).
    Returns the final path.
    """
    p = Path(path)
    kind = output_kind(p)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if kind == "dcm":
        if seg_writer is None:
            raise FsvosInputError("a DICOM-SEG output needs a DICOM cine as input", os.fspath(p))
        seg_writer(p)
        return p
    if kind == "npz":
        tmp = _tmp_sibling(p, ".npz")
        try:
            arrays: Dict[str, np.ndarray] = {"labels": labels, "supports": np.asarray(list(supports), dtype=np.int64)}
            if probs is not None:
                arrays["probs"] = np.asarray(probs, dtype=np.float32)
            if confidence is not None:
                arrays["confidence"] = np.asarray(confidence, dtype=np.float32)
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return p
    if kind == "nrrd":
        import nrrd

        tmp = _tmp_sibling(p, ".nrrd")
        try:
            hdr: Dict[str, Any] = {"encoding": "gzip"}
            if spacing_mm is not None:
                sy, sx = spacing_mm
                hdr["spacings"] = [float(sx), float(sy), 1.0]  # NRRD axis order (W, H, T)
            hdr.update(header or {})
            nrrd.write(os.fspath(tmp), labels, header=hdr, index_order="C")
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return p
    # folder of PNGs
    from PIL import Image

    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".partial", dir=p.resolve().parent))
    try:
        for t in range(labels.shape[0]):
            Image.fromarray(labels[t]).save(tmp_dir / f"frame_{t:04d}.png")
        if p.exists():
            if not p.is_dir():
                raise FsvosInputError("exists and is not a folder", os.fspath(p))
            old = [f for f in p.iterdir() if f.name.startswith("frame_") and f.suffix == ".png"]
            others = [f for f in p.iterdir() if f not in old]
            if others:
                raise FsvosInputError("output folder exists and holds other files; choose an empty or new folder",
                                      os.fspath(p))
            shutil.rmtree(p)
        os.replace(tmp_dir, p)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return p
