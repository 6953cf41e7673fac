"""Slicer files: .seg.nrrd (slicerio) and label-volume sequences .seq.nrrd, written, re-read, cross-read."""

from __future__ import annotations

import json
import os

import nrrd
import numpy as np
import pytest
import slicerio
import slicerio.volume

from dicom_factory import blob_labels, random_cine, write_multiframe
from fsvos.errors import FsvosInputError
from fsvos.io import seg_codes
from fsvos.io.cine import load_cine
from fsvos.io.seg import read_seg
from fsvos.io.slicer_formats import (
    read_label_sequence_nrrd,
    read_seg_nrrd,
    write_label_sequence_nrrd,
    write_seg_nrrd,
)

OBJECTS = [
    {"label": 1, "name": "LAD", "category": "coronary artery"},
    {"label": 2, "name": "Catheter", "category": "catheter", "color": (0, 100, 200)},
    {"label": 3, "name": "Something"},
]


def test_label_sequence_header_is_slicers(tmp_path):
    labels = blob_labels(5, 40, 30)
    path = tmp_path / "labels.seq.nrrd"
    write_label_sequence_nrrd(path, labels, spacing_mm=(0.3, 0.25), frame_time_ms=66.7)
    header = nrrd.read_header(os.fspath(path))
    assert header["dimension"] == 4
    assert list(header["sizes"]) == [5, 30, 40, 1]  # list axis first, then i (columns), j (rows), k
    assert header["kinds"] == ["list", "domain", "domain", "domain"]
    assert header["space"] == "left-posterior-superior"
    directions = np.asarray(header["space directions"], dtype=float)
    assert np.isnan(directions[0]).all()
    np.testing.assert_allclose(directions[1:], np.diag([0.25, 0.3, 1.0]))
    assert header["labels"][0] == "time" and header["units"][0] == "s"
    assert header["axis 0 index type"] == "numeric"
    assert header["axis 0 index values"].split() == ["0", "0.0667", "0.1334", "0.2001", "0.2668"]
    assert header["DataNodeClassName"] == "vtkMRMLLabelMapVolumeNode"
    # frame 2, row 10, column 7 is at NRRD index (2, 7, 10, 0) - the list axis varies fastest
    data, _ = nrrd.read(os.fspath(path), index_order="F")
    assert data[2, 7, 10, 0] == labels[2, 10, 7]


def test_label_sequence_round_trip(tmp_path):
    labels = blob_labels(6, 33, 47)
    write_label_sequence_nrrd(tmp_path / "a.seq.nrrd", labels, (0.5, 0.4), 40.0)
    back, info = read_label_sequence_nrrd(tmp_path / "a.seq.nrrd")
    np.testing.assert_array_equal(back, labels)
    assert info["spacing_mm"] == pytest.approx((0.5, 0.4))
    assert info["frame_time_ms"] == pytest.approx(40.0)
    assert info["index_name"] == "time" and info["data_node_class"] == "vtkMRMLLabelMapVolumeNode"
    # without a frame time the index is the frame number
    write_label_sequence_nrrd(tmp_path / "b.seq.nrrd", labels)
    back, info = read_label_sequence_nrrd(tmp_path / "b.seq.nrrd")
    np.testing.assert_array_equal(back, labels)
    assert info["index_name"] == "frame" and info["frame_time_ms"] is None and info["spacing_mm"] == (1.0, 1.0)


def test_reads_slicer_510_list_axis_last_sequences(tmp_path):
    """Slicer >= 5.10 (and slicerio) write the sequence axis last: read that layout too."""
    labels = blob_labels(4, 20, 24)
    frames = []
    for t in range(4):
        frames.append({"voxels": labels[t].T[:, :, np.newaxis].copy(), "ijkToLPS": np.diag([0.2, 0.3, 1.0, 1.0]),
                       "spaceDimension": 3})
    volume = slicerio.volume.create_sequence(frames, index_values=["0", "0.05", "0.1", "0.15"])
    slicerio.volume.write_volume(os.fspath(tmp_path / "new.seq.nrrd"), volume)
    assert nrrd.read_header(os.fspath(tmp_path / "new.seq.nrrd"))["kinds"][-1] == "list"
    back, info = read_label_sequence_nrrd(tmp_path / "new.seq.nrrd")
    np.testing.assert_array_equal(back, labels)
    assert info["spacing_mm"] == pytest.approx((0.3, 0.2))
    assert info["frame_time_ms"] == pytest.approx(50.0)


def test_seg_nrrd_round_trip_whole_stack(tmp_path):
    labels = blob_labels(4, 40, 30)
    path = tmp_path / "stack.seg.nrrd"
    write_seg_nrrd(path, labels, OBJECTS, None, spacing_mm=(0.3, 0.25))
    back, objects, info = read_seg_nrrd(path)
    np.testing.assert_array_equal(back, labels)
    assert [(o["label"], o["name"], o["category"]) for o in objects] == [
        (1, "LAD", "coronary artery"), (2, "Catheter", "catheter"), (3, "Something", "generic")]
    assert objects[1]["color"] == (0, 100, 200)
    assert objects[0]["color"] == seg_codes.CATEGORIES["coronary artery"].color
    assert info["spacing_mm"] == pytest.approx((0.3, 0.25)) and info["frame_index"] is None
    # what Slicer reads: segment names, label values, terminology entries
    seg = slicerio.read_segmentation(os.fspath(path))
    assert [s["name"] for s in seg["segments"]] == ["LAD", "Catheter", "Something"]
    assert seg["segments"][0]["terminology"]["type"] == ["SCT", "41801008", "Coronary artery"]
    assert seg["segments"][1]["terminology"]["category"] == ["SCT", "260787004", "Physical object"]
    assert seg["segments"][0]["terminology"]["contextName"] == "Segmentation category and type - DICOM master list"
    np.testing.assert_allclose(seg["ijkToLPS"], np.diag([0.25, 0.3, 1.0, 1.0]))
    assert seg_codes.category_from_slicer_terminology(seg_codes.slicer_terminology("balloon")) == "balloon"


def test_seg_nrrd_single_frame(tmp_path):
    labels = blob_labels(4, 40, 30)
    write_seg_nrrd(tmp_path / "f2.seg.nrrd", labels, OBJECTS, 2)
    back, objects, info = read_seg_nrrd(tmp_path / "f2.seg.nrrd")
    assert back.shape == (1, 40, 30)
    np.testing.assert_array_equal(back[0], labels[2])
    assert info["frame_index"] == 2
    with pytest.raises(FsvosInputError, match="outside"):
        write_seg_nrrd(tmp_path / "bad.seg.nrrd", labels, OBJECTS, 9)
    assert not (tmp_path / "bad.seg.nrrd").exists()


def test_seg_nrrd_with_overlapping_segments(tmp_path):
    """Slicer stores overlapping segments in layers (4D); they are numbered 1..n in file order."""
    seg = slicerio.create_segmentation((30, 40, 2), np.eye(4))
    a = np.zeros((30, 40, 2), bool)
    a[2:10, 2:10, :] = True
    b = np.zeros((30, 40, 2), bool)
    b[5:20, 5:20, 1] = True
    slicerio.add_segment(seg, a, {"name": "first", "color": [1.0, 0.0, 0.0]})
    slicerio.add_segment(seg, b, {"name": "second"})
    slicerio.write_segmentation(os.fspath(tmp_path / "ov.seg.nrrd"), seg)
    back, objects, _ = read_seg_nrrd(tmp_path / "ov.seg.nrrd")
    assert [o["name"] for o in objects] == ["first", "second"] and objects[0]["color"] == (255, 0, 0)
    assert back.shape == (2, 40, 30)
    np.testing.assert_array_equal(back[0], np.where(a[:, :, 0].T, 1, 0))
    np.testing.assert_array_equal(back[1], np.where(b[:, :, 1].T, 2, np.where(a[:, :, 1].T, 1, 0)))


def test_export_seg_from_slicer_files(tmp_path):
    from fsvos import cli

    write_multiframe(tmp_path / "xa.dcm", random_cine(4, 40, 30), pixel_spacing=(0.3, 0.25))
    cine = load_cine(tmp_path / "xa.dcm")
    labels = blob_labels(4, 40, 30)
    write_seg_nrrd(tmp_path / "l.seg.nrrd", labels, OBJECTS, spacing_mm=cine.pixel_spacing_mm)
    write_label_sequence_nrrd(tmp_path / "l.seq.nrrd", labels, cine.pixel_spacing_mm, cine.frame_time_ms)
    (tmp_path / "objects.json").write_text(json.dumps(OBJECTS))
    assert cli.main(["export-seg", os.fspath(tmp_path / "l.seg.nrrd"), os.fspath(tmp_path / "xa.dcm"),
                     os.fspath(tmp_path / "a.dcm")]) == 0
    back, objects = read_seg(tmp_path / "a.dcm", cine)
    np.testing.assert_array_equal(back, labels)
    assert [o["name"] for o in objects] == ["LAD", "Catheter", "Something"]  # from the .seg.nrrd
    assert cli.main(["export-seg", os.fspath(tmp_path / "l.seq.nrrd"), os.fspath(tmp_path / "xa.dcm"),
                     os.fspath(tmp_path / "b.dcm"), "--objects", os.fspath(tmp_path / "objects.json")]) == 0
    back, objects = read_seg(tmp_path / "b.dcm", cine)
    np.testing.assert_array_equal(back, labels)
    assert [o["category"] for o in objects] == ["coronary artery", "catheter", "generic"]


def test_bad_slicer_files(tmp_path):
    (tmp_path / "x.seq.nrrd").write_bytes(b"NRRD0004\ngarbage")
    with pytest.raises(FsvosInputError, match="not a readable NRRD"):
        read_label_sequence_nrrd(tmp_path / "x.seq.nrrd")
    nrrd.write(os.fspath(tmp_path / "3d.nrrd"), np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(FsvosInputError, match="4D NRRD"):
        read_label_sequence_nrrd(tmp_path / "3d.nrrd")
    with pytest.raises(FsvosInputError, match="no such file"):
        read_seg_nrrd(tmp_path / "none.seg.nrrd")
