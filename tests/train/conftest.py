"""Fixtures for the training tests: small synthetic COCO-format datasets written to a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

CATEGORIES = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}, {"id": 5, "name": "blue"}]
COLOURS = {1: (0, 0, 255), 2: (0, 255, 0), 5: (255, 0, 0)}  # BGR


def write_coco(root: Path, split: str, images: list[dict], annotations: list[dict],
               categories: list[dict] | None = None) -> Path:
    """Write ``root/annotations/instances_<split>.json`` (images are written by the caller)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": CATEGORIES if categories is None else categories}))
    return path


def make_synthetic_coco(root: Path, split: str = "train2017", num_images: int = 8, size: tuple[int, int] = (96, 128),
                        seed: int = 0) -> Path:
    """``num_images`` gray images (h, w = ``size``) each with 1-3 solid rectangles whose colour is their class."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    (root / split).mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(num_images):
        image = np.full((h, w, 3), 127, np.uint8)
        image += rng.integers(0, 20, image.shape, dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = [1, 2, 5][int(rng.integers(0, 3))]
            cv2.rectangle(image, (x, y), (x + bw - 1, y + bh - 1), COLOURS[cat], thickness=-1)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
        name = f"{i + 1:06d}.jpg"
        cv2.imwrite(str(root / split / name), image)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    write_coco(root, split, images, anns)
    return root


@pytest.fixture
def synthetic_coco(tmp_path: Path) -> Path:
    """A train2017 + val2017 synthetic COCO folder (8 + 4 images of 96x128, classes red/green/blue)."""
    root = tmp_path / "data"
    make_synthetic_coco(root, "train2017", 8, seed=0)
    make_synthetic_coco(root, "val2017", 4, seed=1)
    return root
