"""DICOM cines in: every variant written with pydicom, read back with fsvos.io.dicom_read; pydicom's own real cines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_factory import (
    ENHANCED_XA,
    PATIENT_ID,
    PATIENT_NAME,
    TRANSFER_SYNTAXES,
    US_MULTIFRAME,
    XA,
    XRF,
    random_cine,
    write_enhanced_xa,
    write_multiframe,
    write_single_frame_series,
    write_sr,
)
from fsvos.errors import FsvosInputError
from fsvos.io.cine import load_cine, window_to_uint8
from fsvos.io.dicom_read import read_dicom_cine

REPO = Path(__file__).resolve().parents[1]


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR window (PS3.3 C.11.2.1.2.1) to 0..255."""
    x = x.astype(np.float64)
    c, w = center - 0.5, width - 1
    y = ((x - c) / w + 0.5) * 255.0
    y[x <= c - w / 2] = 0
    y[x > c + w / 2] = 255
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- multi-frame variants


@pytest.mark.parametrize("sop_class", [XA, XRF])
def test_multiframe_8bit_exact_with_metadata(tmp_path, sop_class):
    frames = random_cine(5, 64, 48, bits=8, seed=3)
    ds = write_multiframe(tmp_path / "cine.dcm", frames, sop_class=sop_class, frame_time=66.7,
                          pixel_spacing=(0.3, 0.25), imager_pixel_spacing=(0.4, 0.4))
    cine = read_dicom_cine(tmp_path / "cine.dcm")
    np.testing.assert_array_equal(cine.frames, frames)
    assert cine.frames.dtype == np.uint8
    assert cine.frame_time_ms == pytest.approx(66.7)
    assert cine.pixel_spacing_mm == pytest.approx((0.3, 0.25))  # PixelSpacing wins over ImagerPixelSpacing
    assert cine.source_frames == [(ds.SOPInstanceUID, i + 1) for i in range(5)]
    assert "PixelData" not in cine.dicom
    assert str(cine.dicom.PatientName) == PATIENT_NAME and cine.dicom.PatientID == PATIENT_ID
    assert cine.extra["dicom_sop_class_uid"] == sop_class
    assert cine.extra["dicom_numbered_frames"] is True
    # load_cine dispatches DICOM files (with and without suffix) here
    shutil.copy(tmp_path / "cine.dcm", tmp_path / "CINE0001")
    np.testing.assert_array_equal(load_cine(tmp_path / "CINE0001").frames, frames)


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_high_bit_depth_without_voi_is_min_max_windowed(tmp_path, bits):
    frames = random_cine(3, 32, 40, bits=bits, seed=bits)
    write_multiframe(tmp_path / "c.dcm", frames, sop_class=XRF, bits_stored=bits, frame_time=None, cine_rate=15,
                     pixel_spacing=None, imager_pixel_spacing=(0.35, 0.35))
    cine = read_dicom_cine(tmp_path / "c.dcm")
    np.testing.assert_array_equal(cine.frames, window_to_uint8(frames))
    assert cine.frame_time_ms == pytest.approx(1000 / 15)
    assert cine.pixel_spacing_mm == pytest.approx((0.35, 0.35))  # ImagerPixelSpacing when no PixelSpacing
    assert cine.extra["bits_stored"] == bits


def test_signed_16bit(tmp_path):
    frames = random_cine(3, 32, 32, bits=16, seed=5, signed=True)
    write_multiframe(tmp_path / "s.dcm", frames, bits_stored=16)
    np.testing.assert_array_equal(read_dicom_cine(tmp_path / "s.dcm").frames, window_to_uint8(frames))


def test_monochrome1_is_inverted(tmp_path):
    frames = random_cine(3, 32, 32, bits=8, seed=7)
    write_multiframe(tmp_path / "m1.dcm", frames, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_dicom_cine(tmp_path / "m1.dcm").frames, 255 - frames)


def test_window_center_width_applied(tmp_path):
    frames = random_cine(3, 32, 32, bits=12, seed=8)
    write_multiframe(tmp_path / "w.dcm", frames, bits_stored=12, window=(1500, 1000))
    np.testing.assert_array_equal(read_dicom_cine(tmp_path / "w.dcm").frames, _linear_window(frames, 1500, 1000))


def test_window_after_rescale_and_monochrome1(tmp_path):
    frames = random_cine(3, 32, 32, bits=12, seed=9)
    write_multiframe(tmp_path / "r.dcm", frames, bits_stored=12, rescale=(2.0, -1000.0), window=(2000, 3000),
                     photometric="MONOCHROME1")
    expected = 255 - _linear_window(frames * 2.0 - 1000.0, 2000, 3000)
    np.testing.assert_array_equal(read_dicom_cine(tmp_path / "r.dcm").frames, expected)


def test_voi_lut_sequence_applied(tmp_path):
    frames = random_cine(3, 32, 32, bits=10, seed=10)
    lut = (np.sqrt(np.arange(1024) / 1023.0) * 4095).astype(np.uint16)  # a gamma-like LUT, 12-bit output
    write_multiframe(tmp_path / "lut.dcm", frames, bits_stored=10, voi_lut=lut)
    out = lut[frames].astype(np.float64)
    expected = np.clip(np.rint((out - lut.min()) * 255.0 / (lut.max() - lut.min())), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(read_dicom_cine(tmp_path / "lut.dcm").frames, expected)


def test_frame_time_vector(tmp_path):
    frames = random_cine(4, 32, 32, seed=11)
    write_multiframe(tmp_path / "v.dcm", frames, frame_time=None, frame_time_vector=[0, 40, 40, 40])
    cine = read_dicom_cine(tmp_path / "v.dcm")
    assert cine.frame_time_ms == pytest.approx(40.0)
    assert cine.extra["frame_time_vector_ms"] == [0, 40, 40, 40]


def test_enhanced_xa_functional_groups(tmp_path):
    frames = random_cine(4, 48, 40, bits=12, seed=12)
    write_enhanced_xa(tmp_path / "exa.dcm", frames, window=(2048, 2048), frame_step_ms=40.0, pixel_spacing=(0.2, 0.3))
    cine = read_dicom_cine(tmp_path / "exa.dcm")
    np.testing.assert_array_equal(cine.frames, _linear_window(frames, 2048, 2048))
    assert cine.frame_time_ms == pytest.approx(40.0)
    assert cine.pixel_spacing_mm == pytest.approx((0.2, 0.3))
    assert cine.extra["dicom_sop_class_uid"] == ENHANCED_XA


@pytest.mark.parametrize("transfer_syntax,bits", [
    (ts, bits) for ts in sorted(TRANSFER_SYNTAXES) for bits in (8, 12) if not (ts == "jpeg-baseline" and bits > 8)
])
def test_compressed_transfer_syntaxes(tmp_path, transfer_syntax, bits):
    frames = random_cine(3, 40, 48, bits=bits, seed=20 + bits)
    path = tmp_path / f"{transfer_syntax}.dcm"
    write_multiframe(path, frames, transfer_syntax=transfer_syntax, bits_stored=bits)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[transfer_syntax]
    cine = read_dicom_cine(path)
    expected = frames if bits == 8 else window_to_uint8(frames)
    if transfer_syntax == "jpeg-baseline":  # lossy
        assert np.abs(cine.frames.astype(int) - expected.astype(int)).max() <= 3
    else:
        np.testing.assert_array_equal(cine.frames, expected)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_cine_to_grey(tmp_path, photometric):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    stored = rgb
    if photometric == "YBR_FULL":
        from pydicom.pixels import convert_color_space

        stored = convert_color_space(rgb, "RGB", "YBR_FULL")
    write_multiframe(tmp_path / "c.dcm", stored, sop_class=US_MULTIFRAME, photometric=photometric)
    grey = read_dicom_cine(tmp_path / "c.dcm").frames
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(grey.astype(float) - expected).max() <= 1.5  # YBR_FULL round trip is not bit-exact


def test_rgb_rle_colour_cine(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    write_multiframe(tmp_path / "rle.dcm", rgb, sop_class=US_MULTIFRAME, transfer_syntax="rle")
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(read_dicom_cine(tmp_path / "rle.dcm").frames - expected).max() <= 0.5 + 1e-9


# ----------------------------------------------------------------------------- pydicom's shipped real files


def test_pydicom_ultrasound_ybr_jpeg_cine():
    path = get_testdata_file("examples_ybr_color.dcm")  # real US cine: 30 frames, YBR_FULL_422, JPEG baseline
    cine = load_cine(path)
    assert cine.frames.shape == (30, 240, 320) and cine.frames.dtype == np.uint8
    assert cine.frame_time_ms == pytest.approx(33.333)
    # calibrated from the ultrasound region (PhysicalDeltaX/Y in cm)
    assert cine.pixel_spacing_mm == pytest.approx((0.5105, 0.5105), abs=1e-4)
    ds = pydicom.dcmread(path)
    luma = ds.pixel_array.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(cine.frames.astype(float) - luma).max() <= 1.0
    assert cine.frames.std() > 10  # real image content


@pytest.mark.parametrize("name", ["SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm"])
def test_pydicom_rgb_rle_two_frame_files(name):
    cine = load_cine(get_testdata_file(name))
    assert cine.frames.shape == (2, 100, 100)
    assert cine.frames.max() > 200 and cine.frames.min() < 50  # the colour bars survive as grey levels


def test_palette_colour_cine(tmp_path):
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))  # real US image, PALETTE COLOR
    index = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([index, index[::-1]]).tobytes()
    ds.save_as(tmp_path / "palette.dcm")
    grey = read_dicom_cine(tmp_path / "palette.dcm").frames
    rgb = apply_color_lut(np.stack([index, index[::-1]]), ds).astype(np.float64)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    expected = (rgb @ np.array([0.299, 0.587, 0.114])) * 255.0 / (2**bits - 1)
    assert np.abs(grey - expected).max() <= 0.5 + 1e-6


# ----------------------------------------------------------------------------- folders


def test_folder_of_single_frames_sorted_by_instance_number(tmp_path):
    frames = random_cine(5, 32, 32, seed=30)
    datasets = write_single_frame_series(tmp_path / "series", frames, frame_step_ms=100.0)
    (tmp_path / "series" / "notes.txt").write_text("not DICOM")
    cine = load_cine(tmp_path / "series")
    np.testing.assert_array_equal(cine.frames, frames)
    assert cine.source_frames == [(ds.SOPInstanceUID, 1) for ds in datasets]
    assert cine.frame_time_ms == pytest.approx(100.0)
    assert cine.pixel_spacing_mm == pytest.approx((0.5, 0.5))
    assert cine.extra["dicom_numbered_frames"] is False


def test_folder_sorted_by_acquisition_time_without_instance_numbers(tmp_path):
    frames = random_cine(4, 32, 32, seed=31)
    write_single_frame_series(tmp_path / "s", frames, instance_numbers=False, frame_step_ms=50.0)
    cine = read_dicom_cine(tmp_path / "s")
    np.testing.assert_array_equal(cine.frames, frames)
    assert cine.frame_time_ms == pytest.approx(50.0)


def test_folder_with_one_multiframe_file(tmp_path):
    frames = random_cine(3, 32, 32, seed=32)
    (tmp_path / "d").mkdir()
    write_multiframe(tmp_path / "d" / "x.dcm", frames)
    np.testing.assert_array_equal(read_dicom_cine(tmp_path / "d").frames, frames)


# ----------------------------------------------------------------------------- bad input


def _error(path) -> str:
    with pytest.raises(FsvosInputError) as info:
        load_cine(path)
    message = str(info.value)
    assert "\n" not in message and os.fspath(path) in message
    return info.value.problem


def test_sr_is_not_an_image(tmp_path):
    write_sr(tmp_path / "sr.dcm")
    assert "not an image cine" in _error(tmp_path / "sr.dcm")


def test_seg_is_not_a_cine(tmp_path):
    from fsvos.io.seg import write_seg

    frames = random_cine(3, 32, 32)
    write_multiframe(tmp_path / "xa.dcm", frames)
    labels = np.zeros(frames.shape, np.uint8)
    labels[:, 4:10, 4:10] = 1
    write_seg(tmp_path / "seg.dcm", labels, read_dicom_cine(tmp_path / "xa.dcm"))
    assert "Segmentation, not an image cine" in _error(tmp_path / "seg.dcm")


def test_single_frame_is_refused(tmp_path):
    write_multiframe(tmp_path / "one.dcm", random_cine(1, 32, 32))
    assert "at least 2 frames" in _error(tmp_path / "one.dcm")
    assert "at least 2 frames" in _error(get_testdata_file("CT_small.dcm"))


def test_folder_with_two_series_is_refused(tmp_path):
    write_single_frame_series(tmp_path / "mix", random_cine(2, 32, 32, seed=1))
    write_single_frame_series(tmp_path / "mix" / "other", random_cine(2, 32, 32, seed=2))
    assert "2 different series" in _error(tmp_path / "mix")


def test_truncated_file_is_refused(tmp_path):
    write_multiframe(tmp_path / "full.dcm", random_cine(4, 64, 64))
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    assert "truncated or damaged" in _error(tmp_path / "cut.dcm")
    (tmp_path / "head.dcm").write_bytes(data[:300])
    assert "truncated or damaged" in _error(tmp_path / "head.dcm")


def test_truncated_compressed_file_is_refused(tmp_path):
    write_multiframe(tmp_path / "full.dcm", random_cine(4, 64, 64, bits=12), transfer_syntax="jpeg-ls", bits_stored=12)
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 400])
    assert "truncated or damaged" in _error(tmp_path / "cut.dcm")


def test_missing_pixel_data_is_refused(tmp_path):
    write_multiframe(tmp_path / "x.dcm", random_cine(3, 32, 32))
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    assert "no pixel data" in _error(tmp_path / "nopix.dcm")


def test_unsupported_transfer_syntax_is_refused(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG4HP41

    write_multiframe(tmp_path / "x.dcm", random_cine(3, 32, 32))
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "mpeg.dcm")
    problem = _error(tmp_path / "mpeg.dcm")
    assert "is not supported" in problem and "MPEG-4" in problem


def test_not_dicom_is_refused(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"hello" * 100)
    assert "not a DICOM file" in _error(tmp_path / "x.dcm")


def test_missing_decoder_names_the_package(tmp_path):
    """In a Python where no JPEG-LS decoder (pyjpegls, pylibjpeg, GDCM) imports, the error names pyjpegls."""
    frames = random_cine(3, 32, 32, bits=12)
    write_multiframe(tmp_path / "jls.dcm", frames, transfer_syntax="jpeg-ls", bits_stored=12)
    code = (
        "import sys\n"
        "sys.modules['jpeg_ls'] = None\n"
        "sys.modules['gdcm'] = None\n"
        "sys.modules['pylibjpeg'] = None\n"
        "from fsvos.errors import FsvosInputError\n"
        "from fsvos.io.dicom_read import read_dicom_cine\n"
        "try:\n"
        f"    read_dicom_cine({os.fspath(tmp_path / 'jls.dcm')!r})\n"
        "except FsvosInputError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "no decoder for it is installed (pip install pyjpegls)" in out.stdout, out.stdout + out.stderr


def test_cli_bad_cine_one_line_exit_2_nothing_written(tmp_path, capsys):
    from fsvos import cli

    write_sr(tmp_path / "sr.dcm")
    np.save(tmp_path / "labels.npy", np.zeros((3, 32, 32), np.uint8))
    out = tmp_path / "out.dcm"
    rc = cli.main(["export-seg", os.fspath(tmp_path / "labels.npy"), os.fspath(tmp_path / "sr.dcm"), os.fspath(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("fsvos: error: ") and "not an image cine" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "sr.dcm"]
    # the same through `fsvos propagate`, with a truncated cine
    write_multiframe(tmp_path / "full.dcm", random_cine(4, 64, 64))
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    rc = cli.main(["propagate", os.fspath(tmp_path / "cut.dcm"), "--support", f"0={tmp_path / 'labels.npy'}",
                   "--output", os.fspath(tmp_path / "o.npz"), "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "truncated or damaged" in err, err
    assert not (tmp_path / "o.npz").exists()
