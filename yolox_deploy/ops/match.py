"""Agreement between two sets of detections (export verification, ``yolox-compare``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import box_iou


@dataclass(frozen=True)
class Agreement:
    """How two detection sets of one image agree.

    ``matched``: pairs with the same class and IoU >= the threshold (greedy, best IoU first);
    ``agreement``: ``matched / max(n_a, n_b)`` (1.0 when both are empty); ``mean_iou`` over matched pairs.
    """

    n_a: int
    n_b: int
    matched: int
    mean_iou: float

    @property
    def agreement(self) -> float:
        top = max(self.n_a, self.n_b)
        return 1.0 if top == 0 else self.matched / top

    def __add__(self, other: Agreement) -> Agreement:
        m = self.matched + other.matched
        iou = (self.mean_iou * self.matched + other.mean_iou * other.matched) / m if m else 0.0
        return Agreement(self.n_a + other.n_a, self.n_b + other.n_b, m, iou)


EMPTY = Agreement(0, 0, 0, 0.0)


def match_detections(boxes_a: np.ndarray, classes_a: np.ndarray, boxes_b: np.ndarray, classes_b: np.ndarray,
                     iou_threshold: float = 0.5) -> Agreement:
    """Greedy one-to-one matching of xyxy boxes ``[N, 4]`` / ``[M, 4]`` with equal class ids."""
    n, m = len(boxes_a), len(boxes_b)
    if n == 0 or m == 0:
        return Agreement(n, m, 0, 0.0)
    iou = np.asarray(box_iou(np.asarray(boxes_a, np.float32), np.asarray(boxes_b, np.float32)), dtype=np.float64)
    iou = np.nan_to_num(iou, nan=0.0)
    iou[np.asarray(classes_a)[:, None] != np.asarray(classes_b)[None, :]] = -1.0  # below any threshold, 0 included
    matched, total = 0, 0.0
    order = np.argsort(-iou, axis=None, kind="stable")
    used_a, used_b = np.zeros(n, bool), np.zeros(m, bool)
    for flat in order:
        i, j = divmod(int(flat), m)
        value = iou[i, j]
        if value < iou_threshold:
            break
        if used_a[i] or used_b[j]:
            continue
        used_a[i] = used_b[j] = True
        matched += 1
        total += value
    return Agreement(n, m, matched, total / matched if matched else 0.0)
