"""DICOM-SEG of every frame: cines of every variant -> propagate -> write SEG -> dciodvfy -> highdicom / dcmqi / ours.

dciodvfy (Debian package dicom3tools) and dcmqi's segimage2itkimage / itkimage2segimage (PyPI
package dcmqi) are run for real; a test skips only the step whose tool is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_factory import (
    CT,
    PATIENT_ID,
    PATIENT_NAME,
    US_MULTIFRAME,
    XA,
    XRF,
    blob_labels,
    dciodvfy,
    random_cine,
    write_enhanced_xa,
    write_multiframe,
    write_single_frame_series,
)
from fsvos.errors import FsvosInputError
from fsvos.io import seg_codes
from fsvos.io.cine import load_cine
from fsvos.io.seg import SEG_SOP_CLASS_UID, read_seg, write_seg

OBJECTS = [
    {"label": 1, "name": "LAD", "category": "coronary artery"},
    {"label": 2, "name": "Guiding catheter", "category": "catheter", "color": (10, 120, 250)},
    {"label": 3, "name": "Wire", "category": "guidewire"},
]


def _tool(name: str):
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return os.fspath(candidate) if candidate.exists() else None


def assert_dciodvfy_clean(path) -> None:
    """dciodvfy must report no error (run last in a test: skips when dicom3tools is missing)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not on PATH (install the Debian package dicom3tools)")
    errors, warns, text = dciodvfy(path)
    assert errors == [], text
    assert "Segmentation" in text


@pytest.fixture(scope="module")
def propagator():
    from fsvos import Propagator, load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained-default warning
        model = load_model(None)
    return Propagator(model)


def _support(h: int, w: int) -> np.ndarray:
    sup = np.zeros((h, w), np.uint8)
    sup[h // 4 : h // 2, w // 4 : w // 2] = 1
    sup[h // 2 + 4 : h // 2 + 10, 4 : w - 4] = 2
    sup[4:8, w - 12 : w - 4] = 3
    return sup


def _hd_labels(path, cine) -> np.ndarray:
    """Labels per cine frame as highdicom reads them back from the SEG."""
    seg = hd.seg.segread(path)
    uids = [uid for uid, _n in cine.source_frames]
    if cine.extra.get("dicom_numbered_frames"):
        assert len(set(uids)) == 1
        return seg.get_pixels_by_source_frame(
            uids[0], source_frame_numbers=[n for _u, n in cine.source_frames], combine_segments=True,
            assert_missing_frames_are_empty=True)
    return seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)


def _roundtrip(tmp_path, cine, labels, objects=OBJECTS, geometry="xa", name="seg.dcm"):
    out = tmp_path / name
    write_seg(out, labels, cine, objects, geometry=geometry)
    np.testing.assert_array_equal(_hd_labels(out, cine), labels)
    back, back_objects = read_seg(out, cine)
    np.testing.assert_array_equal(back, labels)
    assert [o["label"] for o in back_objects] == [o["label"] for o in objects]
    assert_dciodvfy_clean(out)
    return out


# ----------------------------------------------------------------------------- every cine variant -> SEG


def _variant(tmp_path, kind):
    p = tmp_path / "cine.dcm"
    if kind == "xa-8-explicit":
        write_multiframe(p, random_cine(4, 64, 64, bits=8))
    elif kind == "xrf-12-rle":
        write_multiframe(p, random_cine(4, 64, 64, bits=12), sop_class=XRF, transfer_syntax="rle", bits_stored=12)
    elif kind == "xa-16-jpeg-lossless":
        write_multiframe(p, random_cine(4, 64, 64, bits=16), transfer_syntax="jpeg-lossless", bits_stored=16)
    elif kind == "xa-12-jpeg-ls":
        write_multiframe(p, random_cine(4, 64, 64, bits=12), transfer_syntax="jpeg-ls", bits_stored=12)
    elif kind == "xa-12-jpeg2000":
        write_multiframe(p, random_cine(4, 64, 64, bits=12), transfer_syntax="jpeg2000", bits_stored=12)
    elif kind == "xa-8-jpeg-baseline":
        write_multiframe(p, random_cine(4, 64, 64, bits=8), transfer_syntax="jpeg-baseline")
    elif kind == "xa-12-monochrome1-window":
        write_multiframe(p, random_cine(4, 64, 64, bits=12), bits_stored=12, photometric="MONOCHROME1",
                         window=(2048, 3000))
    elif kind == "enhanced-xa":
        write_enhanced_xa(p, random_cine(4, 64, 64, bits=12))
    elif kind == "us-rgb":
        rgb = np.repeat(random_cine(4, 64, 64)[..., None], 3, axis=3)
        write_multiframe(p, rgb, sop_class=US_MULTIFRAME)
    elif kind == "xa-single-frame-folder":
        p = tmp_path / "series"
        write_single_frame_series(p, random_cine(4, 64, 64))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return p


@pytest.mark.parametrize("kind", [
    "xa-8-explicit", "xrf-12-rle", "xa-16-jpeg-lossless", "xa-12-jpeg-ls", "xa-12-jpeg2000",
    "xa-8-jpeg-baseline", "xa-12-monochrome1-window", "enhanced-xa", "us-rgb", "xa-single-frame-folder",
])
def test_every_cine_variant_propagates_to_a_valid_seg(tmp_path, propagator, kind):
    cine = load_cine(_variant(tmp_path, kind))
    assert cine.frames.shape == (4, 64, 64)
    result = propagator.propagate(cine.frames, {0: _support(64, 64)})
    labels = result.labels
    assert labels.shape == cine.frames.shape and labels[0].max() == 3
    _roundtrip(tmp_path, cine, labels)


def test_pydicom_real_ultrasound_cine_propagates_to_a_valid_seg(tmp_path, propagator):
    cine = load_cine(get_testdata_file("examples_ybr_color.dcm"))
    sup = np.zeros(cine.frames.shape[1:], np.uint8)
    sup[100:150, 140:220] = 1
    sup[40:60, 100:180] = 2
    result = propagator.propagate(cine.frames, {0: sup})
    objects = [{"label": 1, "name": "Chamber", "category": "vessel"}, {"label": 2, "name": "Wall"}]
    out = _roundtrip(tmp_path, cine, result.labels, objects)
    seg = pydicom.dcmread(out)
    assert seg.PatientID == "204" and str(seg.PatientName) == "PLA"
    assert seg.StudyInstanceUID == cine.dicom.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPClassUID == \
        "1.2.840.10008.5.1.4.1.1.3.1"


# ----------------------------------------------------------------------------- the XA layout in detail


def test_xa_seg_layout(tmp_path):
    from fsvos.io.xa_write import write_xa_cine

    frames = random_cine(6, 48, 40, bits=12, seed=4)
    write_xa_cine(tmp_path / "xa.dcm", frames, frame_time_ms=66.7, pixel_spacing_mm=0.3, patient_name=PATIENT_NAME,
                  patient_id=PATIENT_ID, rle=True, bits_stored=12)
    cine = load_cine(tmp_path / "xa.dcm")
    labels = blob_labels(6, 48, 40, objects=(1, 2, 3), empty_frames=(2,))
    labels[4][labels[4] == 3] = 0  # object 3 absent on frame 4
    write_seg(tmp_path / "seg.dcm", labels, cine, OBJECTS, algorithm_name="FSVOSPropagate", algorithm_version="9.8.7")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm", "xa.dcm"]  # no temporary left
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    src = cine.dicom

    assert seg.SOPClassUID == SEG_SOP_CLASS_UID and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY" and seg.BitsAllocated == 1
    assert "FrameOfReferenceUID" not in seg
    # patient and study copied, new series and instance
    assert str(seg.PatientName) == PATIENT_NAME and seg.PatientID == PATIENT_ID
    for kw in ("PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyID", "AccessionNumber"):
        assert seg.get(kw) == src.get(kw), kw
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SOPInstanceUID != src.SOPInstanceUID
    assert "PatientOrientation" in seg
    # segments
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2, 3]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["LAD", "Guiding catheter", "Wire"]
    for s, obj in zip(seg.SegmentSequence, OBJECTS):
        entry = seg_codes.codes_for(obj["category"])
        assert s.SegmentAlgorithmType == "SEMIAUTOMATIC" and s.SegmentAlgorithmName == "FSVOSPropagate"
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("FSVOSPropagate", "9.8.7")
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == entry.category.value
        assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == entry.type.value
        assert s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert seg.SegmentSequence[1].RecommendedDisplayCIELabValue == list(seg_codes.rgb_to_dicom_lab((10, 120, 250)))
    # frames: one per (segment, frame) where present, empty ones skipped, segment-major order
    expected = [(k, t) for k in (1, 2, 3) for t in range(6) if (labels[t] == k).any()]
    assert seg.NumberOfFrames == len(expected)
    dims = [(d.DimensionIndexPointer, d.FunctionalGroupPointer) for d in seg.DimensionIndexSequence]
    assert dims == [(0x0062000B, 0x0062000A), (0x00209128, 0x00209111)]
    for fg, (k, t) in zip(seg.PerFrameFunctionalGroupsSequence, expected):
        assert fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber == k
        assert fg.FrameContentSequence[0].TemporalPositionIndex == t + 1
        assert list(fg.FrameContentSequence[0].DimensionIndexValues) == [k, t + 1]
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and ref.ReferencedFrameNumber == t + 1
        assert ref.ReferencedSOPClassUID == XA
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert ref.SpatialLocationsPreserved == "YES"
        assert "PlanePositionSequence" not in fg
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == src.SeriesInstanceUID
    assert refs.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    # highdicom and our reader give the labels back exactly; names/categories/colours survive
    np.testing.assert_array_equal(_hd_labels(tmp_path / "seg.dcm", cine), labels)
    hseg = hd.seg.segread(tmp_path / "seg.dcm")
    assert hseg.get_segment_description(2).segment_label == "Guiding catheter"
    back, objects = read_seg(tmp_path / "seg.dcm", cine)
    np.testing.assert_array_equal(back, labels)
    assert [(o["name"], o["category"]) for o in objects] == [(o["name"], o["category"]) for o in OBJECTS]
    assert objects[1]["color"] == (10, 120, 250)
    # without the cine: frames placed by ReferencedFrameNumber, up to the last non-empty one
    alone, _ = read_seg(tmp_path / "seg.dcm")
    np.testing.assert_array_equal(alone, labels[: alone.shape[0]])
    assert_dciodvfy_clean(tmp_path / "seg.dcm")


def test_all_empty_labels_give_one_empty_frame(tmp_path):
    write_multiframe(tmp_path / "xa.dcm", random_cine(3, 32, 32))
    cine = load_cine(tmp_path / "xa.dcm")
    labels = np.zeros((3, 32, 32), np.uint8)
    _roundtrip(tmp_path, cine, labels, [{"label": 1, "name": "Vessel", "category": "vessel"}])
    assert pydicom.dcmread(tmp_path / "seg.dcm").NumberOfFrames == 1


def test_frames_not_ending_on_a_byte_boundary(tmp_path):
    """17 x 19 = 323 pixels: BINARY frames are packed back to back across byte boundaries."""
    write_multiframe(tmp_path / "xa.dcm", random_cine(4, 17, 19))
    cine = load_cine(tmp_path / "xa.dcm")
    _roundtrip(tmp_path, cine, blob_labels(4, 17, 19, objects=(1, 2), empty_frames=(1,)), OBJECTS[:2])


def test_non_ascii_and_patient_identity_preserved(tmp_path):
    write_multiframe(tmp_path / "xa.dcm", random_cine(3, 32, 32))
    cine = load_cine(tmp_path / "xa.dcm")
    labels = blob_labels(3, 32, 32, objects=(1,))
    write_seg(tmp_path / "seg.dcm", labels, cine, [{"label": 1, "name": "Gefäß Ø2", "category": "vessel"}])
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert str(seg.PatientName) == "Müller^Jürgen" and seg.PatientID == PATIENT_ID
    assert seg.SegmentSequence[0].SegmentLabel == "Gefäß Ø2"
    assert_dciodvfy_clean(tmp_path / "seg.dcm")


# ----------------------------------------------------------------------------- pseudo3d


def _dcmqi_read(seg_path, out_dir):
    tool = _tool("segimage2itkimage")
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage not installed (pip install dcmqi)")
    out_dir.mkdir()
    proc = subprocess.run([tool, "--inputDICOM", os.fspath(seg_path), "--outputDirectory", os.fspath(out_dir),
                           "-t", "nrrd"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out_dir / "meta.json").read_text())


def test_pseudo3d_seg_loads_in_dcmqi(tmp_path):
    write_multiframe(tmp_path / "xa.dcm", random_cine(5, 48, 40), pixel_spacing=(0.3, 0.25))
    cine = load_cine(tmp_path / "xa.dcm")
    labels = blob_labels(5, 48, 40, objects=(1, 2, 3), empty_frames=(0, 4))  # first and last frames empty
    out = tmp_path / "p3d.dcm"
    write_seg(out, labels, cine, OBJECTS, geometry="pseudo3d")
    seg = pydicom.dcmread(out)
    assert "FrameOfReferenceUID" in seg and seg.FrameOfReferenceUID != cine.dicom.get("FrameOfReferenceUID")
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.3, 0.25]
    assert list(shared.PlaneOrientationSequence[0].ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    np.testing.assert_array_equal(_hd_labels(out, cine), labels)
    np.testing.assert_array_equal(read_seg(out, cine)[0], labels)
    np.testing.assert_array_equal(read_seg(out)[0], labels)  # first/last frames present: full length

    meta = _dcmqi_read(out, tmp_path / "dcmqi")
    names = [seg_attr[0]["SegmentLabel"] for seg_attr in meta["segmentAttributes"]]
    assert names == ["LAD", "Guiding catheter", "Wire"]
    for k in (1, 2, 3):
        data, header = nrrd.read(os.fspath(tmp_path / "dcmqi" / f"{k}.nrrd"), index_order="C")
        assert data.shape == labels.shape  # the whole cine, frames as slices
        np.testing.assert_array_equal(data > 0, labels == k)
        np.testing.assert_allclose(np.diag(header["space directions"]), [0.25, 0.3, 1.0])
    assert_dciodvfy_clean(out)


def test_pseudo3d_without_dicom_source(tmp_path):
    np.save(tmp_path / "cine.npy", random_cine(4, 32, 32))
    cine = load_cine(tmp_path / "cine.npy")
    labels = blob_labels(4, 32, 32, objects=(1, 2))
    with pytest.raises(FsvosInputError) as info:
        write_seg(tmp_path / "xa.dcm", labels, cine, OBJECTS[:2])
    assert "pseudo3d" in info.value.problem and not (tmp_path / "xa.dcm").exists()
    out = tmp_path / "p3d.dcm"
    write_seg(out, labels, cine, OBJECTS[:2], geometry="pseudo3d")
    seg = pydicom.dcmread(out)
    assert seg.PatientID == "" and str(seg.PatientName) == "" and "ReferencedSeriesSequence" not in seg
    np.testing.assert_array_equal(read_seg(out, cine)[0], labels)
    np.testing.assert_array_equal(read_seg(out)[0], labels)
    _dcmqi_read(out, tmp_path / "dcmqi")
    assert_dciodvfy_clean(out)


# ----------------------------------------------------------------------------- SEGs made by others


def _ct_series(tmp_path, t=4, h=32, w=32):
    folder = tmp_path / "ct"
    datasets = write_single_frame_series(folder, random_cine(t, h, w, bits=12), sop_class=CT, ct_geometry=True)
    return folder, datasets


def test_read_highdicom_made_seg(tmp_path):
    folder, _ = _ct_series(tmp_path)
    cine = load_cine(folder)
    sources = [pydicom.dcmread(folder / f"img_{4 - i:03d}.dcm") for i in range(4)]
    labels = blob_labels(4, 32, 32, objects=(1, 2), empty_frames=(1,))
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=name, segmented_property_category=entry.category,
            segmented_property_type=entry.type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for k, name, entry in ((1, "vessel", seg_codes.codes_for("vessel")), (2, "stent", seg_codes.codes_for("stent")))
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=5,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="highdicom", manufacturer_model_name="test",
        software_versions="0", device_serial_number="1")
    seg.save_as(tmp_path / "hd.dcm")
    back, objects = read_seg(tmp_path / "hd.dcm", cine)
    np.testing.assert_array_equal(back, labels)
    assert [(o["name"], o["category"]) for o in objects] == [("vessel", "vessel"), ("stent", "stent")]
    alone, _ = read_seg(tmp_path / "hd.dcm")  # ordered by plane position without the cine
    np.testing.assert_array_equal(alone, labels[[0, 2, 3]])


def test_read_dcmqi_made_seg(tmp_path):
    tool = _tool("itkimage2segimage")
    if tool is None:
        pytest.skip("dcmqi's itkimage2segimage not installed (pip install dcmqi)")
    folder, _ = _ct_series(tmp_path)
    cine = load_cine(folder)
    labels = blob_labels(4, 32, 32, objects=(1, 2))
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.5, 0.5, 2.0]),
              "space origin": [0.0, 0.0, 0.0], "kinds": ["domain"] * 3}
    nrrd.write(os.fspath(tmp_path / "labels.nrrd"), labels.astype(np.int16), header, index_order="C")
    segment = lambda k, name, cat: {  # noqa: E731
        "labelID": k, "SegmentLabel": name, "SegmentDescription": name, "SegmentAlgorithmType": "MANUAL",
        "SegmentedPropertyCategoryCodeSequence": {"CodeValue": seg_codes.codes_for(cat).category.value,
                                                  "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": seg_codes.codes_for(cat).category.meaning},
        "SegmentedPropertyTypeCodeSequence": {"CodeValue": seg_codes.codes_for(cat).type.value,
                                              "CodingSchemeDesignator": "SCT",
                                              "CodeMeaning": seg_codes.codes_for(cat).type.meaning},
        "recommendedDisplayRGBValue": [200, 30, 30]}
    meta = {"ContentCreatorName": "dcmqi", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
            "SeriesDescription": "dcmqi SEG", "SeriesNumber": "300", "InstanceNumber": "1",
            "BodyPartExamined": "", "segmentAttributes": [[segment(1, "Vessel", "vessel"), segment(2, "Balloon", "balloon")]],
            "ContentLabel": "SEG", "ContentDescription": "dcmqi", "ClinicalTrialCoordinatingCenterName": "x"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    proc = subprocess.run([tool, "--inputImageList", os.fspath(tmp_path / "labels.nrrd"),
                           "--inputDICOMDirectory", os.fspath(folder), "--inputMetadata",
                           os.fspath(tmp_path / "meta.json"), "--outputDICOM", os.fspath(tmp_path / "dcmqi.dcm")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    back, objects = read_seg(tmp_path / "dcmqi.dcm", cine)
    np.testing.assert_array_equal(back, labels)
    assert [(o["name"], o["category"]) for o in objects] == [("Vessel", "vessel"), ("Balloon", "balloon")]


# ----------------------------------------------------------------------------- objects, colours, errors


def test_colours_match_highdicom_and_round_trip():
    for category in seg_codes.CATEGORIES:
        for index in range(3):
            rgb = seg_codes.default_color(category, index)
            lab = seg_codes.rgb_to_dicom_lab(rgb)
            assert lab == hd.color.CIELabColor.from_rgb(*rgb).value
            assert seg_codes.dicom_lab_to_rgb(lab) == rgb


def test_codes_and_categories():
    assert seg_codes.codes_for("Coronary_Artery").type.value == "41801008"
    assert seg_codes.codes_for("guide wire").type.value == "272224001"
    assert seg_codes.codes_for("balloon").type.value == "102319006"
    assert seg_codes.codes_for("catheter").category.value == "260787004"
    assert seg_codes.codes_for("vessel").category.value == "91723000"
    assert seg_codes.category_from_codes("SCT", "65818007") == "stent"
    with pytest.raises(ValueError, match="unknown object category"):
        seg_codes.normalize_category("banana")


def test_bad_objects_and_shapes_write_nothing(tmp_path):
    write_multiframe(tmp_path / "xa.dcm", random_cine(3, 32, 32))
    cine = load_cine(tmp_path / "xa.dcm")
    labels = blob_labels(3, 32, 32, objects=(1, 2))
    out = tmp_path / "seg.dcm"
    cases = [
        (labels, [{"label": 1}], "label value(s) 2 occur"),
        (labels, [{"label": 1}, {"label": 2, "category": "banana"}], "unknown object category"),
        (labels, [{"label": 1}, {"label": 1}, {"label": 2}], "more than one object"),
        (labels, [{"label": 1}, {"label": 2, "color": (300, 0, 0)}], "colour"),
        (labels[:2], None, "do not match the cine"),
        (labels.astype(np.float32) + 0.5, None, "must be integers"),
        (np.zeros_like(labels), None, "nothing to write"),
    ]
    for lab, objects, message in cases:
        with pytest.raises(FsvosInputError, match=re.escape(message)):
            write_seg(out, lab, cine, objects)
        assert not out.exists()
    with pytest.raises(FsvosInputError, match="unknown SEG geometry"):
        write_seg(out, labels, cine, None, geometry="3d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xa.dcm"]


def test_read_seg_refuses_foreign_cine_and_non_seg(tmp_path):
    write_multiframe(tmp_path / "a.dcm", random_cine(3, 32, 32, seed=1))
    write_multiframe(tmp_path / "b.dcm", random_cine(3, 32, 32, seed=2))
    a, b = load_cine(tmp_path / "a.dcm"), load_cine(tmp_path / "b.dcm")
    write_seg(tmp_path / "seg.dcm", blob_labels(3, 32, 32, objects=(1,)), a)
    with pytest.raises(FsvosInputError, match="not in the cine"):
        read_seg(tmp_path / "seg.dcm", b)
    with pytest.raises(FsvosInputError, match="not a DICOM Segmentation"):
        read_seg(tmp_path / "a.dcm")


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def cli_main():
    from fsvos import cli

    return cli.main


def test_export_seg_command(tmp_path, cli_main, capsys):
    write_multiframe(tmp_path / "xa.dcm", random_cine(4, 40, 32))
    cine = load_cine(tmp_path / "xa.dcm")
    labels = blob_labels(4, 40, 32, objects=(1, 2))
    np.savez_compressed(tmp_path / "labels.npz", labels=labels)
    (tmp_path / "objects.json").write_text(json.dumps({"objects": [
        {"label": 1, "name": "RCA", "category": "coronary artery", "color": [255, 0, 0]},
        {"label": 2, "name": "Stent", "category": "stent"}]}))
    rc = cli_main(["export-seg", os.fspath(tmp_path / "labels.npz"), os.fspath(tmp_path / "xa.dcm"),
                   os.fspath(tmp_path / "out.dcm"), "--objects", os.fspath(tmp_path / "objects.json")])
    assert rc == 0
    back, objects = read_seg(tmp_path / "out.dcm", cine)
    np.testing.assert_array_equal(back, labels)
    assert [(o["name"], o["category"], o["color"]) for o in objects] == [
        ("RCA", "coronary artery", (255, 0, 0)), ("Stent", "stent", seg_codes.CATEGORIES["stent"].color)]
    np.testing.assert_array_equal(_hd_labels(tmp_path / "out.dcm", cine), labels)
    # a DICOM-SEG (here pseudo3d) converted to an XA SEG keeps labels and objects
    rc = cli_main(["export-seg", os.fspath(tmp_path / "out.dcm"), os.fspath(tmp_path / "xa.dcm"),
                   os.fspath(tmp_path / "p3d.dcm"), "--seg-geometry", "pseudo3d"])
    assert rc == 0
    rc = cli_main(["export-seg", os.fspath(tmp_path / "p3d.dcm"), os.fspath(tmp_path / "xa.dcm"),
                   os.fspath(tmp_path / "again.dcm")])
    assert rc == 0
    back, objects = read_seg(tmp_path / "again.dcm", cine)
    np.testing.assert_array_equal(back, labels)
    assert [o["name"] for o in objects] == ["RCA", "Stent"]
    assert_dciodvfy_clean(tmp_path / "again.dcm")


def test_export_seg_bad_input_one_line_exit_2(tmp_path, cli_main, capsys):
    write_multiframe(tmp_path / "xa.dcm", random_cine(4, 40, 32))
    np.save(tmp_path / "short.npy", np.zeros((3, 40, 32), np.uint8))
    np.save(tmp_path / "cine.npy", random_cine(4, 40, 32))
    np.save(tmp_path / "ok.npy", blob_labels(4, 40, 32, objects=(1,)))
    cases = [
        (["short.npy", "xa.dcm", "o.dcm"], "do not match the cine"),
        (["ok.npy", "cine.npy", "o.dcm"], "pseudo3d"),
        (["ok.npy", "xa.dcm", "o.nrrd"], "name it .dcm"),
        (["missing.npy", "xa.dcm", "o.dcm"], "no such file"),
        (["ok.npy", "xa.dcm", "o.dcm", "--objects", "cine.npy"], "not a readable JSON"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, message in cases:
        rc = cli_main(["export-seg"] + [os.fspath(tmp_path / a) if not a.startswith("--") else a for a in argv])
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert err.startswith("fsvos: error: ") and err.count("\n") == 1 and message in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_propagate_command_writes_a_seg(tmp_path, capsys):
    from PIL import Image

    from fsvos import cli

    write_multiframe(tmp_path / "xa.dcm", random_cine(4, 64, 64))
    Image.fromarray(_support(64, 64)).save(tmp_path / "mask.png")
    rc = cli.main(["propagate", os.fspath(tmp_path / "xa.dcm"), "--support", f"0={tmp_path / 'mask.png'}",
                   "--output", os.fspath(tmp_path / "x.dcm"), "--progress", "none"])
    assert rc == 0, capsys.readouterr().err
    cine = load_cine(tmp_path / "xa.dcm")
    back, _objects = read_seg(tmp_path / "x.dcm", cine)
    np.testing.assert_array_equal(back[0], _support(64, 64))
    np.testing.assert_array_equal(_hd_labels(tmp_path / "x.dcm", cine), back)
    assert_dciodvfy_clean(tmp_path / "x.dcm")
