"""Non-DICOM cines: videos through OpenCV, NIfTI through SimpleITK, NPY/NRRD stacks - written and read back."""

from __future__ import annotations

import os

import cv2
import nrrd
import numpy as np
import pytest

from dicom_factory import random_cine
from fsvos.errors import FsvosInputError
from fsvos.io.cine import load_cine, window_to_uint8


@pytest.mark.parametrize("suffix,fourcc", [(".avi", "MJPG"), (".mp4", "mp4v")])
def test_video_read(tmp_path, suffix, fourcc):
    frames = random_cine(6, 64, 80)
    path = tmp_path / f"cine{suffix}"
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*fourcc), 12.5, (80, 64), True)
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    cine = load_cine(path)
    assert cine.frames.shape == (6, 64, 80) and cine.frames.dtype == np.uint8
    assert cine.frame_time_ms == pytest.approx(80.0)
    assert np.abs(cine.frames.astype(int) - frames.astype(int)).mean() < 4  # lossy codecs
    assert cine.dicom is None and cine.source_frames is None


def test_damaged_video_is_refused(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(FsvosInputError) as info:
        load_cine(tmp_path / "bad.mp4")
    assert os.fspath(tmp_path / "bad.mp4") in str(info.value)


def test_nifti_3d_and_4d(tmp_path):
    sitk = pytest.importorskip("SimpleITK", reason="NIfTI reading uses SimpleITK (pip install SimpleITK)")
    frames = random_cine(5, 40, 32, bits=12)
    image = sitk.GetImageFromArray(frames.astype(np.int16))  # (t, y, x) -> x, y, t
    image.SetSpacing((0.25, 0.3, 1.0))
    sitk.WriteImage(image, os.fspath(tmp_path / "c3.nii.gz"))
    cine = load_cine(tmp_path / "c3.nii.gz")
    np.testing.assert_array_equal(cine.frames, window_to_uint8(frames))
    assert cine.pixel_spacing_mm == pytest.approx((0.3, 0.25)) and cine.frame_time_ms is None

    image4 = sitk.JoinSeries([sitk.GetImageFromArray(f[np.newaxis].astype(np.uint8) // 16) for f in frames])
    image4.SetSpacing((0.25, 0.3, 1.0, 0.04))  # time spacing in s (NIfTI default unit here)
    sitk.WriteImage(image4, os.fspath(tmp_path / "c4.nii"))
    cine4 = load_cine(tmp_path / "c4.nii")
    assert cine4.frames.shape == (5, 40, 32)
    assert cine4.frame_time_ms == pytest.approx(40.0, rel=1e-3)


def test_npy_and_nrrd_stacks(tmp_path):
    frames = random_cine(4, 32, 48, bits=16)
    np.save(tmp_path / "c.npy", frames)
    np.testing.assert_array_equal(load_cine(tmp_path / "c.npy").frames, window_to_uint8(frames))
    nrrd.write(os.fspath(tmp_path / "c.nrrd"), frames, index_order="C")
    np.testing.assert_array_equal(load_cine(tmp_path / "c.nrrd").frames, window_to_uint8(frames))
