"""The YOLOX training loss: SimOTA-assigned IoU, objectness, class and (late in training) L1 terms.

For a batch, with ``F`` the total number of foreground anchors over all images (at least 1)::

    loss = (5 * sum_fg (1 - IoU^2)                     box regression ("iou" loss of the authors)
            + sum_all BCE(obj, fg)                      objectness, every anchor
            + sum_fg BCE(cls, onehot(label) * IoU)      IoU-aware class targets
            + sum_fg |raw offsets - L1 target|)  / F    only while ``use_l1`` (the no-augmentation epochs)

Decoding for training. Inference decoding (:mod:`yolox_deploy.ops.decode`) clamps the size logits at 6.5 so
FP16 engines never produce ``inf`` boxes. Training must not use that clamp: ``clamp`` has zero gradient
above its bound, so a prediction that overshoots (likely early in training from scratch) would get no
gradient from the IoU loss and stay stuck. Training therefore decodes as the authors do,
``w = exp(tw) * stride`` unclamped, always in float32 (also under AMP): float32 ``exp`` overflows only for
``tw > 88``, far beyond any real box (``log(832 / 8) = 4.6``), and a non-finite loss is caught by the
trainer's guard with a clear error instead of silently poisoning the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops.decode import cached_grid
from ..utils.sizes import STRIDES, level_shapes
from .simota import anchor_points, simota_assign

REG_WEIGHT = 5.0


@dataclass
class LossOutput:
    """The loss of one batch. ``total`` carries gradients; the components are detached, already divided by
    the foreground count, and ``iou`` already includes its weight of 5 (as the authors log it)."""

    total: torch.Tensor
    iou: torch.Tensor
    obj: torch.Tensor
    cls: torch.Tensor
    l1: torch.Tensor
    num_fg: int
    num_gt: int

    def as_dict(self) -> dict[str, float]:
        return {"total_loss": float(self.total.detach()), "iou_loss": float(self.iou), "obj_loss": float(self.obj),
                "cls_loss": float(self.cls), "l1_loss": float(self.l1),
                "num_fg": float(self.num_fg), "num_gt": float(self.num_gt)}


def iou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[N]`` loss ``1 - IoU^2`` of matched ``cx, cy, w, h`` boxes ``pred [N, 4]`` and ``target [N, 4]``."""
    tl = torch.maximum(pred[:, :2] - pred[:, 2:] / 2, target[:, :2] - target[:, 2:] / 2)
    br = torch.minimum(pred[:, :2] + pred[:, 2:] / 2, target[:, :2] + target[:, 2:] / 2)
    overlap = (tl < br).all(dim=1).to(pred.dtype)
    inter = (br - tl).prod(dim=1) * overlap
    union = pred[:, 2:].prod(dim=1) + target[:, 2:].prod(dim=1) - inter
    iou = inter / (union + 1e-16)
    return 1 - iou ** 2


def decode_boxes(raw: torch.Tensor, grid: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Raw ``[..., A, >=4]`` head output -> ``cx, cy, w, h`` pixels ``[..., A, 4]`` in float32, size not clamped."""
    r = raw[..., :4].float()
    s = strides.reshape(-1, 1).float()
    return torch.cat(((r[..., :2] + grid) * s, torch.exp(r[..., 2:4]) * s), dim=-1)


def l1_targets(gt: torch.Tensor, grid: torch.Tensor, strides: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Raw-offset targets ``[F, 4]`` of matched GTs ``gt [F, 4]`` (cxcywh px) at cells ``grid [F, 2]``, ``strides [F]``:
    ``cx / s - gx, cy / s - gy, log(w / s + eps), log(h / s + eps)``."""
    s = strides.reshape(-1, 1)
    return torch.cat((gt[:, :2] / s - grid, torch.log(gt[:, 2:] / s + eps)), dim=1)


def split_targets(targets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded targets ``[B, M, 5]`` (``class, cx, cy, w, h``; class ``< 0`` marks padding) -> per image
    ``(boxes [G, 4], labels [G])``."""
    out = []
    for t in targets:
        keep = t[:, 0] >= 0
        out.append((t[keep, 1:5].float(), t[keep, 0].long()))
    return out


class YOLOXLoss:
    """The YOLOX loss for a head with ``num_classes`` classes and levels of ``strides``.

    Call with the training-mode head output ``[B, A, 5 + C]`` (raw logits, levels concatenated row-major),
    padded targets ``[B, M, 5]`` (``class, cx, cy, w, h`` in input pixels, class ``-1`` for padding) and the
    input size ``(H, W)``. ``use_l1`` switches the L1 term on (the authors do so for the last,
    no-augmentation epochs).
    """

    def __init__(self, num_classes: int, strides: tuple[int, ...] = STRIDES, reg_weight: float = REG_WEIGHT,
                 use_l1: bool = False) -> None:
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.reg_weight = reg_weight
        self.use_l1 = use_l1

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor, input_hw: tuple[int, int]) -> LossOutput:
        batch, num_anchors, width = outputs.shape
        if width != 5 + self.num_classes:
            raise ValueError(f"head output has {width - 5} classes, the loss expects {self.num_classes}")
        shapes = level_shapes(input_hw, self.strides)
        grid, stride_col = cached_grid(shapes, self.strides, outputs.device, torch.float32)
        if grid.shape[0] != num_anchors:
            raise ValueError(f"head output has {num_anchors} anchors; an input of {input_hw} gives {grid.shape[0]}")
        centers, strides = anchor_points(grid, stride_col)

        out = outputs.float()
        boxes = decode_boxes(out, grid, strides)  # [B, A, 4]
        obj = out[..., 4]                          # [B, A]
        cls = out[..., 5:]                         # [B, A, C]

        fg_masks, box_targets, cls_targets, l1_tgts = [], [], [], []
        num_gt = 0
        for b, (gt_boxes, gt_labels) in enumerate(split_targets(targets.to(outputs.device))):
            num_gt += gt_boxes.shape[0]
            fg, matched, matched_iou = simota_assign(boxes[b].detach(), cls[b].detach(), obj[b].detach(),
                                                     centers, strides, gt_boxes, gt_labels)
            fg_masks.append(fg)
            gt = gt_boxes[matched]
            box_targets.append(gt)
            cls_targets.append(F.one_hot(gt_labels[matched], self.num_classes).float() * matched_iou[:, None])
            if self.use_l1:
                l1_tgts.append(l1_targets(gt, grid[fg], strides[fg]))

        fg_mask = torch.stack(fg_masks)  # [B, A]
        num_fg = int(fg_mask.sum())
        norm = max(num_fg, 1)
        loss_iou = iou_loss(boxes[fg_mask], torch.cat(box_targets)).sum() / norm
        loss_obj = F.binary_cross_entropy_with_logits(obj, fg_mask.float(), reduction="sum") / norm
        loss_cls = F.binary_cross_entropy_with_logits(cls[fg_mask], torch.cat(cls_targets), reduction="sum") / norm
        if self.use_l1:
            loss_l1 = F.l1_loss(out[..., :4][fg_mask], torch.cat(l1_tgts), reduction="sum") / norm
        else:
            loss_l1 = out.new_zeros(())
        total = self.reg_weight * loss_iou + loss_obj + loss_cls + loss_l1
        return LossOutput(total, (self.reg_weight * loss_iou).detach(), loss_obj.detach(), loss_cls.detach(),
                          loss_l1.detach(), num_fg, num_gt)


def is_finite(x: torch.Tensor) -> bool:
    """True when every element of ``x`` is finite."""
    return bool(torch.isfinite(x).all())


__all__ = ["LossOutput", "REG_WEIGHT", "YOLOXLoss", "decode_boxes", "iou_loss", "is_finite", "l1_targets",
           "split_targets"]
