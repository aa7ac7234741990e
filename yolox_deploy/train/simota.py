"""SimOTA label assignment (YOLOX paper, section 2.2; the authors' current ``get_geometry_constraint`` +
``simota_matching``), as one pure function.

For one image:

1. **Candidates.** An anchor (grid cell) is a candidate for a ground truth when its cell centre
   ``((i + 0.5) * stride, (j + 0.5) * stride)`` lies strictly within ``1.5 * stride`` of the GT centre in x
   and in y (a square "centre region" that scales with the level). Anchors in no GT's region are not
   candidates at all.
2. **Cost** of each (GT, candidate) pair::

       cost = sum_c BCE(sqrt(sigmoid(cls_c) * sigmoid(obj)), onehot(label)_c)
              + 3 * (-log(IoU + 1e-8))
              + 1e6 * [candidate outside this GT's centre region]

   (BCE with logs clamped at -100, as ``torch.nn.functional.binary_cross_entropy``.)
3. **Dynamic k.** Each GT takes its ``k = max(1, int(sum of its top-min(10, #candidates) IoUs))`` lowest-cost
   candidates (ties broken towards the lower anchor index).
4. **Conflicts.** An anchor taken by several GTs goes to the GT with the lowest cost for it.

One deliberate departure from the authors' code: a GT whose centre region contains no anchor at all (its
centre lies off the grid, which the data pipeline never produces since boxes are clipped to the image) is
assigned no anchor. The authors' code either raises (``selected index k out of range``, when no GT has a
candidate) or hands it the lowest-cost candidate of another GT at a cost of 1e6 and a target box the anchor
cannot reach. A GT with at least one anchor in its region follows the authors exactly, including taking
out-of-region candidates (cost >= 1e6) when its k exceeds its in-region count.
"""

from __future__ import annotations

import torch

CENTER_RADIUS = 1.5
IOU_COST_WEIGHT = 3.0
OUTSIDE_REGION_COST = 1.0e6
TOPK_IOU = 10


def pairwise_iou_cxcywh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``[N, M]`` of centre/size boxes ``a [N, 4]`` and ``b [M, 4]`` (the authors' ``bboxes_iou``).

    Boxes that do not overlap give exactly 0; the union is floored at 1e-12 so two empty boxes give 0, not NaN.
    """
    a_tl, a_br = a[:, None, :2] - a[:, None, 2:] / 2, a[:, None, :2] + a[:, None, 2:] / 2
    b_tl, b_br = b[None, :, :2] - b[None, :, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2
    tl = torch.maximum(a_tl, b_tl)
    br = torch.minimum(a_br, b_br)
    overlap = (tl < br).all(dim=-1)
    inter = (br - tl).prod(dim=-1) * overlap
    area_a = a[:, 2:].prod(dim=-1)
    area_b = b[:, 2:].prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12)


def centre_region_mask(anchor_centers: torch.Tensor, strides: torch.Tensor, gt_centers: torch.Tensor,
                       radius: float = CENTER_RADIUS) -> torch.Tensor:
    """``[G, A]`` bool: anchor centre strictly inside the ``radius * stride`` square around each GT centre."""
    r = radius * strides[None, :]
    x, y = anchor_centers[None, :, 0], anchor_centers[None, :, 1]
    gx, gy = gt_centers[:, 0:1], gt_centers[:, 1:2]
    # the authors' form (distance to each side > 0), so boundary cases round the same way
    deltas = torch.stack((x - (gx - r), y - (gy - r), (gx + r) - x, (gy + r) - y), dim=-1)
    return deltas.min(dim=-1).values > 0.0


def _class_cost(cls_logits: torch.Tensor, obj_logits: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
    """``[G, N]``: BCE of ``sqrt(sigmoid(cls) * sigmoid(obj))`` against each GT's one-hot label, summed over classes.

    Computed as (sum over all classes of -log(1 - p)) with the label class's term swapped for -log(p), which
    equals the one-hot BCE sum without materialising a ``[G, N, C]`` tensor.
    """
    p = (cls_logits.sigmoid() * obj_logits.sigmoid()[:, None]).sqrt()  # [N, C]
    log_p = torch.log(p).clamp(min=-100.0)
    log_1mp = torch.log1p(-p).clamp(min=-100.0)
    negative_sum = -log_1mp.sum(dim=1)  # [N]
    y = gt_labels.long()
    return negative_sum[None, :] + log_1mp[:, y].T - log_p[:, y].T


@torch.no_grad()
def simota_assign(pred_boxes: torch.Tensor, cls_logits: torch.Tensor, obj_logits: torch.Tensor,
                  anchor_centers: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor,
                  gt_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign anchors of one image to its ground truths with SimOTA.

    Args:
        pred_boxes: ``[A, 4]`` predicted boxes, ``cx, cy, w, h`` in input pixels (decoded, not clamped).
        cls_logits: ``[A, C]`` class logits (before sigmoid).
        obj_logits: ``[A]`` or ``[A, 1]`` objectness logits.
        anchor_centers: ``[A, 2]`` cell centres ``((i + 0.5) * stride, (j + 0.5) * stride)`` in pixels.
        strides: ``[A]`` (or ``[A, 1]``) stride of each anchor's level.
        gt_boxes: ``[G, 4]`` ground truths, ``cx, cy, w, h`` in input pixels.
        gt_labels: ``[G]`` class indices in ``[0, C)``.

    Returns:
        ``fg_mask [A]`` bool (anchors assigned to some GT), ``matched_gt [F]`` long (index into ``gt_boxes``
        of each foreground anchor, in ascending anchor order) and ``matched_iou [F]`` (IoU of that anchor's
        predicted box with its GT), with ``F = fg_mask.sum()``. Computed in float32 without gradients.
    """
    num_anchors = pred_boxes.shape[0]
    num_gt = gt_boxes.shape[0]
    device = pred_boxes.device
    fg_mask = torch.zeros(num_anchors, dtype=torch.bool, device=device)
    no_match = (fg_mask, torch.zeros(0, dtype=torch.long, device=device),
                torch.zeros(0, dtype=torch.float32, device=device))
    if num_gt == 0 or num_anchors == 0:
        return no_match
    if gt_labels.shape[0] != num_gt:
        raise ValueError(f"{num_gt} GT boxes but {gt_labels.shape[0]} labels")
    num_classes = cls_logits.shape[1]
    if gt_labels.numel() and (int(gt_labels.min()) < 0 or int(gt_labels.max()) >= num_classes):
        raise ValueError(f"GT labels must lie in [0, {num_classes}), got {gt_labels.tolist()}")

    strides = strides.reshape(-1).float()
    gt = gt_boxes.float()
    in_region = centre_region_mask(anchor_centers.float(), strides, gt[:, :2])  # [G, A]
    candidates = in_region.any(dim=0).nonzero().squeeze(1)  # [N], ascending
    num_cand = candidates.numel()
    if num_cand == 0:
        return no_match
    geometry = in_region[:, candidates]  # [G, N]

    ious = pairwise_iou_cxcywh(gt, pred_boxes[candidates].float())  # [G, N]
    cost = (_class_cost(cls_logits[candidates].float(), obj_logits.reshape(-1)[candidates].float(), gt_labels)
            + IOU_COST_WEIGHT * -torch.log(ious + 1e-8)
            + OUTSIDE_REGION_COST * (~geometry).float())

    top = torch.topk(ious, min(TOPK_IOU, num_cand), dim=1).values
    dynamic_k = top.sum(dim=1).int().clamp(min=1)
    dynamic_k = torch.where(geometry.any(dim=1), dynamic_k, torch.zeros_like(dynamic_k))

    order = torch.sort(cost, dim=1, stable=True).indices  # [G, N], cheapest first
    chosen_in_order = torch.arange(num_cand, device=device)[None, :] < dynamic_k[:, None]
    matching = torch.zeros_like(geometry).scatter_(1, order, chosen_in_order)  # [G, N]

    contested = matching.sum(dim=0) > 1
    if contested.any():
        cols = contested.nonzero().squeeze(1)
        winner = cost[:, cols].argmin(dim=0)
        matching[:, cols] = False
        matching[winner, cols] = True

    assigned = matching.any(dim=0)  # [N]
    cols = assigned.nonzero().squeeze(1)
    matched_gt = matching[:, cols].to(torch.uint8).argmax(dim=0)
    matched_iou = ious[matched_gt, cols]
    fg_mask[candidates[cols]] = True
    return fg_mask, matched_gt.long(), matched_iou


def anchor_points(grid: torch.Tensor, strides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell indices ``[A, 2]`` and strides ``[A, 1]`` (from :func:`~yolox_deploy.ops.decode.make_grid`) ->
    cell centres ``[A, 2]`` in pixels and strides ``[A]``."""
    s = strides.reshape(-1)
    return (grid + 0.5) * s[:, None], s


__all__ = ["CENTER_RADIUS", "anchor_points", "centre_region_mask", "pairwise_iou_cxcywh", "simota_assign"]

