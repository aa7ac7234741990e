"""Augmentations: boxes follow the pixels (checked on solid-colour rectangles), determinism, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from yolox_deploy.ops.boxes import xyxy_to_cxcywh
from yolox_deploy.ops.letterbox import letterbox
from yolox_deploy.train.augment import (
    box_candidates,
    fit_to_input,
    hflip,
    hsv_jitter,
    mixup,
    mosaic,
    random_affine,
    resize_to_fit,
    warp_boxes,
)

RED = np.array([0, 0, 255], np.uint8)


def scene(h=120, w=160, box=(30, 20, 90, 70), colour=RED):
    image = np.full((h, w, 3), 127, np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = colour
    return image, np.array([box], np.float32), np.array([0])


def colour_inside(image, box, colour=RED, margin=0.25):
    """The central part of the box (``margin`` of its size trimmed on each side) has ``colour``."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    patch = image[int(y1 + margin * h):int(np.ceil(y2 - margin * h)), int(x1 + margin * w):int(np.ceil(x2 - margin * w))]
    assert patch.size, "box too small to check"
    return bool((np.abs(patch.astype(int) - colour.astype(int)).max(axis=-1) < 40).mean() > 0.95)


def test_hflip_mirrors_pixels_and_boxes():
    image, boxes, _ = scene()
    flipped, fboxes = hflip(image, boxes)
    assert fboxes[0].tolist() == [160 - 90, 20, 160 - 30, 70]
    assert colour_inside(flipped, fboxes[0], margin=0.0)
    back, bboxes = hflip(flipped, fboxes)
    assert np.array_equal(back, image) and np.array_equal(bboxes, boxes)


def test_hsv_jitter_is_seeded_and_keeps_the_image_shape():
    image, _, _ = scene()
    a = hsv_jitter(image, np.random.default_rng(3))
    b = hsv_jitter(image, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.shape == image.shape and a.dtype == np.uint8
    changed = [not np.array_equal(hsv_jitter(image, np.random.default_rng(s)), image) for s in range(8)]
    assert any(changed)
    assert np.array_equal(image, scene()[0])  # input untouched


def test_fit_to_input_is_the_inference_letterbox():
    image, boxes, _ = scene()
    canvas, out = fit_to_input(image, boxes, (64, 64))
    ref, r = letterbox(image, (64, 64))
    assert np.array_equal(canvas, ref)
    assert np.allclose(out, boxes * r)


def test_box_candidates():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 4]], np.float32)
    after = np.array([[0, 0, 10, 10], [0, 0, 1.5, 10], [0, 0, 4, 4], [0, 0, 100, 4]], np.float32)
    # kept; too narrow (<= 2 px); 16 % of the area left (< 20 %); aspect ratio 25 (>= 20)
    assert box_candidates(before, after).tolist() == [True, False, False, False]


def test_mosaic_places_every_box_on_its_pixels():
    rng = np.random.default_rng(0)
    samples = []
    for k in range(4):
        colour = np.array([40 * k, 255 - 40 * k, 90], np.uint8)
        image, boxes, labels = scene(colour=colour)
        samples.append(resize_to_fit(image, boxes, (64, 64)) + (labels + k,))
    canvas, boxes, labels = mosaic(samples, rng, (64, 64))
    assert canvas.shape == (128, 128, 3)
    assert ((boxes >= 0) & (boxes <= 128)).all()
    assert sorted(labels.tolist()) == [0, 1, 2, 3]
    for box, label in zip(boxes, labels):
        if (box[2] - box[0]) > 8 and (box[3] - box[1]) > 8:  # boxes cut down to slivers cannot be checked
            assert colour_inside(canvas, box, np.array([40 * label, 255 - 40 * label, 90], np.uint8))


@pytest.mark.parametrize("seed", range(5))
def test_random_affine_boxes_follow_the_pixels(seed):
    image, boxes, labels = scene(200, 200, (60, 50, 140, 130))
    rng = np.random.default_rng(seed)
    warped, out, out_labels = random_affine(image, boxes, labels, rng, (128, 128), degrees=0, translate=0.1,
                                            scale_range=(0.5, 1.0), shear=0)
    assert warped.shape == (128, 128, 3)
    assert len(out) == len(out_labels) == 1
    assert colour_inside(warped, out[0], margin=0.1)
    # a rotated square's bounding box still has the square at its centre
    warped, out, _ = random_affine(image, boxes, labels, np.random.default_rng(seed), (128, 128), degrees=10,
                                   translate=0.1, scale_range=(0.5, 1.0), shear=2)
    assert colour_inside(warped, out[0], margin=0.3)


def test_random_affine_drops_boxes_pushed_out_of_the_image():
    image, _, _ = scene(200, 200)
    boxes = np.array([[0, 0, 6, 6], [60, 50, 140, 130]], np.float32)
    _, out, labels = random_affine(image, boxes, np.array([0, 1]), np.random.default_rng(0), (64, 64),
                                   degrees=0, translate=0, scale_range=(0.3, 0.3), shear=0)
    assert labels.tolist() == [1]  # the 6 px box shrinks to < 2 px and is dropped


def test_warp_boxes_identity_and_empty():
    boxes = np.array([[1, 2, 30, 40]], np.float32)
    assert np.allclose(warp_boxes(boxes, np.eye(3), (50, 50)), boxes)
    assert warp_boxes(np.zeros((0, 4), np.float32), np.eye(3), (50, 50)).shape == (0, 4)


def test_mixup_blends_and_adds_the_other_boxes():
    image, boxes, labels = scene(64, 64, (10, 10, 40, 40))
    other = scene(64, 64, (20, 20, 50, 50), colour=np.array([255, 0, 0], np.uint8))
    other = (other[0], other[1], np.array([2]))
    out, out_boxes, out_labels = mixup(image, boxes, labels, other, np.random.default_rng(1), (1.0, 1.0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out_labels.tolist() == [0, 2]
    assert np.allclose(out_boxes[0], boxes[0])
    # scale 1 and same size: no crop; the other image is flipped or not
    assert out_boxes[1].tolist() in ([20, 20, 50, 50], [64 - 50, 20, 64 - 20, 50])
    # (30, 30) lies inside both rectangles either way: the average of red and blue
    assert np.abs(out[30, 30].astype(int) - [127, 0, 127]).max() <= 1
    # outside both: the average of the two gray backgrounds
    assert np.abs(out[60, 2].astype(int) - 127).max() <= 1


def test_xyxy_to_cxcywh():
    assert xyxy_to_cxcywh(np.array([[10, 20, 30, 60.]], np.float32)).tolist() == [[20, 40, 20, 40]]


@pytest.mark.parametrize("bad, message", [
    ({"mosaic_prob": -3}, r"mosaic_prob must be in \[0, 1\], got -3"),
    ({"flip_prob": 7}, r"flip_prob must be in \[0, 1\], got 7"),
    ({"mosaic_scale": (0.0, 0.0)}, r"mosaic_scale must be two numbers 0 < low <= high, got \(0.0, 0.0\)"),
    ({"mosaic_scale": (1.0,)}, r"mosaic_scale must be two numbers"),
    ({"mixup_scale": (1.5, 0.5)}, r"mixup_scale must be two numbers"),
    ({"degrees": -1}, r"degrees must be >= 0"),
])
def test_augmentation_settings_are_checked_before_training(bad, message):
    """They failed at the first sample (IndexError), or silently left every box out of the image."""
    from pathlib import Path

    from yolox_deploy.errors import InputError
    from yolox_deploy.train.config import TrainConfig

    base = {"model": "yolox-nano", "data": Path("data"), "output": Path("out")}
    with pytest.raises(InputError, match=message):
        TrainConfig(**base, **bad).resolved()
    assert TrainConfig(**base).resolved().augment().mosaic_scale == (0.5, 1.5)  # the nano recipe's
