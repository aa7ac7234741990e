"""COCO bbox evaluation of any Detector, as the authors' ``COCOEvaluator`` (pycocotools).

A COCO folder holds ``annotations/instances_<split>.json`` and ``<split>/`` images. Model classes map to
dataset categories by name (an 80-class COCO model on a COCO subset scores that subset), else by position in
the sorted category ids (the authors' convention); see :func:`category_mapping`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.coco import placeholder_names
from ..errors import InputError
from ..io.images import check_annotated_size, check_image_path, read_image
from ..utils.text import listed
from ..utils.values import is_finite_number, is_integer

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2  # batches decoded ahead of the model during evaluation (bounded memory)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
STAT_LABELS = (
    "AP @[IoU=0.50:0.95 | area=all | maxDets=100]", "AP @[IoU=0.50 | area=all | maxDets=100]",
    "AP @[IoU=0.75 | area=all | maxDets=100]", "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]", "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=1]", "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=100]", "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]", "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
)

# the object areas (pixels) each of the STAT_NAMES counts: COCOeval's ranges all, small, medium, large
_ALL, _SMALL, _MEDIUM, _LARGE = (0.0, 1e10), (0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 1e10)
_STAT_AREAS = (_ALL, _ALL, _ALL, _SMALL, _MEDIUM, _LARGE, _ALL, _ALL, _ALL, _SMALL, _MEDIUM, _LARGE)

# The authors' evaluation protocol (their COCOEvaluator): these Detector settings reproduce their AP.
AUTHORS_PROTOCOL: dict[str, Any] = {"conf": 0.01, "nms": 0.65, "max_det": None, "clip": False}


def _coco_api():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        try:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval
        except ImportError:
            raise InputError("COCO evaluation needs pycocotools: pip install pycocotools") from None
    return COCO, COCOeval


@dataclass
class CocoSplit:
    """One split of a COCO-format folder."""

    root: Path
    split: str
    ann_file: Path
    image_dir: Path
    coco: Any
    image_ids: list[int]
    categories: list[dict[str, Any]]
    scorable: bool = False  # checked by check_scorable

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    @property
    def category_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]


def coco_splits(root: str | os.PathLike) -> list[str]:
    """The splits a COCO-format folder has annotations for (``annotations/instances_<split>.json``)."""
    folder = Path(root) / "annotations"
    try:
        return sorted(p.name[len("instances_"):-len(".json")] for p in folder.glob("instances_*.json") if p.is_file())
    except OSError:
        return []


def open_coco(root: str | os.PathLike, split: str = "val2017") -> CocoSplit:
    """Open ``root/annotations/instances_<split>.json`` with images in ``root/<split>/``."""
    r = Path(root)
    if not r.is_dir():
        raise InputError(f"{r} is a file, not a dataset folder (annotations/instances_<split>.json + <split>/)"
                         if r.exists() else f"dataset folder not found: {r}")
    ann = r / "annotations" / f"instances_{split}.json"
    if not ann.is_file():
        found = coco_splits(r)
        has = f" (it has the split{'s' if len(found) > 1 else ''} {', '.join(found)})" if found else ""
        raise InputError(f"{r} is not a COCO folder of split {split}: missing annotations/instances_{split}.json{has}")
    image_dir = r / split
    if not image_dir.is_dir():
        raise InputError(f"{r} is not a COCO folder: missing image folder {split}/")
    COCO, _ = _coco_api()
    try:
        with open(ann, "rb") as f:
            dataset = json.load(f)
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"{ann} is not a valid COCO annotation file ({e or type(e).__name__})") from None
    problem = _structure_problem(dataset)
    if problem:
        raise InputError(f"{ann} is not a valid COCO annotation file: {problem}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    if not coco.dataset.get("categories"):
        raise InputError(f"{ann} has no categories")
    for what, entries in (("category", coco.dataset["categories"]), ("image", coco.dataset.get("images") or [])):
        problem = _ids_problem(entries, what, integers=False)
        if problem:
            raise InputError(f"{ann}: {problem}")
    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: _id_order(c["id"]))
    unnamed = [c["id"] for c in categories if not isinstance(c.get("name"), str) or not c["name"]]
    if unnamed:
        raise InputError(f"{ann}: {len(unnamed)} categories have no name (first id {unnamed[0]})")
    twice = sorted(n for n, k in Counter(c["name"] for c in categories).items() if k > 1)
    if twice:  # classes are matched by name: two categories of one name would be scored as one
        ids = [c["id"] for c in categories if c["name"] == twice[0]]
        raise InputError(f"{ann}: category names must be distinct; {twice[0]!r} names ids "
                         f"{', '.join(map(str, ids))}")
    image_ids = sorted(coco.getImgIds(), key=_id_order)
    if not image_ids:
        raise InputError(f"{ann} lists no images")
    unnamed = [i for i in image_ids if not (isinstance(name := coco.imgs[i].get("file_name"), str) and name)]
    if unnamed:
        raise InputError(f"{ann}: {len(unnamed)} image(s) have no file_name (first id {unnamed[0]})")
    return CocoSplit(r, split, ann, image_dir, coco, image_ids, categories)


# the fields pycocotools indexes each kind of entry by: they must be there, and not be lists or objects
_INDEXED = {"images": ("id",), "categories": ("id",), "annotations": ("id", "image_id", "category_id")}


def _structure_problem(dataset: Any) -> str | None:
    """What keeps pycocotools from indexing ``dataset`` (a parsed annotation file), or None: the file is an
    object whose ``images``, ``annotations`` and ``categories`` are lists of objects with the fields they are
    indexed by, each a single value."""
    if not isinstance(dataset, dict):
        return f"it holds a JSON {type(dataset).__name__}, not an object with images, annotations and categories"
    for key, fields in _INDEXED.items():
        entries = dataset.get(key, [])
        if not isinstance(entries, list):
            return f"{key!r} is a JSON {type(entries).__name__}, not a list"
        what = key[:-1].replace("categorie", "category")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                return f"{what} #{i} is a JSON {type(entry).__name__}, not an object"
            for name in fields:
                if name not in entry:
                    return f"{what} #{i} has no {name!r}"
                if isinstance(entry[name], (list, dict)):  # an index key; what kind of key: _ids_problem
                    return f"{what} #{i} has {name} {entry[name]!r}, not an integer"
    return None


def open_scorable(root: str | os.PathLike, split: str = "val2017") -> CocoSplit:
    """:func:`open_coco` for evaluation, checked before any inference (:func:`check_scorable`)."""
    return check_scorable(open_coco(root, split))


def check_scorable(data: CocoSplit) -> CocoSplit:
    """``data``, checked for scoring: a split without boxes to score against (none, or only crowd regions),
    with images missing from its folder, or with annotations the scorer cannot read is refused; annotation
    ids are renumbered from 1 when one is 0 (COCOeval reads id 0 as "unmatched")."""
    if data.scorable:
        return data
    annotations = data.coco.dataset.get("annotations")
    if not annotations:
        raise InputError(f"{data.ann_file} has no annotations: there is nothing to score detections against")
    imgs = data.coco.imgs
    missing = [imgs[i]["file_name"] for i in data.image_ids if not (data.image_dir / imgs[i]["file_name"]).is_file()]
    if missing:
        raise InputError(f"{len(missing)} image(s) listed in {data.ann_file} are not in {data.image_dir} "
                         f"(first: {missing[0]})")
    for i in data.image_ids:  # what a stat can tell (an empty file, a pipe) is said before any inference
        check_image_path(data.image_dir / imgs[i]["file_name"])
    for what, entries in (("category", data.categories), ("image", list(data.coco.imgs.values())),
                          ("annotation", annotations)):
        problem = _ids_problem(entries, what, integers=True)
        if problem:  # the scorer looks annotations up by id (a shared id scores one box in place of the
            raise InputError(f"{data.ann_file}: {problem}")  # others) and results carry integer ids
    for i, a in enumerate(annotations):
        problem = _annotation_problem(a, data.coco)
        if problem:
            name = a["id"] if isinstance(a, dict) and "id" in a else f"#{i}"
            raise InputError(f"{data.ann_file}: annotation {name} {problem}; the scorer needs bbox [x, y, w, h], "
                             "area, iscrowd, image_id and category_id")
    if any(a["id"] == 0 for a in annotations):  # COCOeval records a match by the ground truth's id: id 0 reads
        for k, a in enumerate(annotations, 1):  # as "unmatched" and its detection as a false positive
            a["id"] = k
        with contextlib.redirect_stdout(io.StringIO()):
            data.coco.createIndex()
    if all(a["iscrowd"] for a in annotations):  # COCOeval ignores crowd regions: no AP to give
        raise InputError(f"{data.ann_file}: every annotation is a crowd region (iscrowd 1), which COCO scoring "
                         "ignores; there is nothing to score detections against")
    data.scorable = True
    return data


def _id_order(i: int | str) -> tuple[bool, int | str]:
    """Sort key of ids that are integers or names (integers first)."""
    return isinstance(i, str), i


def _ids_problem(entries: list[Any], what: str, *, integers: bool) -> str | None:
    """Why the ``id`` fields of ``entries`` (images, categories, annotations) cannot key them, or None: no two
    may be equal (pycocotools indexes by id, so a second entry of an id silently replaces or repeats the
    first), and each must be an integer (as COCO's: scoring writes results with integer ids) or, unless
    ``integers``, a name (training only uses ids as keys)."""
    ids = [e.get("id") if isinstance(e, dict) else None for e in entries]
    kinds = "an integer (COCO ids are integers)" if integers else "an integer or a name"
    bad = [i for i in ids if not (is_integer(i) or (not integers and isinstance(i, str) and i))]
    if bad:
        return f"{what} id {bad[0]!r} is not {kinds}"
    count = Counter(ids)
    twice = next((i for i, k in count.items() if k > 1), None)
    if twice is not None:
        return f"{count[twice]} {what}s have the id {twice}; ids must be unique"
    return None


def coco_box(value: Any) -> tuple[float, float, float, float] | None:
    """A COCO ``bbox`` (``[x, y, width, height]``) as four floats; None unless it is a list of four finite
    numbers (a string of four digits is not one)."""
    if not (isinstance(value, list) and len(value) == 4 and all(is_finite_number(v) for v in value)):
        return None
    x, y, w, h = (float(v) for v in value)
    return x, y, w, h


def _annotation_problem(a: Any, coco: Any) -> str | None:
    """Why a ground-truth annotation cannot be scored by COCOeval, or None."""
    if not isinstance(a, dict):
        return "is not an object"
    for key in ("bbox", "area", "iscrowd", "image_id", "category_id"):
        if key not in a:
            return f"has no {key!r}"
    if coco_box(a["bbox"]) is None:
        return f"has bbox {a['bbox']!r}, not four numbers"
    if not is_finite_number(a["area"]) or a["iscrowd"] not in (0, 1):
        return f"has area {a['area']!r} / iscrowd {a['iscrowd']!r} (a number and 0 or 1 expected)"
    if a["image_id"] not in coco.imgs:
        return f"names image_id {a['image_id']!r}, which the file does not list"
    if a["category_id"] not in coco.cats:
        return f"names category_id {a['category_id']!r}, which the file does not list"
    return None


def category_mapping(class_names: Sequence[str], data: CocoSplit) -> list[int | None]:
    """Dataset category id for each model class (``None`` where a class has no category).

    Classes map to the categories of their name (else of their name up to case and surrounding spaces, when
    that is unambiguous). A model whose names match none of the categories (labels of another naming) maps by
    position in the sorted category ids, the authors' convention (a warning lists the pairs, unless the names
    are the placeholders of a model without labels). When only some names match, the classes and categories
    left over pair up in that order if they are as many (a warning lists the pairs: one renamed category, e.g.
    motorcycle / motorbike); dataset categories without a class are named in a warning and left out of the
    scores (:func:`coco_evaluate` with ``category_ids``). Anything else is refused.
    """
    names = list(class_names)
    ids = list(data.category_ids)
    name_of = dict(zip(ids, data.category_names))
    by_name = {n: i for i, n in name_of.items()}
    mapping: list[int | None] = [by_name.get(n) for n in names]
    twice = next((n for n, k in Counter(n for n, i in zip(names, mapping) if i is not None).items() if k > 1), None)
    if twice is not None:  # the detections of both would be scored as one category's
        classes = [str(k) for k, n in enumerate(names) if n == twice]
        raise InputError(f"the model's classes {' and '.join(classes)} are both named {twice!r}: one dataset "
                         "category cannot score both; give each class its own name (--class-names)")
    # "Person" / "person ": one name, where exactly one unmatched category and one unmatched class fold to it
    cats = Counter(_fold(n) for i, n in name_of.items() if i not in mapping)
    classes = Counter(_fold(n) for n, i in zip(names, mapping) if i is None)
    by_folded: dict[str, int] = {}
    for i, n in name_of.items():
        key = _fold(n)
        if i not in mapping and cats[key] == classes[key] == 1:
            by_folded[key] = i
    mapping = [i if i is not None else by_folded.get(_fold(n)) for n, i in zip(names, mapping)]
    matched = {i for i in mapping if i is not None}
    if not matched and len(names) == len(ids):
        if tuple(names) != placeholder_names(len(names)):  # names that were meant to match, and match nothing
            log.warning("none of the model's class names is a dataset category; paired by position in the "
                        "category ids (the authors' convention): %s",
                        listed([f"{n} -> {name_of[i]}" for n, i in zip(names, ids)], 5))
        return ids
    left_classes = [k for k, i in enumerate(mapping) if i is None]
    left_cats = [i for i in ids if i not in matched]
    if left_classes and len(left_classes) == len(left_cats):
        for k, i in zip(left_classes, left_cats):
            mapping[k] = i
        log.warning("%d of the model's classes have no dataset category of their name; paired by position in the "
                    "category ids: %s", len(left_classes),
                    listed([f"{names[k]} -> {name_of[i]}" for k, i in zip(left_classes, left_cats)], 5))
    elif left_cats and left_classes:
        classes, categories = listed([names[k] for k in left_classes], 5), listed([name_of[i] for i in left_cats], 5)
        raise InputError(f"the model's classes and the dataset's categories do not match by name: "
                         f"{len(left_classes)} classes have no category ({classes}) and {len(left_cats)} categories "
                         f"no class ({categories}); "
                         "evaluate on a dataset labelled with the model's classes, or name the model's classes as "
                         "the dataset does (class_names=, --class-names)")
    elif left_cats:
        log.warning("%d dataset categories are no class of the model and are not scored: %s", len(left_cats),
                    listed([name_of[i] for i in left_cats], 5))
    return mapping


def _fold(name: str) -> str:
    return name.strip().casefold()


@dataclass
class EvalResult:
    """COCO metrics: the 12 standard numbers, AP per category, and the raw detections."""

    stats: dict[str, float]
    per_class: dict[str, float]
    num_images: int
    detections: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.stats, "per_class_AP": self.per_class, "num_images": self.num_images}


def coco_evaluate(data: CocoSplit, detections: list[dict[str, Any]],
                  category_ids: Sequence[int] | None = None) -> EvalResult:
    """Score COCO-format detections against a split (pycocotools, bbox), on ``category_ids`` (default: all)."""
    _, COCOeval = _coco_api()
    scored = set(data.category_ids if category_ids is None else category_ids)
    if not detections:
        log.warning("no detections on any of the %d images: AP 0 (NaN for classes without ground truth)",
                    len(data.image_ids))
        return EvalResult(*_undetected_scores(data, scored), len(data.image_ids), detections)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = data.coco.loadRes([dict(d) for d in detections])  # loadRes adds segmentation/area/id to each entry
        ev = COCOeval(data.coco, dt, "bbox")
        ev.params.imgIds = data.image_ids
        ev.params.catIds = sorted(scored)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) if v > -1 else float("nan") for k, v in zip(STAT_NAMES, ev.stats)}  # -1: no boxes
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[data.coco.cats[cat_id]["name"]] = float(np.mean(p)) if p.size else float("nan")
    return EvalResult(stats, per_class, len(data.image_ids), detections)


def _undetected_scores(data: CocoSplit, scored: set[int]) -> tuple[dict[str, float], dict[str, float]]:
    """The metrics and per-class APs of detecting nothing, as COCOeval would give them: 0 where there are
    boxes to find, undefined (NaN, COCOeval's -1) where there are none."""
    images = set(data.image_ids)
    boxes = [a for a in data.coco.anns.values()
             if a["image_id"] in images and a["category_id"] in scored and not a.get("iscrowd")]
    with_boxes = {a["category_id"] for a in boxes}
    per_class = {c["name"]: 0.0 if c["id"] in with_boxes else float("nan")
                 for c in data.categories if c["id"] in scored}
    found = {rng: any(rng[0] <= a["area"] <= rng[1] for a in boxes) for rng in set(_STAT_AREAS)}
    stats = {name: 0.0 if found[rng] else float("nan") for name, rng in zip(STAT_NAMES, _STAT_AREAS)}
    return stats, per_class


def _read_annotated(data: CocoSplit, image_id: int) -> np.ndarray:
    """An image of the split, refused when it reads at another size than its entry gives (an EXIF orientation
    the boxes were not drawn for would score every box as missed)."""
    path = data.image_path(image_id)
    image = read_image(path)
    entry = data.coco.imgs[image_id]
    if is_integer(entry.get("height")) and is_integer(entry.get("width")):
        check_annotated_size(image, path, (entry["height"], entry["width"]))
    return image


def evaluate(detector: Any, data: CocoSplit | str | os.PathLike, *, split: str = "val2017",
             progress: Callable[[int], Any] | bool = False) -> EvalResult:
    """Run ``detector`` over every image of a COCO split and score it.

    The detector's own settings apply; ``Detector(..., **AUTHORS_PROTOCOL)`` reproduces the authors' AP. ``progress``: ``True`` for a tqdm bar, or a callable receiving the number of images done.
    """
    if not all(hasattr(detector, name) for name in ("meta", "batch_size", "run_batch")):
        hint = f"Detector({str(detector)!r})" if isinstance(detector, (str, os.PathLike)) else "Detector(weights)"
        raise InputError(f"evaluate runs a Detector, e.g. evaluate({hint}, data), not {type(detector).__name__}")
    ds = check_scorable(data) if isinstance(data, CocoSplit) else open_scorable(data, split)
    mapping = category_mapping(detector.meta.class_names, ds)
    detections: list[dict[str, Any]] = []
    from tqdm import tqdm

    ids = ds.image_ids
    dropped = 0
    bs = detector.batch_size
    chunks = [ids[i:i + bs] for i in range(0, len(ids), bs)]
    # the bar is closed however the loop ends, so a message that follows starts on a line of its own
    with tqdm(total=len(ids), desc="eval", unit="img", leave=False, disable=progress is not True) as bar, \
            ThreadPoolExecutor(max_workers=2) as pool:  # decode the next images while the model runs
        def load(chunk: list[int]) -> Future:
            return pool.submit(lambda: [_read_annotated(ds, i) for i in chunk])

        ahead = deque(load(c) for c in chunks[:PREFETCH_BATCHES])  # at most this many batches decoded ahead
        for k, chunk in enumerate(chunks):
            images = ahead.popleft().result()
            if k + PREFETCH_BATCHES < len(chunks):
                ahead.append(load(chunks[k + PREFETCH_BATCHES]))
            for image_id, dets in zip(chunk, detector.run_batch(images)):
                dropped += len(dets) - int(dets.finite.sum())
                with warnings.catch_warnings():  # said once below, with their count
                    warnings.filterwarnings("ignore", "to_coco leaves out detections whose box or score is not finite")
                    detections.extend(dets.to_coco(image_id, mapping))
            bar.update(len(chunk))
            if callable(progress):
                progress(len(chunk))
    if dropped:
        log.warning("%d detections with a box or score that is not finite (NaN or inf: a diverged model's) were "
                    "left out of the scores", dropped)
    return coco_evaluate(ds, detections, [i for i in mapping if i is not None])
