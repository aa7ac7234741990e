"""Training augmentations of YOLOX (paper section 2.2, the authors' ``data_augment.py`` and ``MosaicDetection``).

The geometry follows the authors' first release (0.1.x), which trained the released weights:
``random_perspective`` about the canvas centre with its ``box_candidates`` filter, and MixUp's pasted boxes
through the same filter, blended only when one survives (later releases warp about the origin and only clip
boxes, in both); the colour jitter is their later additive ``augment_hsv(5, 30, 30)`` (0.1.x multiplied by
gains of 0.015 / 0.7 / 0.4).

Pure functions on BGR uint8 images ``[H, W, 3]`` and boxes ``[N, 4]`` float32 ``x1, y1, x2, y2`` in that image's
pixels, with labels ``[N]``; every random draw comes from the ``numpy.random.Generator`` passed in, so a
sample is a pure function of its seed (what makes resume bit-exact and workers interchangeable).

- :func:`mosaic`: four images around a random centre on a ``2H x 2W`` canvas (pad 114).
- :func:`random_affine`: rotation (+-10 deg), scale jitter (``[0.1, 2]`` large / ``[0.5, 1.5]`` small
  models), shear (+-2 deg) and translation (+-10 %) about the canvas centre, down to ``H x W``; boxes are
  the bounds of their warped corners, clipped, and dropped when too small, too thin or mostly cut away.
- :func:`mixup`: blend (0.5 / 0.5) with a second image scale-jittered by ``[0.5, 1.5]``, randomly flipped
  and cropped.
- :func:`hsv_jitter`, :func:`hflip`, :func:`fit_to_input` (the letterbox of inference, top-left, pad 114).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from ..ops.letterbox import letterbox, letterbox_ratio

PAD_VALUE = 114
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image [H, W, 3] uint8, boxes [N, 4] xyxy, labels [N]


def hsv_jitter(image: np.ndarray, rng: np.random.Generator, hgain: int = 5, sgain: int = 30,
               vgain: int = 30) -> np.ndarray:
    """Shift hue by up to ``hgain`` (of 180), saturation and value by up to ``sgain`` / ``vgain`` (of 255).

    Each of the three channels is shifted with probability 1/2 (the authors' current ``augment_hsv``).
    Returns a new image.
    """
    gains = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain])
    gains *= rng.integers(0, 2, 3)
    gains = gains.astype(np.int16)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: ``x1' = W - x2``, ``x2' = W - x1``."""
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def fit_to_input(image: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox to ``input_hw`` exactly as inference does (resize by ``min`` ratio, top-left, pad 114)."""
    canvas, ratio = letterbox(image, input_hw, PAD_VALUE)
    return canvas, boxes * np.float32(ratio)


def fitted_size(hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """``(ratio, (width, height))`` of an ``hw`` image resized by ``min(H / h, W / w)`` to fit in ``input_hw``."""
    r = letterbox_ratio(hw, input_hw)
    return r, (max(int(hw[1] * r), 1), max(int(hw[0] * r), 1))


def resize_to_fit(image: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize (no padding) by ``min(H / h, W / w)`` so the image fits in ``input_hw``; boxes scaled alike."""
    h0, w0 = image.shape[:2]
    r, size = fitted_size((h0, w0), input_hw)
    if size != (w0, h0):
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return image, boxes * np.float32(r)


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2, ar_thr: float = 20,
                   area_thr: float = 0.2) -> np.ndarray:
    """Keep mask ``[N]`` for boxes transformed from ``before`` (already scaled like the image) to ``after``:
    both sides over ``wh_thr`` px, aspect ratio under ``ar_thr``, and over ``area_thr`` of the area kept."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (ar < ar_thr)


def mosaic(samples: Sequence[Sample], rng: np.random.Generator, input_hw: tuple[int, int]) -> Sample:
    """Tile four samples (each already fitted into ``input_hw``) around a random centre of a ``2H x 2W`` canvas.

    The centre is drawn in ``[0.5, 1.5] x (H, W)``; sample 0 goes top-left of it, 1 top-right, 2 bottom-left,
    3 bottom-right, each cut at the canvas border. Boxes are shifted and clipped to the canvas.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic needs 4 samples, got {len(samples)}")
    in_h, in_w = input_hw
    yc = int(rng.uniform(0.5 * in_h, 1.5 * in_h))
    xc = int(rng.uniform(0.5 * in_w, 1.5 * in_w))
    canvas = np.full((2 * in_h, 2 * in_w, 3), PAD_VALUE, dtype=np.uint8)
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(samples):
        image, boxes = resize_to_fit(image, boxes, input_hw)
        h, w = image.shape[:2]
        if k == 0:    # top-left of the centre
            x1, y1, x2, y2 = max(xc - w, 0), max(yc - h, 0), xc, yc
            sx1, sy1 = w - (x2 - x1), h - (y2 - y1)
        elif k == 1:  # top-right
            x1, y1, x2, y2 = xc, max(yc - h, 0), min(xc + w, 2 * in_w), yc
            sx1, sy1 = 0, h - (y2 - y1)
        elif k == 2:  # bottom-left
            x1, y1, x2, y2 = max(xc - w, 0), yc, xc, min(2 * in_h, yc + h)
            sx1, sy1 = w - (x2 - x1), 0
        else:         # bottom-right
            x1, y1, x2, y2 = xc, yc, min(xc + w, 2 * in_w), min(2 * in_h, yc + h)
            sx1, sy1 = 0, 0
        canvas[y1:y2, x1:x2] = image[sy1:sy1 + (y2 - y1), sx1:sx1 + (x2 - x1)]
        shifted = boxes.copy()
        shifted[:, 0::2] += x1 - sx1
        shifted[:, 1::2] += y1 - sy1
        all_boxes.append(shifted)
        all_labels.append(labels)
    boxes = np.concatenate(all_boxes).astype(np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, 2 * in_w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, 2 * in_h)
    return canvas, boxes, np.concatenate(all_labels)


def affine_matrix(rng: np.random.Generator, in_hw: tuple[int, int], out_hw: tuple[int, int], degrees: float,
                  translate: float, scale_range: tuple[float, float], shear: float) -> tuple[np.ndarray, float]:
    """A random ``3 x 3`` affine map: centre the input, rotate+scale, shear, move to the output centre +- translate.

    Returns ``(M, scale)``.
    """
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    rot = np.eye(3)
    angle = rng.uniform(-degrees, degrees)
    scale = rng.uniform(scale_range[0], scale_range[1])
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=scale)
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    move[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return move @ sh @ rot @ centre, float(scale)


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bounds of the four warped corners of each box, clipped to the output."""
    n = len(boxes)
    if n == 0:
        return boxes.reshape(0, 4).astype(np.float32)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)
    xy = (corners @ matrix.T)[:, :2].reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    out = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), axis=1)
    out[:, 0::2] = out[:, 0::2].clip(0, out_hw[1])
    out[:, 1::2] = out[:, 1::2].clip(0, out_hw[0])
    return out.astype(np.float32)


def random_affine(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  out_hw: tuple[int, int], degrees: float = 10.0, translate: float = 0.1,
                  scale_range: tuple[float, float] = (0.5, 1.5), shear: float = 2.0) -> Sample:
    """Warp ``image`` onto an ``out_hw`` canvas (pad 114) with :func:`affine_matrix`; boxes follow and are
    filtered by :func:`box_candidates`."""
    matrix, scale = affine_matrix(rng, image.shape[:2], out_hw, degrees, translate, scale_range, shear)
    warped = cv2.warpAffine(image, matrix[:2], dsize=(out_hw[1], out_hw[0]),
                            borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    new_boxes = warp_boxes(boxes, matrix, out_hw)
    keep = box_candidates(boxes * scale, new_boxes)
    return warped, new_boxes[keep], labels[keep]


def mixup(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, other: Sample, rng: np.random.Generator,
          scale_range: tuple[float, float] = (0.5, 1.5)) -> Sample:
    """Blend ``other`` into ``image`` (same size out) as the authors' MixUp.

    ``other`` is letterboxed to the image size, scaled by a factor in ``scale_range``, flipped with
    probability 1/2, cropped at a random offset; its boxes that keep enough of themselves (5 px sides) join
    the labels, and the two images are averaged. When none of them survives, ``image`` is returned as is.
    """
    target_h, target_w = image.shape[:2]
    jitter = rng.uniform(*scale_range)
    flip = rng.uniform(0, 1) > 0.5
    o_image, o_boxes, o_labels = other
    canvas, o_boxes = fit_to_input(o_image, o_boxes, (target_h, target_w))
    new_size = (max(int(canvas.shape[1] * jitter), 1), max(int(canvas.shape[0] * jitter), 1))
    canvas = cv2.resize(canvas, new_size, interpolation=cv2.INTER_LINEAR)
    o_boxes = o_boxes * np.float32(jitter)
    origin_h, origin_w = canvas.shape[:2]
    o_boxes[:, 0::2] = o_boxes[:, 0::2].clip(0, origin_w)
    o_boxes[:, 1::2] = o_boxes[:, 1::2].clip(0, origin_h)
    if flip:
        canvas, o_boxes = hflip(canvas, o_boxes)
    padded = np.zeros((max(origin_h, target_h), max(origin_w, target_w), 3), dtype=np.uint8)
    padded[:origin_h, :origin_w] = canvas
    y_off = int(rng.integers(0, padded.shape[0] - target_h)) if padded.shape[0] > target_h else 0
    x_off = int(rng.integers(0, padded.shape[1] - target_w)) if padded.shape[1] > target_w else 0
    cropped = padded[y_off:y_off + target_h, x_off:x_off + target_w]
    moved = o_boxes.copy()
    moved[:, 0::2] = (moved[:, 0::2] - x_off).clip(0, target_w)
    moved[:, 1::2] = (moved[:, 1::2] - y_off).clip(0, target_h)
    keep = box_candidates(o_boxes, moved, wh_thr=5)
    if not keep.any():
        return image, boxes, labels
    blended = (0.5 * image.astype(np.float32) + 0.5 * cropped.astype(np.float32)).astype(np.uint8)
    return (blended, np.concatenate((boxes, moved[keep])).astype(np.float32),
            np.concatenate((labels, o_labels[keep])))


