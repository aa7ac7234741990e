"""``Detections``: the detections of one image as parallel arrays."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .errors import InputError
from .utils.arrays import to_numpy
from .utils.files import json_ready
from .utils.values import is_integer

Index = Union[int, slice, Sequence[int], np.ndarray]


def name_table(class_names: Sequence[str]) -> np.ndarray:
    """Class names as an object array ``[C]``, indexable by class id arrays."""
    table = np.empty(len(class_names), dtype=object)
    table[:] = list(class_names)
    return table


def as_ids(values: Any, label: str) -> np.ndarray:
    """Integer ids (``[N]`` int64) from ints or whole floats (the authors' outputs hold class ids in a float
    column); a fraction, NaN or infinity is refused rather than truncated, and text (numpy would read "1" as 1,
    in a text array or an object array alike)."""
    arr = to_numpy(values)
    if arr.dtype == np.int64:
        return arr.reshape(-1)
    if arr.dtype.kind not in "iubfO" or (arr.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in arr.flat)):
        raise InputError(f"{label} must be integers, got {arr.reshape(-1)[:3].tolist()}")
    if arr.dtype.kind in "fO":  # Python objects (Decimal, floats) are held to the same rule as floats
        try:
            numbers = arr.astype(np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"{label} must be integers, got {arr.reshape(-1)[:3].tolist()}") from None
        whole = np.isfinite(numbers) & (numbers == np.floor(numbers))
        if not whole.all():
            raise InputError(f"{label} must be whole numbers, got {arr.reshape(-1)[~whole][0]}")
        return numbers.astype(np.int64)
    return arr.astype(np.int64, copy=False).reshape(-1)


def _category_id(value: Any) -> int:
    """A category id as an int: ints, whole floats, numpy scalars, 0-d tensors; text and fractions refused."""
    try:
        number = None if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number != int(number):
        raise InputError(f"category ids must be integers (COCO's are), got {value!r}")
    return int(number)


def as_class_names(class_names: Sequence[str] | None) -> tuple[str, ...] | None:
    """Class names given to the API (any sequence of strings, a numpy array included) as a tuple; a single
    string is refused (its characters would become the names)."""
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or (isinstance(class_names, np.ndarray) and class_names.ndim == 0):
        raise InputError(f"class names are a list of names, not the string {str(class_names)[:60]!r} (the "
                         "command lines' --class-names reads a comma list or a file of names)")
    names = tuple(class_names)
    if not all(isinstance(n, (str, np.str_)) for n in names):
        raise InputError("class names must be strings")
    return tuple(str(n) for n in names)


@dataclass(frozen=True)
class Detections:
    """Detections of one image, in original-image pixels.

    - ``xyxy``: float32 ``[N, 4]`` corners (x1, y1, x2, y2), clipped to the image unless the Detector was made
      with ``clip=False`` (as yolox-eval makes it: the authors' COCO protocol does not clip)
    - ``scores``: float32 ``[N]`` (objectness x class probability)
    - ``class_ids``: int64 ``[N]``
    - ``names``: ``[N]`` class names (str)
    - ``image_size``: ``(height, width)`` of the image the boxes refer to
    - ``category_ids``: int64 ``[N]`` dataset category ids (COCO's ids for the authors' COCO models, the training
      dataset's for a model trained by yolox-train), or ``None`` when the model does not know them

    Rows are sorted by decreasing score when produced by a ``Detector``. Indexing with an int, slice, list
    of ints or boolean mask returns a new ``Detections``.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: np.ndarray
    image_size: tuple[int, int] | None = None
    category_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        try:
            xyxy = to_numpy(self.xyxy).astype(np.float32, copy=False)
            scores = to_numpy(self.scores).astype(np.float32, copy=False).reshape(-1)
        except (TypeError, ValueError):
            raise InputError("xyxy and scores must be numbers") from None
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise InputError(f"xyxy must have shape [N, 4], got {xyxy.shape}")
        n = xyxy.shape[0]
        class_ids = as_ids(self.class_ids, "class_ids")
        names = np.asarray(self.names, dtype=object).reshape(-1)
        cat_ids = None if self.category_ids is None else as_ids(self.category_ids, "category_ids")
        for label, arr in (("scores", scores), ("class_ids", class_ids), ("names", names), ("category_ids", cat_ids)):
            if arr is not None and arr.shape[0] != n:
                raise InputError(f"{label} must have shape [{n}] to match xyxy [N, 4] with N={n}, got {arr.shape}")
        object.__setattr__(self, "category_ids", cat_ids)
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)
        object.__setattr__(self, "names", names)
        if self.image_size is not None:
            size = self.image_size
            try:
                h, w = size
            except (TypeError, ValueError):
                h = w = None
            if not (is_integer(h) and is_integer(w) and h >= 0 and w >= 0):
                raise InputError(f"image_size is (height, width) in pixels, not {size!r}")
            object.__setattr__(self, "image_size", (int(h), int(w)))

    @classmethod
    def empty(cls, image_size: tuple[int, int] | None = None) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   np.zeros(0, object), image_size)

    @classmethod
    def from_arrays(cls, xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                    class_names: Sequence[str] | np.ndarray, image_size: tuple[int, int] | None = None,
                    category_ids: Sequence[int] | np.ndarray | None = None) -> Detections:
        """Build from arrays and the model's label table: a sequence of names, or (cheaper when called per
        image) the object array :func:`name_table` makes of it. Ids out of range are named ``class<id>``.
        ``category_ids``: the dataset category id of each class (when known; none when an id is out of range)."""
        ids = as_ids(class_ids, "class_ids")
        table = class_names if isinstance(class_names, np.ndarray) else name_table(class_names)
        if category_ids is not None and len(category_ids) != len(table):
            raise InputError(f"{len(category_ids)} category ids for {len(table)} class names")
        in_range = ids.size == 0 or (ids.min() >= 0 and ids.max() < len(table))
        if in_range:
            names = table[ids]
        else:
            names = np.array([table[i] if 0 <= i < len(table) else f"class{i}" for i in ids], dtype=object)
        cats = None
        if category_ids is not None and in_range:
            cats = as_ids(category_ids, "category_ids")[ids]
        return cls(xyxy, scores, ids, names, image_size, category_ids=cats)

    def __len__(self) -> int:
        return self.xyxy.shape[0]

    def __iter__(self):
        """Yield ``(xyxy, score, class_id, name)`` per detection."""
        for i in range(len(self)):
            yield self.xyxy[i], float(self.scores[i]), int(self.class_ids[i]), str(self.names[i])

    def __getitem__(self, index: Index) -> Detections:
        if isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)):
            index = [int(index)]
        if not isinstance(index, slice):
            # a bool would pass as 1 / 0, None or a tuple would add or index an axis
            sel = np.asarray(index) if isinstance(index, (list, np.ndarray)) else None
            if sel is not None and sel.size == 0 and sel.dtype != bool:
                sel = sel.astype(np.int64)  # [] is no mask: an empty list of indices
            if sel is None or sel.ndim != 1 or sel.dtype.kind not in "biu":
                raise IndexError("index Detections with an int, a slice, a list or array of ints, or a boolean mask "
                                 f"of length N, not {index!r}")
            if sel.dtype == bool and sel.shape != (len(self),):
                raise IndexError(f"boolean mask must have shape [{len(self)}], got {sel.shape}")
            index = sel
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index], self.names[index],
                          self.image_size, category_ids=None if self.category_ids is None else self.category_ids[index])

    def __hash__(self) -> int:
        raise TypeError("Detections are not hashable (they hold arrays); compare them with ==")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        return (self.image_size == other.image_size and np.array_equal(self.xyxy, other.xyxy)
                and np.array_equal(self.scores, other.scores) and np.array_equal(self.class_ids, other.class_ids)
                and np.array_equal(self.names, other.names)
                and (len(self) == 0  # no detection to carry a category id: known or not, the same nothing
                     or ((self.category_ids is None) == (other.category_ids is None)
                         and (self.category_ids is None or np.array_equal(self.category_ids, other.category_ids)))))

    @property
    def area(self) -> np.ndarray:
        return (self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])

    @property
    def finite(self) -> np.ndarray:
        """bool ``[N]``: which detections have a finite box and score (all but a diverged model's)."""
        return np.isfinite(self.xyxy).all(axis=1) & np.isfinite(self.scores)

    def to_coco(self, image_id: int, category_ids: Sequence[int | None] | Mapping[int, int | None] | None = None,
                ) -> list[dict[str, Any]]:
        """COCO result entries (``bbox`` as x, y, w, h) for the image of id ``image_id`` (an integer, as COCO's).

        ``category_ids`` maps class ids to dataset category ids (a sequence indexed by class id, or a dict);
        classes mapped to ``None`` (or absent from a dict) are left out. Without it, the detections' own
        dataset category ids are written (:attr:`category_ids`); detections of a model that does not know them
        write their class ids, with a warning.
        """
        if not is_integer(image_id):
            raise InputError(f"image_id must be an integer (COCO image ids are), got {image_id!r}")
        if category_ids is not None:
            cats = self._mapped(category_ids)
        elif self.category_ids is not None:
            cats = self.category_ids.tolist()
        else:
            if len(self):
                warnings.warn("these detections carry no dataset category ids (the model recorded none, and its "
                              "classes are not COCO's 80 by name), so to_coco writes class indices; pass "
                              "category_ids= to map them", stacklevel=2)
            cats = self.class_ids.tolist()
        finite = self.finite
        if not finite.all():
            warnings.warn("to_coco leaves out detections whose box or score is not finite (NaN or inf: a diverged "
                          "model's), which COCO's JSON cannot hold", stacklevel=2)  # one text: said once, not per image
        return [{"image_id": int(image_id), "category_id": int(cat),
                 "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": score}
                for ((x1, y1, x2, y2), score, _, _), cat, ok in zip(self, cats, finite) if cat is not None and ok]

    def _mapped(self, category_ids: Sequence[int | None] | Mapping[int, int | None]) -> list[int | None]:
        """Each detection's category id through ``category_ids`` (see :meth:`to_coco`), checked."""
        if isinstance(category_ids, Mapping):
            text = next((k for k in category_ids if not is_integer(k)), None)
            if text is not None:  # {"0": 1} (a map read from JSON) would map no class and leave every detection out
                raise InputError(f"category_ids maps class ids (integers) to category ids; its key {text!r} is no "
                                 "class id (a map read from JSON has text keys: convert them with int())")
            cats = [category_ids.get(c) for c in self.class_ids.tolist()]
        else:
            if len(self):
                outside = [int(c) for c in (self.class_ids.min(), self.class_ids.max())
                           if not 0 <= c < len(category_ids)]
                if outside:
                    raise InputError(f"category_ids maps {len(category_ids)} classes, but a detection has class id "
                                     f"{outside[0]}")
            cats = [category_ids[c] for c in self.class_ids.tolist()]
        return [None if c is None else _category_id(c) for c in cats]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: image size and a list of detections (with their dataset ``category_id`` when known).
        A coordinate or score that is not finite (a diverged model's) is written as ``null``."""
        cats = self.category_ids
        return json_ready({
            "image_size": list(self.image_size) if self.image_size else None,
            "detections": [{"xyxy": [round(float(v), 2) for v in box], "score": round(score, 5), "class_id": cid,
                            "name": name, **({} if cats is None else {"category_id": int(cats[i])})}
                           for i, (box, score, cid, name) in enumerate(self)],
        })

    def draw(self, image: np.ndarray, *, thickness: int | None = None, show_scores: bool = True) -> np.ndarray:
        """A copy of ``image`` (BGR uint8) with the boxes and labels drawn."""
        from .viz import draw_detections

        return draw_detections(image, self, thickness=thickness, show_scores=show_scores)
