"""Box conversions and IoU. Boxes are float ``[N, 4]`` (numpy or torch, any device).

``xyxy``: (x1, y1, x2, y2) corners, x2 >= x1. ``cxcywh``: centre and size. ``xywh``: COCO's top-left + size.
"""

from __future__ import annotations

import numpy as np
import torch

from ._array import Array, like, to_tensor


def cxcywh_to_xyxy(boxes: Array) -> Array:
    """``[..., 4]`` centre/size -> corners."""
    b = to_tensor(boxes)
    half = b[..., 2:4] / 2
    return like(torch.cat((b[..., 0:2] - half, b[..., 0:2] + half), dim=-1), boxes)


def xyxy_to_cxcywh(boxes: Array) -> Array:
    """``[..., 4]`` corners -> centre/size."""
    b = to_tensor(boxes)
    return like(torch.cat(((b[..., 0:2] + b[..., 2:4]) / 2, b[..., 2:4] - b[..., 0:2]), dim=-1), boxes)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` xyxy -> ``[N]`` areas (negative extents count as zero)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise IoU ``[N, M]`` of xyxy boxes ``[N, 4]`` and ``[M, 4]``.

    Same formula as torchvision: ``inter / (area1 + area2 - inter)``; two empty boxes give NaN (0/0), which
    never exceeds a threshold, so degenerate boxes never suppress or get suppressed.
    """
    a, b = to_tensor(boxes1), to_tensor(boxes2)
    area1, area2 = box_area(a), box_area(b)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return like(inter / (area1[:, None] + area2[None, :] - inter), boxes1)


def clip_boxes(boxes: Array, height: int, width: int) -> Array:
    """Clamp xyxy boxes ``[N, 4]`` to the image ``[0, width] x [0, height]`` (a new array)."""
    if isinstance(boxes, np.ndarray):  # numpy natively, two ufunc calls: this runs once per image on the CPU path
        out = np.maximum(boxes, 0)
        return np.minimum(out, np.array([width, height, width, height], dtype=out.dtype), out=out)
    b = boxes
    x = b[..., 0::2].clamp(0, width)
    y = b[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)
