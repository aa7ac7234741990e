"""Non-maximum suppression in torch (any device), with torchvision's semantics and no dependency on it.

Semantics (as ``torchvision.ops.nms``): boxes are visited by decreasing score; a box is dropped when its IoU
with an already kept box is strictly greater than ``iou_threshold``. The result holds the indices of the kept
boxes sorted by decreasing score; equal scores keep their input order (stable sort). ``batched_nms`` only
lets boxes with the same ``idxs`` value suppress each other. When torchvision is importable its kernels are
used for plain float inputs; results are identical up to the order of exactly tied scores.

Algorithm (no Python loop over boxes): sort by group, then by decreasing score; build the pairs (i, j), i
before j, *within* each group only (class-aware NMS never compares two classes, so 8400 boxes over 80 classes
make ~0.4 M pairs, not 35 M); keep the pairs with IoU above the threshold as suppression edges; the greedy
result is the unique fixed point of ``keep[j] = not any(keep[i] for edges i -> j)``, reached by sweeping that
equation (as many sweeps as the longest suppression chain; a sequential pass finishes pathological chains).

:func:`batched_nms_numpy` is what the CPU pipeline calls: the same greedy NMS, run by OpenCV's compiled
``cv2.dnn.NMSBoxes`` (one call for all groups, each group moved to its own stretch of the plane so groups
never overlap; for many boxes, one call per group). Right after a runtime's inference the caches are cold
and every Python-level array operation costs several microseconds, so one compiled call beats the ~20
numpy operations of :func:`dense_nms_numpy` (the numpy form, kept for degenerate boxes, where OpenCV counts
two empty boxes as overlapping and torchvision does not).
"""

from __future__ import annotations

import importlib.util
import math

import cv2
import numpy as np
import torch

from ._array import Array, like, serial, to_tensor
from .boxes import box_area, box_iou

_HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# Pairs are generated and tested in chunks of about this many, so memory stays bounded for any input.
PAIR_CHUNK = 1 << 21
DENSE_MAX = 256  # up to this many boxes, all pairs at once
# Up to this many boxes, one OpenCV call for all groups; beyond, one call per group. One call compares every
# box with every kept box of any group; a call per group costs tens of microseconds of Python. On YOLOX-Nano
# 640 heads at evaluation thresholds (0.01 / 0.65) 512 beats 2048 on the images with >800 candidates.
OPENCV_ONE_CALL_MAX = 512
_MAX_SWEEPS = 24


def _pair_iou(boxes: torch.Tensor, area: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """IoU of the box pairs ``(i[k], j[k])`` (torchvision's formula; 0/0 gives NaN, which never suppresses)."""
    a, b = boxes[i], boxes[j]
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area[i] + area[j] - inter)


def dense_nms_numpy(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray | None,
                    iou_threshold: float) -> np.ndarray:
    """:func:`batched_nms` (or :func:`nms` when ``groups`` is ``None``) in numpy with one ``[N, N]`` IoU matrix.

    Meant for up to a few hundred boxes (``DENSE_MAX``); same result as the torch path.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[order].T
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    iw = np.maximum(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0)
    ih = np.maximum(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0)
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> NaN, which never suppresses
        hit = inter / (area[:, None] + area - inter) > iou_threshold
    if groups is not None:
        g = groups[order]
        hit &= g[:, None] == g
    hit = np.triu(hit, 1)
    # the same fixed point as _resolve: keep[j] = no kept i < j suppresses j
    keep = np.ones(len(order), dtype=bool)
    for _ in range(_MAX_SWEEPS):
        new = ~hit[keep].any(axis=0)
        if np.array_equal(new, keep):
            return order[keep].astype(np.int64)
        keep = new
    keep[:] = True
    for i in np.flatnonzero(hit.any(axis=1)):  # a long chain: the sequential definition
        if keep[i]:
            keep[hit[i]] = False
    return order[keep].astype(np.int64)


def _opencv_nms(xywh: np.ndarray, scores: np.ndarray, groups: np.ndarray | None, iou_threshold: float) -> np.ndarray:
    """Greedy NMS by ``cv2.dnn.NMSBoxes`` on float64 ``(x1, y1, w, h)`` boxes with ``w, h > 0`` and scores
    ``> 0``; kept indices by score. With ``groups``, ``xywh`` is moved in place: each group to its own
    stretch of the plane (from 0 up, group ``g`` at ``g * span``, ``span`` beyond any box's extent), so boxes
    of two groups never overlap."""
    if groups is not None:
        low = xywh[:, :2].min()
        span = 2.0 * xywh.max() - low + 1.0  # x + w <= 2 * max(x, y, w, h) since w, h > 0
        xywh[:, :2] += (groups * span - low)[:, None]
    return np.asarray(cv2.dnn.NMSBoxes(xywh, scores, 0.0, iou_threshold), dtype=np.int64).reshape(-1)


def batched_nms_numpy(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray | None,
                      iou_threshold: float) -> np.ndarray:
    """:func:`batched_nms` (or :func:`nms` when ``groups`` is ``None``) for numpy arrays, through OpenCV.

    ``boxes`` ``[N, 4]`` xyxy, ``scores`` ``[N]`` float32, ``groups`` ``[N]`` int. Kept indices (int64),
    by decreasing score, ties in input order. OpenCV computes each IoU in float64 from the float32 boxes
    and compares it, rounded to float32, with the threshold: the same decisions as the float32 formula
    except for IoUs within a rounding of the threshold. Boxes with an empty side, a NaN or an infinite
    coordinate (which would move every group's stretch of the plane to infinity), or scores <= 0 (which
    OpenCV drops), go through :func:`dense_nms_numpy` (or the torch path past ``DENSE_MAX``).
    """
    n = boxes.shape[0]
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    xywh = boxes.astype(np.float64)
    xywh[:, 2:] -= xywh[:, :2]
    s = np.ascontiguousarray(scores, dtype=np.float32)
    # NaN fails the first two tests; one sum is finite only when every coordinate is (float64 cannot overflow here)
    if not (xywh[:, 2:].min() > 0 and s.min() > 0 and math.isfinite(xywh.sum())):
        if n <= DENSE_MAX:
            return dense_nms_numpy(boxes, scores, groups, iou_threshold)
        return batched_nms(boxes, scores, groups if groups is not None else np.zeros(n, np.int64), iou_threshold)
    if n <= OPENCV_ONE_CALL_MAX or groups is None:
        return _opencv_nms(xywh, s, groups, iou_threshold)
    # many boxes: OpenCV compares each box with every kept one, so split by group first
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    kept = [part[_opencv_nms(xywh[part], s[part], None, iou_threshold)] for part in np.split(order, bounds)]
    keep = np.sort(np.concatenate(kept))  # by input index, so the stable sort below breaks ties by it
    return keep[np.argsort(-s[keep], kind="stable")]


def _suppression_edges(boxes: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges ``(src, dst)``, src < dst, between boxes of one group (sorted by group, then score) with IoU > thr."""
    n = boxes.shape[0]
    dev = boxes.device
    if n <= DENSE_MAX:  # few boxes: one dense matrix is fewer ops than generating pairs
        hit = box_iou(boxes, boxes) > iou_threshold
        hit &= groups[:, None] == groups[None, :]
        return torch.triu(hit, diagonal=1).nonzero(as_tuple=True)
    _, counts = torch.unique_consecutive(groups, return_counts=True)
    ends = torch.cumsum(counts, 0).repeat_interleave(counts)          # [n] end of each box's group
    later = ends - torch.arange(1, n + 1, device=dev)                  # [n] boxes after it in its group
    area = box_area(boxes)
    src_parts, dst_parts = [], []
    cum = torch.cumsum(later, 0)
    total = int(cum[-1])
    start = 0
    while start < n and total:
        done = int(cum[start - 1]) if start else 0
        stop = int(torch.searchsorted(cum, done + PAIR_CHUNK, right=True))
        stop = min(max(stop, start + 1), n)
        rows = torch.arange(start, stop, device=dev)
        per_row = later[start:stop]
        i = rows.repeat_interleave(per_row)
        first = torch.cumsum(per_row, 0) - per_row                     # offset of each row's first pair
        j = i + 1 + torch.arange(i.shape[0], device=dev) - first.repeat_interleave(per_row)
        hit = _pair_iou(boxes, area, i, j) > iou_threshold
        src_parts.append(i[hit])
        dst_parts.append(j[hit])
        start = stop
    if not src_parts:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty
    return torch.cat(src_parts), torch.cat(dst_parts)


def _resolve(n: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The greedy keep mask given suppression edges ``src -> dst`` (src visited before dst)."""
    keep = torch.ones(n, dtype=torch.bool, device=src.device)
    if src.numel() == 0:
        return keep
    for _ in range(_MAX_SWEEPS):
        suppressed = torch.zeros(n, dtype=torch.bool, device=src.device)
        suppressed[dst[keep[src]]] = True
        new = ~suppressed
        if torch.equal(new, keep):
            return keep
        keep = new
    # a long chain: finish with the sequential definition (edges are sorted by src)
    keep_cpu = torch.ones(n, dtype=torch.bool)
    s, d = src.cpu(), dst.cpu()
    order = torch.argsort(s, stable=True)
    s, d = s[order], d[order]
    bounds = torch.searchsorted(s, torch.arange(n + 1)).tolist()
    for i in range(n):
        if keep_cpu[i] and bounds[i] != bounds[i + 1]:
            keep_cpu[d[bounds[i]:bounds[i + 1]]] = False
    return keep_cpu.to(src.device)


def _greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None,
                iou_threshold: float) -> torch.Tensor:
    by_score = torch.sort(scores, descending=True, stable=True).indices
    if idxs is None:
        order = by_score
        groups = torch.zeros_like(order)
    else:
        by_group = torch.sort(idxs[by_score], stable=True).indices
        order = by_score[by_group]
        groups = idxs[order]
    src, dst = _suppression_edges(boxes[order].float(), groups, iou_threshold)
    kept = order[_resolve(order.shape[0], src, dst)]
    if idxs is None:  # one group: already by decreasing score, ties by input index
        return kept
    # all groups together, by decreasing score; ties by input index
    by_index = kept.sort().values
    return by_index[torch.sort(scores[by_index], descending=True, stable=True).indices]


def nms(boxes: Array, scores: Array, iou_threshold: float) -> Array:
    """Indices (int64 ``[K]``) of the boxes kept by greedy NMS, by decreasing score.

    ``boxes``: ``[N, 4]`` xyxy; ``scores``: ``[N]``. Numpy in, numpy out.
    """
    b, s = to_tensor(boxes), to_tensor(scores)
    if b.shape[0] == 0:
        return like(torch.zeros(0, dtype=torch.int64, device=b.device), boxes)
    if _HAS_TORCHVISION and b.dtype == s.dtype and b.dtype in (torch.float32, torch.float64):
        import torchvision

        return like(torchvision.ops.nms(b, s, float(iou_threshold)), boxes)
    with serial(b):
        return like(_greedy_nms(b, s, None, iou_threshold), boxes)


def batched_nms(boxes: Array, scores: Array, idxs: Array, iou_threshold: float) -> Array:
    """NMS within each group of equal ``idxs`` (class ids, or image * classes + class).

    ``boxes``: ``[N, 4]`` xyxy; ``scores``: ``[N]``; ``idxs``: ``[N]`` int. Returns kept indices (int64)
    sorted by decreasing score. Exact: no coordinate offsets, so float precision never depends on ``idxs``.
    """
    b, s, g = to_tensor(boxes), to_tensor(scores), to_tensor(idxs)
    if b.shape[0] == 0:
        return like(torch.zeros(0, dtype=torch.int64, device=b.device), boxes)
    if _HAS_TORCHVISION and b.dtype == s.dtype and b.dtype in (torch.float32, torch.float64):
        import torchvision

        return like(torchvision.ops.batched_nms(b, s, g, float(iou_threshold)), boxes)
    with serial(b):
        return like(_greedy_nms(b, s, g.long(), iou_threshold), boxes)
