"""Support masks in: 2-D label maps, 0 = background, 1..K = objects.

Formats: PNG (8-bit grey or palette, 16-bit grey), ``.npy``, ``.nrrd``; a 3-D
array with one singleton axis is accepted as 2-D.  Colour PNGs are refused: a
colour has no unambiguous label value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FsvosInputError


def _squeeze2d(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim == 3 and 1 in arr.shape:
        arr = arr.reshape([s for s in arr.shape if s != 1] if arr.shape.count(1) < 3 else arr.shape[:2])
    if arr.ndim != 2:
        raise FsvosInputError(f"a support mask must be a 2-D label map, got an array of shape {arr.shape}", path)
    return arr


def as_labels(arr: np.ndarray, path: Any = None) -> np.ndarray:
    """Integer labels 0..255 of any shape as uint8 (bool and whole-valued floats accepted); else
    FsvosInputError naming `path`."""
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise FsvosInputError(f"labels must be integers, got {arr.dtype} with fractions or NaN", path)
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise FsvosInputError(f"labels must be integers, got {arr.dtype}", path)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise FsvosInputError(f"label values must be in 0..255, found {arr.min()}..{arr.max()}", path)
    return arr.astype(np.uint8)


def load_mask(path: "os.PathLike[str] | str") -> np.ndarray:
    """Read a label map -> uint8 (H, W).  Raises FsvosInputError naming the file and the problem."""
    p = Path(path)
    spath = os.fspath(p)
    if not p.is_file():
        raise FsvosInputError("no such mask file", spath)
    suffix = p.suffix.lower()
    if suffix == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(p) as im:
                im.load()
                if im.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                    raise FsvosInputError(
                        f"colour PNG (mode {im.mode}); a label map must be 8/16-bit grey or palette", spath)
                arr = np.array(im)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise FsvosInputError(f"not a readable PNG ({exc})", spath) from None
    elif suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FsvosInputError(f"not a readable .npy array ({exc})", spath) from None
    elif suffix in (".nrrd", ".nhdr"):
        import nrrd

        try:
            arr, _ = nrrd.read(spath, index_order="C")
        except Exception as exc:  # pynrrd raises several types for broken files
            raise FsvosInputError(f"not a readable NRRD file ({exc})", spath) from None
    else:
        raise FsvosInputError("unknown mask format (expected .png, .npy or .nrrd)", spath)
    return as_labels(_squeeze2d(np.asarray(arr), spath), spath)
