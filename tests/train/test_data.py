"""COCO-format loading for training: class order, and every kind of bad annotation handled explicitly."""

from __future__ import annotations

import json
import logging
import math
import pickle

import cv2
import numpy as np
import pytest

from yolox_deploy.errors import InputError
from yolox_deploy.train.data import load_detection_set
from yolox_deploy.train.dataset import TrainDataset

from .conftest import write_coco


def _image(root, split, name, h=50, w=80):
    (root / split).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / split / name), np.full((h, w, 3), 100, np.uint8))
    return {"file_name": name, "width": w, "height": h}


def test_classes_follow_category_ids_and_boxes_are_xyxy(synthetic_coco):
    data = load_detection_set(synthetic_coco)
    assert data.class_names == ("red", "green", "blue") and data.category_ids == (1, 2, 5)
    assert len(data) == 8 and data.num_classes == 3
    rec = data.records[0]
    anns = json.loads((synthetic_coco / "annotations" / "instances_train2017.json").read_text())["annotations"]
    ann = next(a for a in anns if a["image_id"] == rec.image_id)
    x, y, w, h = ann["bbox"]
    assert rec.boxes[0].tolist() == [x, y, x + w, y + h]
    assert rec.labels[0] == {1: 0, 2: 1, 5: 2}[ann["category_id"]]
    assert data.report.skipped() == 0 and data.report.clipped == 0


def test_the_annotation_file_is_not_kept(synthetic_coco):
    """Only what training reads stays in memory (and is pickled into spawned loader workers): not the
    segmentation polygons, which are most of COCO's annotation file."""
    ann_file = synthetic_coco / "annotations" / "instances_train2017.json"
    coco = json.loads(ann_file.read_text())
    for a in coco["annotations"]:
        a["segmentation"] = [[float(v) for v in range(2000)]]
    ann_file.write_text(json.dumps(coco))
    data = load_detection_set(synthetic_coco)
    assert len(pickle.dumps(TrainDataset(data, (64, 64)))) < ann_file.stat().st_size / 20


def test_bad_boxes_are_clipped_or_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "d"
    images = [{"id": 1, **_image(root, "train2017", "a.jpg")}]
    bad = [
        {"bbox": [-10, -5, 30, 20]},          # reaches outside: clipped to [0, 0, 20, 15]
        {"bbox": [70, 40, 30, 30]},           # clipped to [70, 40, 80, 50]
        {"bbox": [10, 10, 0, 5]},             # zero width: skipped
        {"bbox": [10, 10, -4, 5]},            # negative width: skipped
        {"bbox": [90, 10, 5, 5]},             # entirely right of the image: nothing left after clipping
        {"bbox": [1, 2, 3]},                  # malformed
        {"bbox": [1, 2, float("nan"), 3]},    # non-finite (json writes NaN)
        {"bbox": "1234"},                     # text: was read digit by digit as the box [1, 2, 3, 4]
        {"bbox": [5, 5, 10, 10], "iscrowd": "0"},      # text: counted as a crowd (a non-empty string is true)
        {"bbox": [5, 5, 10, 10], "category_id": 99},   # unknown category
        {"bbox": [5, 5, 10, 10], "iscrowd": 1},        # crowd
        {"bbox": [5, 5, 10, 10], "image_id": 42},      # image id not in the list
        {"bbox": [5, 5, 10, 10], "area": 0},           # area 0: skipped, as the authors do
        {"bbox": [5, 5, 10, 10], "area": float("nan")},
        {"bbox": [20, 20, 10, 10]},           # fine
        {"bbox": [30, 30, 10, 10]},           # no area (removed below): kept
    ]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0, **a} for i, a in enumerate(bad)]
    del anns[-1]["area"]
    write_coco(root, "train2017", images, anns)
    with caplog.at_level(logging.WARNING):
        data = load_detection_set(root)
    rec = data.records[0]
    assert rec.boxes.tolist() == [[0, 0, 20, 15], [70, 40, 80, 50], [20, 20, 30, 30], [30, 30, 40, 40]]
    r = data.report
    assert (r.clipped, r.degenerate, r.zero_area, r.malformed, r.bad_iscrowd, r.unknown_category, r.crowd,
            r.orphan) == (2, 3, 2, 3, 1, 1, 1, 1)
    assert r.boxes_kept == 4
    text = caplog.text
    assert f"{root / 'annotations' / 'instances_train2017.json'}: 2 boxes reaching outside" in text
    assert "3 zero/negative-area boxes (after clipping) were skipped (first: annotation 3, bbox [10, 10, 0, 5])" in text
    assert "3 boxes with malformed or non-finite coordinates were skipped (first: annotation 6, bbox [1, 2, 3])" in text
    assert "1 annotations with an iscrowd other than 0 / 1 were skipped (first: annotation 9, iscrowd '0')" in text
    assert "category list were skipped (first: annotation 10, category_id 99)" in text and "1 iscrowd" in text
    assert "2 annotations with an area of 0, below 0 or NaN were skipped (first: annotation 13, area 0)" in text
    assert np.isfinite(rec.boxes).all() and math.isfinite(float(rec.boxes.sum()))


def test_missing_images_are_an_error_listing_them(tmp_path):
    root = tmp_path / "d"
    images = [{"id": i, **_image(root, "train2017", f"{i}.jpg")} for i in range(1, 3)]
    images += [{"id": i, "file_name": f"gone{i}.jpg", "width": 80, "height": 50} for i in range(3, 11)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 20, 20], "iscrowd": 0} for i in range(1, 11)]
    write_coco(root, "train2017", images, anns)
    with pytest.raises(InputError) as e:
        load_detection_set(root)
    msg = str(e.value)
    assert "8 of 10 images" in msg and "gone3.jpg" in msg and "and 3 more" in msg and "--skip-missing" in msg
    images[2]["file_name"] = "sub/gone3.jpg"  # named as the file lists it, not by its last part
    images[3]["file_name"] = str(tmp_path / "elsewhere" / "gone4.jpg")  # an absolute name too (was a ValueError)
    write_coco(root, "train2017", images, anns)
    with pytest.raises(InputError, match=rf"missing from \S+train2017: sub/gone3.jpg, {tmp_path}/elsewhere/gone4.jpg"):
        load_detection_set(root)
    images[3]["file_name"] = "gone4.jpg"
    write_coco(root, "train2017", images, anns)
    data = load_detection_set(root, skip_missing=True)
    assert len(data) == 2 and len(data.report.missing_images) == 8 and data.report.boxes_of_missing_images == 8


def test_empty_category_list_is_an_error(tmp_path):
    root = tmp_path / "d"
    write_coco(root, "train2017", [{"id": 1, **_image(root, "train2017", "a.jpg")}], [], categories=[])
    with pytest.raises(InputError, match="no categories"):
        load_detection_set(root)


def test_no_usable_box_is_an_error(tmp_path):
    root = tmp_path / "d"
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 0], "iscrowd": 0}]
    write_coco(root, "train2017", [{"id": 1, **_image(root, "train2017", "a.jpg")}], anns)
    with pytest.raises(InputError, match="no usable box"):
        load_detection_set(root)


def test_image_entries_need_their_size(tmp_path):
    root = tmp_path / "d"
    _image(root, "train2017", "a.jpg")
    write_coco(root, "train2017", [{"id": 1, "file_name": "a.jpg"}], [])
    with pytest.raises(InputError, match="width/height"):
        load_detection_set(root)
    # JSON's Infinity (json.load reads it as a float) was an OverflowError traceback
    write_coco(root, "train2017", [{"id": 1, "file_name": "a.jpg", "width": math.inf, "height": 50}], [])
    with pytest.raises(InputError, match="width/height"):
        load_detection_set(root)


def test_missing_folder_or_annotation_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_detection_set(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="instances_train2017.json"):
        load_detection_set(tmp_path / "empty")


def test_images_without_boxes_are_kept_as_background(tmp_path):
    root = tmp_path / "d"
    images = [{"id": 1, **_image(root, "train2017", "a.jpg")}, {"id": 2, **_image(root, "train2017", "b.jpg")}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "iscrowd": 0}]
    write_coco(root, "train2017", images, anns)
    data = load_detection_set(root)
    assert [len(r.labels) for r in data.records] == [1, 0]
