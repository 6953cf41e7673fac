"""Video files and NIfTI stacks in.

* :func:`read_video_cine`: MP4, AVI, MOV, MKV, ... through OpenCV
  (``opencv-python-headless``); colour frames become grey (OpenCV's BGR->grey,
  ITU-R BT.601 luma); the frame time comes from the container's frame rate.
* :func:`read_nifti_cine`: ``.nii`` / ``.nii.gz`` through SimpleITK
  (``pip install SimpleITK``).  A 3D image (x, y, t) or a 4D image
  (x, y, 1, t) is a cine; rows are NIfTI's j axis and columns its i axis, as
  SimpleITK/ITK present them.  The pixel spacing is taken from the i, j
  spacing (mm); the frame time from the 4th spacing (pixdim[4]) using the
  file's time unit (``xyzt_units``), when the image is 4D.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import FsvosInputError
from .cine import Cine, window_to_uint8

__all__ = ["read_video_cine", "read_nifti_cine"]


def _check_stack(frames: np.ndarray, path: Path) -> None:
    if frames.shape[0] < 2:
        raise FsvosInputError(f"a cine needs at least 2 frames, this one has {frames.shape[0]}", path)
    if min(frames.shape[1:3]) < 16:
        raise FsvosInputError(
            f"frames of {frames.shape[1]}x{frames.shape[2]} pixels are too small (minimum 16x16)", path
        )


def read_video_cine(path: "os.PathLike[str] | str") -> Cine:
    """Read a video file (MP4/AVI/...) with OpenCV as a grey uint8 (T, H, W) cine.

    ``frame_time_ms`` is 1000 / (frames per second of the container) when the
    container states a rate; ``pixel_spacing_mm`` is None (videos carry none).
    """
    p = Path(path)
    if not p.is_file():
        raise FsvosInputError("no such file", p)
    try:
        import cv2
    except ImportError:
        raise FsvosInputError("reading videos needs OpenCV (pip install opencv-python-headless)", p) from None
    cap = cv2.VideoCapture(os.fspath(p))
    try:
        if not cap.isOpened():
            raise FsvosInputError("OpenCV cannot open this video (unknown container or codec, or a damaged file)", p)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if frame.ndim == 3:
                if frame.shape[2] == 4:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
                else:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            frames.append(np.asarray(frame))
    finally:
        cap.release()
    if not frames:
        raise FsvosInputError("the video has no decodable frames", p)
    if any(f.shape != frames[0].shape for f in frames):
        raise FsvosInputError("the frames of the video differ in size", p)
    stack = np.stack(frames)
    source_dtype = str(stack.dtype)
    stack = np.ascontiguousarray(window_to_uint8(stack, os.fspath(p)))
    _check_stack(stack, p)
    frame_time = 1000.0 / fps if np.isfinite(fps) and 0 < fps < 10000 else None
    return Cine(
        frames=stack,
        source=os.fspath(p),
        frame_time_ms=frame_time,
        extra={"source_dtype": source_dtype, "fps": fps or None},
    )


# NIfTI xyzt_units time bits (nifti1.h): 8 = s, 16 = ms, 24 = us
_NIFTI_TIME_UNIT_MS = {8: 1000.0, 16: 1.0, 24: 0.001}


def _nifti_time_scale_ms(image) -> float:
    try:
        units = int(image.GetMetaData("xyzt_units")) if image.HasMetaDataKey("xyzt_units") else 0
    except (RuntimeError, ValueError):
        units = 0
    return _NIFTI_TIME_UNIT_MS.get(units & 0x38, 1000.0)


def read_nifti_cine(path: "os.PathLike[str] | str") -> Cine:
    """Read a NIfTI image (x, y, t) or (x, y, 1, t) as a grey uint8 (T, H, W) cine (via SimpleITK).

    Non-uint8 data is mapped min..max over the whole cine to 0..255;
    RGB(A) voxels are converted to grey.  ``pixel_spacing_mm`` is the (row,
    column) = (j, i) spacing in mm; ``frame_time_ms`` comes from the time
    spacing of 4D images (in the file's time unit, seconds if unstated).
    """
    p = Path(path)
    if not p.is_file():
        raise FsvosInputError("no such file", p)
    try:
        import SimpleITK as sitk
    except ImportError:
        raise FsvosInputError("reading NIfTI needs SimpleITK (pip install SimpleITK)", p) from None
    try:
        image = sitk.ReadImage(os.fspath(p))
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        raise FsvosInputError(f"not a readable NIfTI file ({text[-160:]})", p) from None
    data = sitk.GetArrayFromImage(image)  # (t, [z,] y, x[, c]) in C order
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ncomp in (3, 4):
        data = data[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif ncomp != 1:
        raise FsvosInputError(f"NIfTI voxels with {ncomp} components are not a grey or colour cine", p)
    dim = image.GetDimension()
    spacing = image.GetSpacing()
    frame_time: Optional[float] = None
    if dim == 4:
        if data.shape[1] != 1:
            raise FsvosInputError(
                f"a 4D NIfTI cine must be (x, y, 1, t); this one has {data.shape[1]} slices per time point", p
            )
        data = data[:, 0]
        if spacing[3] > 0:
            frame_time = float(spacing[3]) * _nifti_time_scale_ms(image)
    elif dim != 3:
        raise FsvosInputError(f"expected a 3D (x, y, t) or 4D (x, y, 1, t) NIfTI image, got {dim}D", p)
    source_dtype = str(data.dtype)
    frames = np.ascontiguousarray(window_to_uint8(data, os.fspath(p)))
    _check_stack(frames, p)
    pixel_spacing: Optional[Tuple[float, float]] = None
    if spacing[0] > 0 and spacing[1] > 0:
        pixel_spacing = (float(spacing[1]), float(spacing[0]))
    return Cine(
        frames=frames,
        source=os.fspath(p),
        frame_time_ms=frame_time,
        pixel_spacing_mm=pixel_spacing,
        extra={"source_dtype": source_dtype},
    )
