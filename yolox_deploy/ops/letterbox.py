"""Letterbox preprocessing exactly as the authors' ``preproc`` and the inverse mapping of boxes.

An image ``h x w`` is resized by ``r = min(H / h, W / w)`` to ``int(w * r) x int(h * r)`` (cv2 INTER_LINEAR),
placed top-left on an ``H x W`` canvas filled with the pad value (114), and becomes a float32 CHW array in
0-255 BGR (or the legacy RGB / 255 / ImageNet-normalised form). Boxes predicted on the canvas map back to
the original image by dividing by ``r``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..meta import Preprocess
from ._array import Array
from .boxes import clip_boxes


def letterbox_ratio(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> float:
    """The resize ratio ``min(H / h, W / w)``."""
    return min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])


def letterbox(image: np.ndarray, input_hw: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, float]:
    """``image`` (uint8 ``[h, w, 3]``) on an ``input_hw`` canvas; returns ``(canvas [H, W, 3] uint8, ratio)``."""
    r = letterbox_ratio(image.shape[:2], input_hw)
    new_w, new_h = max(int(image.shape[1] * r), 1), max(int(image.shape[0] * r), 1)
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    bottom, right = input_hw[0] - new_h, input_hw[1] - new_w
    if bottom or right:
        image = cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_CONSTANT,
                                   value=(pad_value, pad_value, pad_value))
    return image, r


def to_input(canvas: np.ndarray, contract: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """A letterboxed BGR uint8 canvas ``[H, W, 3]`` -> the model input ``[3, H, W]`` float32 (into ``out``)."""
    if out is None:
        out = np.empty((3, *canvas.shape[:2]), dtype=np.float32)
    planes = cv2.split(canvas)
    if contract.color == "rgb":
        planes = planes[::-1]
    for c, plane in enumerate(planes):
        out[c] = plane
    if not contract.is_identity:
        if contract.scale != 1.0:
            out *= contract.scale
        if contract.mean is not None:
            out -= np.asarray(contract.mean, dtype=np.float32).reshape(3, 1, 1)
        if contract.std is not None:
            out /= np.asarray(contract.std, dtype=np.float32).reshape(3, 1, 1)
    return out


def preprocess_batch(images: Sequence[np.ndarray], input_hw: tuple[int, int],
                     contract: Preprocess = Preprocess(), batch_size: int | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox a list of BGR uint8 images into one ``[N, 3, H, W]`` float32 batch.

    ``batch_size`` (>= len(images)) pads the batch with empty (pad-value) canvases for fixed-batch
    artefacts. Returns ``(batch, ratios [len(images)])``.
    """
    n = len(images)
    total = max(batch_size or n, n)
    batch = np.empty((total, 3, *input_hw), dtype=np.float32)
    ratios = np.empty(n, dtype=np.float64)
    for i, image in enumerate(images):
        canvas, ratios[i] = letterbox(image, input_hw, contract.pad_value)
        to_input(canvas, contract, out=batch[i])
    if total > n:
        blank = np.full((*input_hw, 3), contract.pad_value, dtype=np.uint8)
        to_input(blank, contract, out=batch[n])
        batch[n + 1:] = batch[n]
    return batch, ratios


def scale_boxes(boxes: Array, ratio: float, image_hw: tuple[int, int] | None = None) -> Array:
    """Boxes on the letterbox canvas (xyxy ``[N, 4]``) -> original-image pixels.

    Clipped to the image when ``image_hw`` is given; the authors' COCO protocol does not clip.
    """
    scaled = boxes / ratio
    return scaled if image_hw is None else clip_boxes(scaled, image_hw[0], image_hw[1])
