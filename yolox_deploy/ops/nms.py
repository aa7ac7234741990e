"""Non-maximum suppression in torch (any device), with torchvision's semantics and no dependency on it.

Semantics (as ``torchvision.ops.nms``): boxes are visited by decreasing score; a box is dropped when its IoU
with an already kept box is strictly greater than ``iou_threshold``. The result holds the indices of the kept
boxes sorted by decreasing score; equal scores keep their input order (stable sort). ``batched_nms`` only
lets boxes with the same ``idxs`` value suppress each other. When torchvision is importable its kernels are
used for plain float inputs; results are identical up to the order of exactly tied scores.
"""

from __future__ import annotations

import importlib.util

import torch

from ._array import Array, like, serial, to_tensor
from .boxes import box_iou

_HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# Boxes are compared block by block so memory stays O(N * BLOCK) for any N.
BLOCK = 1024
_MAX_SWEEPS = 16


def _suppress_within(iou_gt: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Greedy NMS inside one score-sorted block.

    ``iou_gt[i, j]`` says box i would suppress box j (only i < j counts); ``alive`` marks boxes not yet
    suppressed by earlier blocks. The greedy answer is the unique fixed point of
    ``keep[j] = alive[j] and not any(keep[i] and iou_gt[i, j] for i < j)``; sweeping that equation
    converges in as many sweeps as the longest suppression chain, then an exact sequential pass finishes.
    """
    m = torch.triu(iou_gt, diagonal=1)
    m &= alive[:, None]
    keep = alive.clone()
    for _ in range(_MAX_SWEEPS):
        new = alive & ~(m & keep[:, None]).any(dim=0)
        if torch.equal(new, keep):
            return keep
        keep = new
    keep = alive.clone()  # a long chain: finish with the sequential definition
    rows = m.cpu()
    keep_cpu = keep.cpu()
    for i in range(rows.shape[0]):
        if keep_cpu[i]:
            keep_cpu &= ~rows[i]
    return keep_cpu.to(keep.device)


def _greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None,
                iou_threshold: float) -> torch.Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].float()
    g = idxs[order] if idxs is not None else None
    n = b.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=b.device)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        blk = b[start:stop]
        alive = keep[start:stop]
        if start:
            prev = keep[:start].nonzero().squeeze(1)
            if prev.numel():
                hit = box_iou(b[prev], blk) > iou_threshold
                if g is not None:
                    hit &= g[prev][:, None] == g[start:stop][None, :]
                alive = alive & ~hit.any(dim=0)
        within = box_iou(blk, blk) > iou_threshold
        if g is not None:
            within &= g[start:stop][:, None] == g[start:stop][None, :]
        keep[start:stop] = _suppress_within(within, alive)
    return order[keep]


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
        return like(_greedy_nms(b, s, g, iou_threshold), boxes)
