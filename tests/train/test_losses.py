"""The YOLOX loss: each term against its definition, normalisation, padding, empty images, unclamped decode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from yolox_deploy.ops.decode import make_grid
from yolox_deploy.train.losses import YOLOXLoss, decode_boxes, iou_loss, l1_targets, split_targets
from yolox_deploy.train.simota import anchor_points, simota_assign

HW = (64, 64)  # levels 8x8, 4x4, 2x2 -> 84 anchors


def test_iou_loss_values():
    a = torch.tensor([[10, 10, 10, 10.], [10, 10, 10, 10.], [10, 10, 10, 10.]])
    b = torch.tensor([[10, 10, 10, 10.], [50, 50, 10, 10.], [10, 12.5, 10, 5.]])  # same, disjoint, half inside
    assert iou_loss(a, b).tolist() == pytest.approx([0.0, 1.0, 1 - 0.5 ** 2])


def test_l1_targets_by_hand():
    gt = torch.tensor([[20.0, 36.0, 16.0, 4.0]])
    got = l1_targets(gt, torch.tensor([[2.0, 4.0]]), torch.tensor([8.0]))
    assert got[0].tolist() == pytest.approx([20 / 8 - 2, 36 / 8 - 4, math.log(2.0), math.log(0.5)], abs=1e-6)


def test_training_decode_is_not_clamped_and_keeps_its_gradient():
    raw = torch.zeros(1, 1, 4)
    raw[0, 0, 2] = 8.0  # far beyond the inference clamp of 6.5
    raw.requires_grad_(True)
    boxes = decode_boxes(raw, torch.zeros(1, 2), torch.tensor([8.0]))
    assert boxes[0, 0, 2].item() == pytest.approx(math.exp(8.0) * 8, rel=1e-6)
    boxes[0, 0, 2].backward()
    assert raw.grad[0, 0, 2].item() > 0


def _scene(num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(2, 84, 5 + num_classes, generator=g) * 0.5
    targets = torch.full((2, 3, 5), 0.0)
    targets[..., 0] = -1
    targets[0, 0] = torch.tensor([1, 20, 24, 16, 20.])
    targets[0, 1] = torch.tensor([2, 44, 40, 30, 24.])
    targets[1, 0] = torch.tensor([0, 32, 32, 40, 40.])
    return raw, targets


def _by_definition(raw, targets, num_classes, use_l1):
    grid, stride = make_grid([(8, 8), (4, 4), (2, 2)], (8, 16, 32))
    centres, strides = anchor_points(grid, stride)
    boxes = torch.cat(((raw[..., :2] + grid) * strides[:, None], torch.exp(raw[..., 2:4]) * strides[:, None]), -1)
    iou_sum = obj_sum = cls_sum = l1_sum = 0.0
    num_fg = 0
    for b, (gt, labels) in enumerate(split_targets(targets)):
        fg, matched, miou = simota_assign(boxes[b], raw[b, :, 5:], raw[b, :, 4], centres, strides, gt, labels)
        num_fg += int(fg.sum())
        iou_sum += float(iou_loss(boxes[b][fg], gt[matched]).sum())
        obj_sum += float(F.binary_cross_entropy_with_logits(raw[b, :, 4], fg.float(), reduction="sum"))
        tgt = F.one_hot(labels[matched], num_classes).float() * miou[:, None]
        cls_sum += float(F.binary_cross_entropy_with_logits(raw[b, fg, 5:], tgt, reduction="sum"))
        if use_l1:
            l1_sum += float((raw[b, fg, :4] - l1_targets(gt[matched], grid[fg], strides[fg])).abs().sum())
    n = max(num_fg, 1)
    return 5 * iou_sum / n, obj_sum / n, cls_sum / n, l1_sum / n, num_fg


@pytest.mark.parametrize("use_l1", [False, True])
def test_loss_terms_match_their_definition(use_l1):
    raw, targets = _scene()
    out = YOLOXLoss(3, use_l1=use_l1)(raw, targets, HW)
    iou, obj, cls, l1, num_fg = _by_definition(raw, targets, 3, use_l1)
    assert out.num_fg == num_fg > 0 and out.num_gt == 3
    assert float(out.iou) == pytest.approx(iou, rel=1e-5)
    assert float(out.obj) == pytest.approx(obj, rel=1e-5)
    assert float(out.cls) == pytest.approx(cls, rel=1e-5)
    assert float(out.l1) == pytest.approx(l1, rel=1e-5, abs=1e-7)
    assert float(out.total) == pytest.approx(iou + obj + cls + l1, rel=1e-5)


def test_padding_rows_do_not_count():
    raw, targets = _scene()
    padded = torch.cat((targets, torch.tensor([[-1, 0, 0, 0, 0.]]).expand(2, 4, 5)), dim=1)
    a = YOLOXLoss(3)(raw, targets, HW)
    b = YOLOXLoss(3)(raw, padded, HW)
    assert float(a.total) == float(b.total) and a.num_gt == b.num_gt == 3


def test_images_without_boxes_train_objectness_only():
    raw, _ = _scene()
    raw.requires_grad_(True)
    empty = torch.full((2, 0, 5), -1.0)
    out = YOLOXLoss(3)(raw, empty, HW)
    assert out.num_fg == 0 and float(out.iou) == 0 and float(out.cls) == 0
    # normalised by max(num_fg, 1) = 1: the objectness BCE towards 0 summed over all anchors
    assert float(out.total.detach()) == pytest.approx(float(F.binary_cross_entropy_with_logits(
        raw[..., 4].detach(), torch.zeros(2, 84), reduction="sum")), rel=1e-6)
    out.total.backward()
    assert torch.isfinite(raw.grad).all()


def test_gradients_are_finite_and_reach_every_head_output():
    raw, targets = _scene()
    raw.requires_grad_(True)
    YOLOXLoss(3, use_l1=True)(raw, targets, HW).total.backward()
    assert torch.isfinite(raw.grad).all()
    assert (raw.grad[..., :4].abs().sum() > 0) and (raw.grad[..., 4].abs().sum() > 0) and (raw.grad[..., 5:].abs().sum() > 0)


def test_half_precision_outputs_are_scored_in_float32():
    raw, targets = _scene()
    a = YOLOXLoss(3)(raw.half().float(), targets, HW)
    b = YOLOXLoss(3)(raw.half(), targets, HW)
    assert b.total.dtype == torch.float32
    assert float(a.total) == pytest.approx(float(b.total), rel=1e-6)


def test_shape_errors_are_explicit():
    raw, targets = _scene()
    with pytest.raises(ValueError, match="classes"):
        YOLOXLoss(4)(raw, targets, HW)
    with pytest.raises(ValueError, match="anchors"):
        YOLOXLoss(3)(raw, targets, (96, 96))
