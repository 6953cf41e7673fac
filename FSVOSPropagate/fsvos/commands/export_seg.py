"""``fsvos export-seg``: any label stack of a cine -> a DICOM Segmentation of every frame.

LABELS: any label stack :func:`fsvos.io.labels.read_label_stack` reads (.npz, .npy, .nrrd,
.seg.nrrd, .seq.nrrd, a DICOM-SEG, or a folder of PNG label maps).

``--objects objects.json``: ``[{"label": 1, "name": "LAD", "category": "coronary artery",
"color": [240, 60, 60]}, ...]`` (or ``{"objects": [...]}``); categories are those of
:mod:`fsvos.io.seg_codes`.  Without it objects come from LABELS when it names them,
else one generic object per label value.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..errors import FsvosInputError


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
    from ..io.json_file import read_json_file

    p = Path(path)
    data = read_json_file(p, "objects")
    if isinstance(data, dict) and "objects" in data:
        data = data["objects"]
    if not isinstance(data, list) or not all(isinstance(o, dict) for o in data):
        raise FsvosInputError('expected a list of objects like [{"label": 1, "name": "...", "category": "..."}]', p)
    return data


def run(args: argparse.Namespace) -> int:
    from ..io.cine import load_cine
    from ..io.labels import read_label_stack
    from ..io.outputs import check_output_file
    from ..io.seg import write_seg

    out = Path(args.output)
    if out.suffix.lower() != ".dcm":
        raise FsvosInputError("the output of export-seg is a DICOM file; name it .dcm", out)
    check_output_file(out)
    objects = load_objects(args.objects) if args.objects else None
    cine = load_cine(args.cine)
    if args.seg_geometry == "xa" and cine.dicom is None:
        raise FsvosInputError("a DICOM-SEG of XA geometry needs a DICOM cine (or use --seg-geometry pseudo3d)",
                              args.cine)
    labels, found_objects = read_label_stack(args.labels, cine)
    if objects is None:
        objects = found_objects
    write_seg(out, labels, cine, objects, geometry=args.seg_geometry, series_description=args.series_description)
    n_objects = len({int(v) for v in np.unique(labels) if v})
    print(f"fsvos: wrote {out} (DICOM-SEG, {args.seg_geometry} geometry, {len(cine)} frames, "
          f"{n_objects} object(s) present)", file=sys.stderr)
    return 0
