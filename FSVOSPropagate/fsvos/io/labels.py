"""Label stacks of a cine, from any file the project writes or reads.

``.npz``            array ``labels`` (T, H, W) (as ``fsvos propagate`` writes it)
``.npy``            a (T, H, W) integer array
``.seg.nrrd``       a Slicer segmentation whose K axis is the frame (segment names, colours and
                    terminology are returned), or one frame with its ``FSVOS_FrameIndex``
``.seq.nrrd``       a Slicer label-map volume sequence
``.nrrd``/``.nhdr`` a (T, H, W) C-order stack (NRRD sizes W, H, T)
``.dcm``            a DICOM-SEG (ours, highdicom's, dcmqi's): re-mapped onto the cine's frames
folder              one 8/16-bit PNG label map per frame, in name order
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import FsvosInputError
from .atomic import is_dicom_file
from .seg import check_label_stack

Objects = Optional[List[Dict[str, Any]]]


def _png_folder(folder: Path) -> np.ndarray:
    from .masks import load_mask

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".png" and not f.name.startswith("."))
    if not files:
        raise FsvosInputError("the folder holds no PNG label maps", folder)
    frames = [load_mask(f) for f in files]
    if any(f.shape != frames[0].shape for f in frames):
        raise FsvosInputError("the PNG label maps differ in size", folder)
    return np.stack(frames)


def _read_any(p: Path, cine) -> Tuple[np.ndarray, Objects]:
    if p.is_dir():
        return _png_folder(p), None
    name = p.name.lower()
    if name.endswith(".seg.nrrd"):
        from .slicer_formats import read_seg_nrrd

        labels, objects, info = read_seg_nrrd(p)
        if cine is not None and labels.shape[0] == 1 and len(cine) > 1:  # one painted frame of the cine
            if info.get("frame_index") is None:
                raise FsvosInputError("a one-frame segmentation without FSVOS_FrameIndex: which frame is it?", p)
            stack = np.zeros(cine.frames.shape, np.uint8)
            stack[int(info["frame_index"])] = labels[0]
            labels = stack
        return labels, objects
    if name.endswith(".seq.nrrd"):
        from .slicer_formats import read_label_sequence_nrrd

        return read_label_sequence_nrrd(p)[0], None
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as data:
                if "labels" not in data:
                    raise FsvosInputError(f"the .npz has no array 'labels' (it has: {', '.join(data.files)})", p)
                return np.asarray(data["labels"]), None
        except (ValueError, OSError, EOFError) as exc:
            raise FsvosInputError(f"not a readable .npz file ({exc})", p) from None
    if suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False), None
        except (ValueError, OSError, EOFError) as exc:
            raise FsvosInputError(f"not a readable .npy array ({exc})", p) from None
    if suffix in (".nrrd", ".nhdr"):
        import nrrd

        try:
            data, _header = nrrd.read(os.fspath(p), index_order="C")
        except Exception as exc:  # pynrrd raises several types for broken files
            raise FsvosInputError(f"not a readable NRRD file ({' '.join(str(exc).split())[:160]})", p) from None
        return data, None
    if suffix in (".dcm", ".dicom", "") or is_dicom_file(p):
        from .seg import read_seg

        return read_seg(p, cine)
    raise FsvosInputError("unknown label format (expected .npz, .npy, .nrrd, .seg.nrrd, .seq.nrrd, a DICOM-SEG "
                          "or a folder of PNGs)", p)


def read_label_stack(path: "os.PathLike[str] | str", cine=None) -> Tuple[np.ndarray, Objects]:
    """Read a label stack -> (uint8 (T, H, W), objects or None).

    cine: the :class:`fsvos.io.cine.Cine` the labels belong to (needed for a DICOM-SEG, and to
    place a one-frame ``.seg.nrrd``); when given, the stack must have the cine's shape.
    Raises :class:`FsvosInputError` naming the file and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise FsvosInputError("no such file or folder", p)
    labels, objects = _read_any(p, cine)
    labels = check_label_stack(labels, p)
    if cine is not None and tuple(labels.shape) != tuple(cine.frames.shape):
        raise FsvosInputError(f"labels of shape {tuple(labels.shape)} do not match the cine's "
                              f"{tuple(cine.frames.shape)} (frames, height, width)", p)
    return labels, objects
