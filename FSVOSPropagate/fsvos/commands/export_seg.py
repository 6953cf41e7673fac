"""``fsvos export-seg``: any label stack of a cine -> a DICOM Segmentation of every frame.

LABELS (by name):

``.npz``            array ``labels`` (T, H, W) (as ``fsvos propagate`` writes it)
``.npy``            a (T, H, W) integer array
``.seg.nrrd``       a Slicer segmentation whose K axis is the frame (segment names, colours
                    and terminology are kept unless ``--objects`` is given)
``.seq.nrrd``       a Slicer label-map volume sequence
``.nrrd``/``.nhdr`` a (T, H, W) C-order stack (NRRD sizes W, H, T)
``.dcm``            a DICOM-SEG (ours, highdicom's, dcmqi's): re-mapped onto CINE's frames
folder              one 8/16-bit PNG label map per frame, in name order

``--objects objects.json``: ``[{"label": 1, "name": "LAD", "category": "coronary artery",
"color": [240, 60, 60]}, ...]`` (or ``{"objects": [...]}``); categories are those of
:mod:`fsvos.io.seg_codes`.  Without it objects come from LABELS when it names them,
else one generic object per label value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import FsvosInputError
from ..io.atomic import is_dicom_file


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-seg", help="write a DICOM-SEG of every frame from a label stack",
        description="Convert a label stack of a cine into a DICOM Segmentation (SEG) of every frame. "
                    "LABELS: .npz (array 'labels'), .npy, .nrrd, .seg.nrrd, .seq.nrrd, a DICOM-SEG, or a folder "
                    "of PNG label maps; 0 = background. CINE: the source cine (a DICOM file or folder for the xa "
                    "geometry; any cine for pseudo3d). OUT: the .dcm file to write.")
    p.add_argument("labels", metavar="LABELS")
    p.add_argument("cine", metavar="CINE")
    p.add_argument("output", metavar="OUT.dcm")
    p.add_argument("--seg-geometry", choices=("xa", "pseudo3d"), default="xa",
                   help="xa (default): frames reference the source frames, no frame of reference; "
                        "pseudo3d: a made-up frame of reference, frames as slices (for dcmqi / Slicer)")
    p.add_argument("--objects", metavar="JSON",
                   help='object descriptions: [{"label": 1, "name": "LAD", "category": "coronary artery", '
                        '"color": [240, 60, 60]}, ...]')
    p.add_argument("--series-description", default="FSVOS segmentation", help="of the new SEG series")
    p.set_defaults(func=run)


def load_objects(path: "os.PathLike[str] | str") -> List[Dict[str, Any]]:
    """Read an objects JSON file: a list of dicts, or ``{"objects": [...]}``."""
    p = Path(path)
    if not p.is_file():
        raise FsvosInputError("no such objects file", p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FsvosInputError(f"not a readable JSON file ({exc})", p) from None
    if isinstance(data, dict) and "objects" in data:
        data = data["objects"]
    if not isinstance(data, list) or not all(isinstance(o, dict) for o in data):
        raise FsvosInputError('expected a list of objects like [{"label": 1, "name": "...", "category": "..."}]', p)
    return data


def _png_folder(folder: Path) -> np.ndarray:
    from ..io.masks import load_mask

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".png" and not f.name.startswith("."))
    if not files:
        raise FsvosInputError("the folder holds no PNG label maps", folder)
    frames = [load_mask(f) for f in files]
    if any(f.shape != frames[0].shape for f in frames):
        raise FsvosInputError("the PNG label maps differ in size", folder)
    return np.stack(frames)


def load_label_stack(path: "os.PathLike[str] | str", cine=None) -> Tuple[np.ndarray, Optional[List[Dict[str, Any]]]]:
    """Read LABELS (see the module documentation) -> (labels (T, H, W) integer array, objects or None)."""
    p = Path(path)
    if not p.exists():
        raise FsvosInputError("no such file or folder", p)
    if p.is_dir():
        return _png_folder(p), None
    name = p.name.lower()
    objects = None
    if name.endswith(".seg.nrrd"):
        from ..io.slicer_formats import read_seg_nrrd

        labels, objects, _info = read_seg_nrrd(p)
        return labels, objects
    if name.endswith(".seq.nrrd"):
        from ..io.slicer_formats import read_label_sequence_nrrd

        labels, _info = read_label_sequence_nrrd(p)
        return labels, None
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
        except Exception as exc:  # pynrrd raises several types
            raise FsvosInputError(f"not a readable NRRD file ({exc})", p) from None
        return data, None
    if suffix in (".dcm", ".dicom", "") or is_dicom_file(p):
        from ..io.seg import read_seg

        labels, objects = read_seg(p, cine)
        return labels, objects
    raise FsvosInputError("unknown label format (expected .npz, .npy, .nrrd, .seg.nrrd, .seq.nrrd, a DICOM-SEG "
                          "or a folder of PNGs)", p)


def run(args: argparse.Namespace) -> int:
    from ..io.cine import load_cine
    from ..io.seg import check_label_stack, write_seg

    out = Path(args.output)
    if out.suffix.lower() != ".dcm":
        raise FsvosInputError("the output of export-seg is a DICOM file; name it .dcm", out)
    if not out.resolve().parent.is_dir():
        raise FsvosInputError("the folder to write into does not exist", out.resolve().parent)
    if out.is_dir():
        raise FsvosInputError("is a folder; expected a file name", out)
    objects = load_objects(args.objects) if args.objects else None
    cine = load_cine(args.cine)
    if args.seg_geometry == "xa" and cine.dicom is None:
        raise FsvosInputError("a DICOM-SEG of XA geometry needs a DICOM cine (or use --seg-geometry pseudo3d)",
                              args.cine)
    labels, found_objects = load_label_stack(args.labels, cine)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise FsvosInputError(f"expected a (frames, height, width) label stack, got shape {tuple(labels.shape)}",
                              args.labels)
    if tuple(labels.shape) != tuple(cine.frames.shape):
        raise FsvosInputError(
            f"labels of shape {tuple(labels.shape)} do not match the cine's {tuple(cine.frames.shape)} "
            f"(frames, height, width)", args.labels)
    if objects is None:
        objects = found_objects
    labels = check_label_stack(labels, args.labels)
    write_seg(out, labels, cine, objects, geometry=args.seg_geometry, series_description=args.series_description)
    n_objects = len({int(v) for v in np.unique(labels) if v})
    print(f"fsvos: wrote {out} (DICOM-SEG, {args.seg_geometry} geometry, {len(cine)} frames, "
          f"{n_objects} object(s) present)", file=sys.stderr)
    return 0
