"""User training data (config ``data`` entries) -> cines or still images with labels.

An entry is one of

* a table ``{cine = "...", labels = "...", frames = [..]}``: ``cine`` a path or glob of
  cines (anything :func:`fsvos.io.cine.load_cine` reads: DICOM, .npy, .nrrd, ...);
  ``labels`` the label file of each, where ``{stem}`` stands for the cine's file name
  up to its first dot: a DICOM-SEG (``.dcm``), a Slicer ``.seg.nrrd`` (whole stack, or
  one frame with its ``FSVOS_FrameIndex``) or ``.seq.nrrd``, a plain ``.nrrd`` / ``.npy``
  (T, H, W) stack or ``.npz`` (array ``labels``); ``frames`` (optional) the 0-based
  indices of the labelled frames (default: the frames with at least one label);
* a table ``{image = "...", mask = "..."}`` (``source = "static"`` only): still images
  (PNG/JPEG/TIFF, 2-D .npy/.nrrd) and their label maps (:func:`fsvos.io.masks.load_mask`);
* a string: a path or glob of case folders as ``fsvos synth`` writes them (``meta.json``
  naming ``cine`` and ``labels.npz``), or of dataset folders holding such cases.

Frames without labels are kept only for the consistency loss (see :class:`CinePool`).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from ..errors import FsvosInputError
from ..io.labels import read_label_stack

LabelledCine = Tuple[np.ndarray, np.ndarray, np.ndarray]  # frames uint8 (T,H,W), labels uint8 (T,H,W), bool (T,)


def _expand(pattern: str) -> List[str]:
    hits = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if os.path.exists(pattern) else [])
    if not hits:
        raise FsvosInputError("no file or folder matches this training data entry", pattern)
    return hits


def _labelled_flags(labels: np.ndarray, frames: Optional[List[int]], path: str) -> np.ndarray:
    t = labels.shape[0]
    if frames is None:
        flags = labels.reshape(t, -1).any(1)
    else:
        if not isinstance(frames, list) or not all(isinstance(i, int) and 0 <= i < t for i in frames):
            raise FsvosInputError(f"'frames' must be a list of frame indices 0..{t - 1}, not {frames!r}", path)
        flags = np.zeros(t, bool)
        flags[frames] = True
    if not flags.any():
        raise FsvosInputError("no labelled frame (every frame of the labels is empty)", path)
    return flags


def _with_partner(pattern: str, partner_template: str):
    """(path, partner path) for each file of ``pattern``; ``{stem}`` in the template is the file's
    name up to its first dot."""
    for path in _expand(pattern):
        yield path, partner_template.replace("{stem}", Path(path).name.split(".")[0])


def _cine_entry(entry: dict) -> List[LabelledCine]:
    from ..io.cine import load_cine

    if "labels" not in entry:
        raise FsvosInputError("a 'cine' entry needs 'labels' (the label file of each cine)", entry["cine"])
    out = []
    for cine_path, labels_path in _with_partner(entry["cine"], entry["labels"]):
        cine = load_cine(cine_path)
        labels, _objects = read_label_stack(labels_path, cine)
        out.append((cine.frames, labels, _labelled_flags(labels, entry.get("frames"), labels_path)))
    return out


def _case_folder(folder: Path) -> LabelledCine:
    from ..io.cine import load_cine

    meta_path = folder / "meta.json"
    try:
        files = json.loads(meta_path.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise FsvosInputError(f"unreadable case metadata ({exc})", meta_path) from None
    cine = load_cine(folder / files.get("cine", "cine.dcm"))
    labels, _objects = read_label_stack(folder / files.get("labels", "labels.npz"), cine)
    return cine.frames, labels, _labelled_flags(labels, None, os.fspath(folder))


def _folder_entry(pattern: str) -> List[LabelledCine]:
    out = []
    for hit in _expand(pattern):
        p = Path(hit)
        if (p / "meta.json").is_file():
            out.append(_case_folder(p))
        elif p.is_dir():
            from ..commands.evaluate import find_cases

            out.extend(_case_folder(c) for c in find_cases(p))
        else:
            raise FsvosInputError("a training data path must be a case folder (with meta.json) or a dataset folder; "
                                  "for a cine file write {cine = ..., labels = ...}", p)
    return out


def load_image(path: "os.PathLike[str] | str") -> np.ndarray:
    """A still grey image -> uint8 (H, W): PNG/JPEG/TIFF/BMP, or a 2-D .npy/.nrrd (windowed min..max)."""
    from ..io.cine import window_to_uint8

    p = Path(path)
    if not p.is_file():
        raise FsvosInputError("no such image file", p)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(p, allow_pickle=False)
        elif suffix in (".nrrd", ".nhdr"):
            import nrrd

            data, _ = nrrd.read(os.fspath(p), index_order="C")
        else:
            from PIL import Image

            with Image.open(p) as im:
                data = np.array(im.convert("L") if im.mode not in ("L", "I;16", "I", "F") else im)
    except FsvosInputError:
        raise
    except Exception as exc:
        raise FsvosInputError(f"not a readable image ({' '.join(str(exc).split())[:160]})", p) from None
    data = np.squeeze(np.asarray(data))
    if data.ndim != 2:
        raise FsvosInputError(f"a still image must be 2-D, got an array of shape {data.shape}", p)
    return window_to_uint8(data, os.fspath(p))


def _image_entry(entry: dict) -> List[Tuple[np.ndarray, np.ndarray]]:
    from ..io.masks import load_mask

    if "mask" not in entry:
        raise FsvosInputError("an 'image' entry needs 'mask' (the label map of each image)", entry["image"])
    out = []
    for image_path, mask_path in _with_partner(entry["image"], entry["mask"]):
        image, mask = load_image(image_path), load_mask(mask_path)
        if image.shape != mask.shape:
            raise FsvosInputError(f"mask of shape {mask.shape} does not match the image {image.shape} ({image_path})",
                                  mask_path)
        out.append((image, mask))
    return out


def load_entries(entries: List[Any], static: bool):
    """-> (cines [LabelledCine], images [(image, labels)]) from the config's ``data`` list."""
    cines: List[LabelledCine] = []
    images: List[Tuple[np.ndarray, np.ndarray]] = []
    for entry in entries:
        if isinstance(entry, str):
            cines.extend(_folder_entry(entry))
        elif "cine" in entry:
            cines.extend(_cine_entry(entry))
        elif "image" in entry:
            if not static:
                raise FsvosInputError("'image' entries are only for source = \"static\"", entry["image"])
            images.extend(_image_entry(entry))
        else:
            raise FsvosInputError(f"a data entry needs 'cine' or 'image', not {sorted(entry)}", None)
    return cines, images


def build_pool(cfg, log=lambda msg: None, at_step: int = 0):
    """The sample pool of ``cfg.source``: a :class:`CinePool` ("synth", "cines") or a
    :class:`StaticPool` ("static": the user's images and labelled cine frames, or, without
    ``data``, the frames of synthetic cines), with the config's intensity augmentation.
    ``at_step``: a refreshed synthetic pool as it is at that step of the run (resume)."""
    from .data import Intensity

    pool = _build_pool(cfg, log, at_step)
    pool.intensity = Intensity(gamma=cfg.gamma_sigma, contrast=cfg.contrast_sigma, brightness=cfg.brightness_sigma,
                               noise=cfg.noise_sigma)
    return pool


def _build_pool(cfg, log, at_step: int):
    import time

    from .data import CinePool, StaticPool

    t0 = time.perf_counter()
    if cfg.source == "synth" or (cfg.source == "static" and not cfg.data):
        refresh = cfg.refresh_every if cfg.source == "synth" else 0
        pool = CinePool.synthetic(cfg.cases, cfg.data_seed, size=cfg.size, frames=tuple(cfg.frames), split=cfg.split,
                                  refresh_every=refresh, refresh_cases=cfg.refresh_cases, at_step=at_step)
        log(f"generated {cfg.cases} synthetic cines in {time.perf_counter() - t0:.0f} s")
        return pool if cfg.source == "synth" else StaticPool.from_cines(pool, elastic=cfg.static_elastic)
    cines, images = load_entries(cfg.data, static=cfg.source == "static")
    n_lab = sum(int(c[2].sum()) for c in cines)
    log(f"read {len(cines)} cines ({n_lab} labelled frames of {sum(len(c[0]) for c in cines)})"
        + (f" and {len(images)} images" if images else "") + f" in {time.perf_counter() - t0:.0f} s")
    if cfg.source == "cines":
        return CinePool([(f, l) for f, l, _ in cines], labelled=[m for _, _, m in cines])
    still = list(images)
    for frames, labels, flags in cines:
        still.extend((frames[t], labels[t]) for t in np.flatnonzero(flags))
    return StaticPool(still, elastic=cfg.static_elastic)
