"""A deterministic synthetic scene: an input with real structure when no sample image is at hand."""

from __future__ import annotations

import cv2
import numpy as np


def synthetic_scene(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """BGR uint8 ``[height, width, 3]``: a gradient with blurred shapes and noise, the same for a given seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([
        80 + 100 * xx / width,
        60 + 120 * yy / height,
        120 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0),
    ], axis=-1)
    for _ in range(12):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x1, y1 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x2, y2 = x1 + int(rng.integers(30, width // 3)), y1 + int(rng.integers(30, height // 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x1, y1), (x2, y2), color, -1)
        else:
            cv2.ellipse(img, ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, color, -1)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8)
