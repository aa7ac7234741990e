"""The COCO 2017 label set used by the authors' released weights (80 classes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# COCO category id of each of the 80 classes, in the order above (the ids are not contiguous).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """COCO names for an 80-class model, ``class0, class1, ...`` otherwise."""
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return placeholder_names(num_classes)


def placeholder_names(num_classes: int) -> tuple[str, ...]:
    """``class0, class1, ...``: the names of classes nothing names."""
    return tuple(f"class{i}" for i in range(num_classes))


def category_ids_problem(ids: Any, num_classes: int) -> str | None:
    """What is wrong with ``ids`` as the dataset category id of each of ``num_classes`` classes (distinct
    integers, one per class), or None when nothing is."""
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return f"category_ids must be a list of integers, got {ids!r}"
    if len(ids) != num_classes:
        return f"category_ids has {len(ids)} ids for {num_classes} classes"
    if len(set(ids)) != len(ids):
        return f"category_ids must be distinct, got {list(ids)}"
    return None


def known_category_ids(class_names: Sequence[str], recorded: Sequence[int] | None) -> tuple[int, ...] | None:
    """The dataset category id of each class: those ``recorded`` with the model (by yolox-train), else COCO's
    for COCO's 80 classes in their order (the authors' weights), else None (unknown)."""
    if recorded is not None:
        return tuple(recorded)
    return COCO_CATEGORY_IDS if tuple(class_names) == COCO_CLASSES else None
