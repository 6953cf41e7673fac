"""Write synthetic cases and datasets to disk.

Per case folder (``case_000``, ``case_001``, ...):

* ``cine.dcm``: multi-frame XA DICOM (8-bit, uncompressed) of the frames;
* ``labels.npz``: array ``labels`` uint8 (T, H, W), 0 = background;
* ``support.png``: 8-bit label PNG of the support frame (pixel value = label);
* ``meta.json``: objects, support frame, sizes, seed, split, parameters.

A case is written into a hidden temporary folder next to its final place and
renamed when complete, so an interrupted run never leaves a partial case.
``dataset.json`` (written last, also atomically) lists the cases.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from PIL import Image

from ..io.atomic import atomic_file, default_mode

from ..io.xa_write import write_xa_cine
from .case import GENERATOR_VERSION, SPLITS, SynthCase, generate_case
from .contrast import VISIBLE_ATTENUATION
from .devices import DEVICE_CATEGORIES

PathLike = Union[str, "os.PathLike[str]"]


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset generated with ``seed`` (deterministic, 0..2**63-1)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def case_frame_count(seed: int, index: int, frames: Tuple[int, int]) -> int:
    """Frame count of case ``index``: uniform in the inclusive range ``frames``, from (seed, index)."""
    lo, hi = frames
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))
    return int(rng.integers(lo, hi + 1))


def _meta(case: SynthCase) -> Dict[str, object]:
    return {
        "format": "fsvos-synth-case",
        "generator_version": GENERATOR_VERSION,
        "objects": case.objects,
        "device_labels": [o["label"] for o in case.objects if o.get("device")],
        "support_frame": case.support_frame,
        "n_frames": case.n_frames,
        "size": case.size,
        "seed": case.seed,
        "split": case.split,
        "low_dose": case.low_dose,
        "frame_time_ms": case.frame_time_ms,
        "pixel_spacing_mm": case.pixel_spacing_mm,
        "vessel_visibility_attenuation": VISIBLE_ATTENUATION,
        "files": {"cine": "cine.dcm", "labels": "labels.npz", "support": "support.png"},
        "params": case.params,
    }


def _write_files(case: SynthCase, folder: Path) -> None:
    write_xa_cine(
        folder / "cine.dcm",
        case.frames,
        frame_time_ms=case.frame_time_ms,
        pixel_spacing_mm=case.pixel_spacing_mm,
        patient_name=f"SYNTH^CASE{case.seed % 1000000:06d}",
        patient_id=f"SYN{case.seed % 100000000:08d}",
        extra={"SeriesDescription": "fsvos synthetic cine" + (" (low dose)" if case.low_dose else ""),
               "RadiationSetting": "SC" if case.low_dose else "GR"},
    )
    np.savez_compressed(folder / "labels.npz", labels=case.labels)
    Image.fromarray(np.ascontiguousarray(case.labels[case.support_frame])).save(folder / "support.png")
    with open(folder / "meta.json", "w", encoding="utf-8") as fh:
        json.dump(_meta(case), fh, indent=1)
        fh.write("\n")


def write_case(case: SynthCase, folder: PathLike, replace: bool = False) -> Path:
    """Write ``case`` to ``folder``, atomically (temporary folder, then rename).

    ``folder`` must not exist or be empty, unless ``replace`` is True: then
    an existing case folder is swapped for the new one once it is complete.
    Returns the folder path.
    """
    dest = Path(folder)
    if dest.exists() and not replace and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(errno.EEXIST, "exists and is not empty", str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    old = None
    try:
        _write_files(case, tmp)
        os.chmod(tmp, default_mode(0o777))
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "case")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists() and (old / "case").exists():
            os.replace(old / "case", dest)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest


def _atomic_json(path: Path, data: object) -> None:
    with atomic_file(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


def write_dataset(
    out_dir: PathLike,
    cases: int,
    seed: int,
    size: int = 512,
    frames: Union[int, Sequence[int]] = (30, 80),
    split: str = "all",
    low_dose: Optional[bool] = None,
    overwrite: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> List[Path]:
    """Generate and write ``cases`` cases into ``out_dir``.

    Parameters
    ----------
    out_dir: folder (created if needed).
    cases: number of cases (>= 1).
    seed: dataset seed; case i uses :func:`case_seed` (seed, i).
    size: frame size in pixels.
    frames: frame count, or inclusive (min, max) range drawn per case from (seed, i).
    split: "all", "no-devices" or "devices".
    low_dose: force low-dose (True) or cine (False) for all cases; None = drawn per case.
    overwrite: replace existing case folders / dataset.json; otherwise they are an error.
        Case folders beyond ``cases`` from an earlier run are left alone;
        ``dataset.json`` lists the cases of this run.
    progress: called as ``progress(done, total)`` after each case.

    Returns
    -------
    The case folders, in order.

    Raises
    ------
    ValueError: bad arguments.  FileExistsError: the dataset exists and not ``overwrite``.
    """
    if int(cases) != cases or cases < 1:
        raise ValueError(f"cases must be a positive integer, got {cases!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng_frames = (int(frames), int(frames)) if np.isscalar(frames) else (int(frames[0]), int(frames[1]))
    if rng_frames[0] > rng_frames[1]:
        raise ValueError(f"frame range {rng_frames} is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"case_{i:03d}" for i in range(cases)]
    existing = [n for n in names + ["dataset.json"] if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(errno.EEXIST, f"already contains {existing[0]}", str(out))
    entries, folders = [], []
    for i, name in enumerate(names):
        s = case_seed(seed, i)
        n = case_frame_count(seed, i, rng_frames)
        case = generate_case(s, size=size, n_frames=n, split=split, low_dose=low_dose)
        dest = out / name
        write_case(case, dest, replace=overwrite)
        folders.append(dest)
        entries.append({
            "name": name, "seed": s, "n_frames": n, "support_frame": case.support_frame,
            "low_dose": case.low_dose, "objects": case.objects,
        })
        if progress is not None:
            progress(i + 1, cases)
    _atomic_json(out / "dataset.json", {
        "format": "fsvos-synth-dataset",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": int(size),
        "frames": list(rng_frames),
        "split": split,
        "device_categories": list(DEVICE_CATEGORIES),
        "cases": entries,
    })
    return folders
