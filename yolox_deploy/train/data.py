"""Reading a COCO-format detection set for training, with every bad annotation handled explicitly.

Layout (the authors' and COCO's): ``ROOT/annotations/instances_<split>.json`` and images in ``ROOT/<split>/``.
Classes are the JSON's categories in ascending id order (the authors' convention), named by their ``name``.

What happens to bad input:

- no categories, no ``annotations/instances_<split>.json``, unreadable JSON, an image entry without
  ``width``/``height``: :class:`~yolox_deploy.errors.InputError`.
- image files that do not exist: an :class:`InputError` naming the first few and the count, unless
  ``skip_missing=True``, which drops those images (and their boxes) with one warning.
- a box reaching outside its image: clipped to the image (counted in the summary warning). The authors move a
  box with a negative ``x`` or ``y`` to 0 keeping its width / height; clipping keeps the part of the object that
  is in the image instead (COCO has no such box, so the two agree there).
- an annotation whose ``area`` (the segmentation's, in COCO) is 0, negative or NaN: skipped, counted, as the
  authors' dataset does (it keeps only ``area > 0``); an annotation without ``area`` is kept.
- a box with zero or negative width or height after clipping, a ``bbox`` that is not four finite numbers, an
  ``iscrowd`` other than 0 / 1, or an unknown ``category_id``: skipped (counted in one summary warning, which
  names the first annotation of each kind).
- ``iscrowd`` boxes (one box around a crowd of objects): skipped, counted, as the authors' dataset does; a box
  around a crowd is not one object, and COCO evaluation ignores detections on crowds anyway.
- images without any (remaining) box: kept, as background images (the authors keep them too).

Nothing is silently dropped: every skip is counted in :class:`AnnotationReport`, logged once as a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..eval.coco import coco_box, open_coco

log = logging.getLogger(__name__)
MISSING_SHOWN = 5


@dataclass
class ImageRecord:
    """One training image: its file, its size from the JSON, and its boxes (``x1, y1, x2, y2`` pixels,
    float32 ``[N, 4]``) with class indices (int64 ``[N]``, contiguous from 0)."""

    image_id: int | str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray


# each kind of annotation skipped: its AnnotationReport count, and how the summary names it
SKIPPED_KINDS = (("degenerate", "zero/negative-area boxes (after clipping)"),
                 ("zero_area", "annotations with an area of 0, below 0 or NaN"),
                 ("malformed", "boxes with malformed or non-finite coordinates"),
                 ("bad_iscrowd", "annotations with an iscrowd other than 0 / 1"),
                 ("unknown_category", "boxes with a category_id not in the category list"),
                 ("crowd", "iscrowd boxes"), ("orphan", "annotations of image ids not in the image list"))


@dataclass
class AnnotationReport:
    """What loading did to the annotations (all counts are boxes unless named otherwise)."""

    boxes_kept: int = 0
    clipped: int = 0
    degenerate: int = 0
    zero_area: int = 0
    malformed: int = 0
    bad_iscrowd: int = 0
    unknown_category: int = 0
    crowd: int = 0
    orphan: int = 0
    missing_images: list[str] = field(default_factory=list)
    boxes_of_missing_images: int = 0
    first: dict[str, str] = field(default_factory=dict)  # the first annotation of each kind skipped, described

    def count(self, kind: str, ann: dict, what: str = "") -> None:
        """Count one annotation skipped as ``kind`` (an attribute), noting the first of its kind."""
        setattr(self, kind, getattr(self, kind) + 1)
        if kind not in self.first:
            self.first[kind] = f"annotation {ann.get('id', '?')}" + (f", {what}" if what else "")

    def skipped(self) -> int:
        return sum(getattr(self, kind) for kind, _ in SKIPPED_KINDS)

    def summary(self) -> str:
        parts = []
        if self.clipped:
            parts.append(f"{self.clipped} boxes reaching outside their image were clipped to it")
        for attr, text in SKIPPED_KINDS:
            if getattr(self, attr):
                first = f" (first: {self.first[attr]})" if attr in self.first and attr != "crowd" else ""
                parts.append(f"{getattr(self, attr)} {text} were skipped{first}")
        if self.missing_images:
            parts.append(f"{len(self.missing_images)} missing images were skipped "
                         f"(with {self.boxes_of_missing_images} boxes)")
        return "; ".join(parts)


@dataclass
class DetectionSet:
    """A validated COCO-format split ready for training: per image its path, size, boxes and labels only (the
    annotation file's object, with its segmentation polygons, is not kept: on COCO train2017 it holds about
    2 GB for the whole run, copied into every spawned loader worker)."""

    root: Path
    split: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    records: list[ImageRecord]
    report: AnnotationReport

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)


def _parse_box(ann: dict, width: int, height: int, report: AnnotationReport) -> tuple[float, ...] | None:
    box = coco_box(ann.get("bbox"))
    if box is None:
        report.count("malformed", ann, f"bbox {ann.get('bbox')!r}")
        return None
    x, y, w, h = box
    x1, y1, x2, y2 = x, y, x + w, y + h
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if not (cx2 > cx1 and cy2 > cy1):
        report.count("degenerate", ann, f"bbox {ann['bbox']!r}")
        return None
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        report.clipped += 1
    return cx1, cy1, cx2, cy2


def load_detection_set(root: str | os.PathLike, split: str = "train2017", *, skip_missing: bool = False,
                       ) -> DetectionSet:
    """Read and validate ``root/annotations/instances_<split>.json`` (see the module notes for bad input)."""
    coco = open_coco(root, split)  # raises InputError for a missing folder/JSON, bad JSON, no categories
    cat_index = {cid: k for k, cid in enumerate(coco.category_ids)}
    report = AnnotationReport()
    image_ids = set(coco.coco.imgs)
    report.orphan = sum(len(anns) for iid, anns in coco.coco.imgToAnns.items() if iid not in image_ids)

    records: list[ImageRecord] = []
    for image_id in coco.image_ids:
        info = coco.coco.imgs[image_id]
        try:
            width, height = int(info["width"]), int(info["height"])
            file_name = info["file_name"]
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: a width of Infinity
            raise InputError(f"{coco.ann_file}: image {image_id} has no valid file_name/width/height; COCO image "
                             "entries need all three") from None
        if width <= 0 or height <= 0:
            raise InputError(f"{coco.ann_file}: image {image_id} ({file_name}) has size {width}x{height}")
        boxes, labels = [], []
        for ann in coco.coco.imgToAnns.get(image_id, []):
            crowd = ann.get("iscrowd", 0)
            if crowd not in (0, 1):
                report.count("bad_iscrowd", ann, f"iscrowd {crowd!r}")
                continue
            if crowd:
                report.count("crowd", ann)
                continue
            if ann.get("category_id") not in cat_index:
                report.count("unknown_category", ann, f"category_id {ann.get('category_id')!r}")
                continue
            area = ann.get("area")
            if isinstance(area, (int, float)) and not isinstance(area, bool) and not area > 0:
                report.count("zero_area", ann, f"area {area!r}")
                continue
            box = _parse_box(ann, width, height, report)
            if box is not None:
                boxes.append(box)
                labels.append(cat_index[ann["category_id"]])
        records.append(ImageRecord(image_id, coco.image_dir / file_name, width, height,
                                   np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                                   np.asarray(labels, dtype=np.int64)))

    missing = [r for r in records if not r.path.is_file()]
    if missing:
        names = ", ".join(str(coco.coco.imgs[r.image_id]["file_name"]) for r in missing[:MISSING_SHOWN])
        more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        if not skip_missing:
            raise InputError(f"{len(missing)} of {len(records)} images listed in {coco.ann_file.name} are missing "
                             f"from {coco.image_dir}: {names}{more}; restore them, or skip them with "
                             "--skip-missing (skip_missing=True)")
        report.missing_images = [str(r.path) for r in missing]
        report.boxes_of_missing_images = sum(len(r.labels) for r in missing)
        gone = {id(r) for r in missing}
        records = [r for r in records if id(r) not in gone]
    if not records:
        raise InputError(f"{coco.ann_file} lists no usable image")
    report.boxes_kept = sum(len(r.labels) for r in records)
    if report.summary():
        log.warning("%s: %s", coco.ann_file, report.summary())
    if report.boxes_kept == 0:
        raise InputError(f"{coco.ann_file}: no usable box left to train on ({report.summary() or 'no annotations'})")
    return DetectionSet(Path(root), split, tuple(coco.category_names), tuple(coco.category_ids), records, report)
