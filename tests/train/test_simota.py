"""SimOTA on hand-built scenes, with the expected assignments worked out by hand, and against a literal
per-GT reference implementation on random scenes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from yolox_deploy.ops.decode import make_grid
from yolox_deploy.train.simota import anchor_points, pairwise_iou_cxcywh, simota_assign

# One level, stride 8, a 4x4 grid over a 32x32 image: cell centres at 4, 12, 20, 28 px; anchor index is
# row * 4 + col. With every class and objectness logit 0, p = sqrt(0.5 * 0.5) = 0.5 for both classes and the
# class cost is 2 ln 2 = 1.386 for every pair, so cost order is IoU order unless a test sets logits.
C = 2
STRIDE = 8.0


def grid4():
    grid, strides = make_grid([(4, 4)], (8,))
    centres, s = anchor_points(grid, strides)
    return centres, s


def default_preds(centres):
    """1x1 px boxes at each cell centre: IoU <= 1/256 with any 16x16 GT, i.e. negligible."""
    boxes = torch.cat((centres, torch.ones_like(centres)), dim=1)
    return boxes, torch.zeros(len(centres), C), torch.zeros(len(centres))


def assign(boxes, cls, obj, centres, strides, gts, labels):
    return simota_assign(boxes, cls, obj, centres, strides, torch.tensor(gts, dtype=torch.float32),
                         torch.tensor(labels))


def fg_list(fg):
    return fg.nonzero().squeeze(1).tolist()


def test_one_gt_takes_its_dynamic_k_best_anchors():
    centres, strides = grid4()
    boxes, cls, obj = default_preds(centres)
    # GT (16, 16, 16x16). Centre region: |x - 16| < 12 and |y - 16| < 12 -> x, y in {12, 20}: anchors 5, 6, 9, 10
    boxes[5] = torch.tensor([16, 16, 16, 16.])   # IoU 1
    boxes[6] = torch.tensor([16, 16, 16, 8.])    # inside the GT, area 128 -> IoU 0.5
    boxes[9] = torch.tensor([16, 16, 12, 12.])   # inside, area 144 -> IoU 0.5625
    # anchor 10 keeps its 1x1 box at (20, 20): IoU 1/256. Top IoUs sum 2.066 -> k = 2 -> anchors 5 and 9.
    fg, matched, iou = assign(boxes, cls, obj, centres, strides, [[16, 16, 16, 16]], [0])
    assert fg_list(fg) == [5, 9]
    assert matched.tolist() == [0, 0]
    assert iou.tolist() == pytest.approx([1.0, 0.5625], abs=1e-6)
    assert fg.dtype == torch.bool and matched.dtype == torch.long


def test_class_score_can_beat_iou():
    centres, strides = grid4()
    boxes, cls, obj = default_preds(centres)
    boxes[5] = torch.tensor([16, 16, 16, 16.])
    boxes[6] = torch.tensor([16, 16, 16, 8.])
    boxes[9] = torch.tensor([16, 16, 12, 12.])
    # anchor 6 is confident in the right class: sigmoid(4) = 0.98201, so p0 = 0.98201 and
    # p1 = sqrt(sigmoid(-4) * sigmoid(4)) = 0.13290; class cost = -ln 0.98201 - ln(1 - 0.13290) = 0.161.
    cls[6] = torch.tensor([4.0, -4.0])
    obj[6] = 4.0
    # costs: anchor 9 = 1.386 + 3 * -ln 0.5625 = 3.112; anchor 6 = 0.161 + 3 * -ln 0.5 = 2.240 -> 6 wins
    fg, matched, iou = assign(boxes, cls, obj, centres, strides, [[16, 16, 16, 16]], [0])
    assert fg_list(fg) == [5, 6]
    assert iou.tolist() == pytest.approx([1.0, 0.5], abs=1e-6)


def two_gt_scene():
    centres, strides = grid4()
    boxes, cls, obj = default_preds(centres)
    # GT A (12, 12, 16x16) label 0: box 4..20, region x, y in {4, 12, 20} (anchors 0,1,2,4,5,6,8,9,10)
    # GT B (20, 20, 16x16) label 1: box 12..28, region x, y in {12, 20, 28} (anchors 5,6,7,9,10,11,13,14,15)
    boxes[0] = torch.tensor([12, 12, 16, 16.])   # IoU A 1, IoU B 64/448 = 0.143
    boxes[15] = torch.tensor([20, 20, 16, 16.])  # IoU B 1, IoU A 0.143
    boxes[5] = torch.tensor([15, 15, 16, 16.])   # box 7..23: IoU A 169/343 = 0.4927, IoU B 121/391 = 0.3095
    # high-IoU anchors with the wrong class, so they raise k without being chosen:
    boxes[1] = torch.tensor([12, 12, 16, 12.])   # IoU A 0.75 (IoU B 0.12), confident in class 1
    cls[1], obj[1] = torch.tensor([-4.0, 4.0]), 4.0
    boxes[14] = torch.tensor([20, 20, 16, 12.])  # IoU B 0.75 (IoU A 0.12), confident in class 0
    cls[14], obj[14] = torch.tensor([4.0, -4.0]), 4.0
    return boxes, cls, obj, centres, strides


def test_two_gts_competing_for_one_anchor_lowest_cost_wins():
    boxes, cls, obj, centres, strides = two_gt_scene()
    # k: A's top IoUs 1 + 0.75 + 0.4927 + 0.143 + 0.12 + tiny = 2.5 -> 2; B's 1 + 0.75 + 0.3095 + 0.143 + 0.12 -> 2.
    # costs (class cost 1.386 for neutral anchors; 6.036 for the wrong-class anchors 1 and 14):
    #   A: anchor 0 = 1.386, anchor 5 = 1.386 + 3 * 0.7078 = 3.509, anchor 1 = 6.036 + 3 * 0.2877 = 6.899
    #   B: anchor 15 = 1.386, anchor 5 = 1.386 + 3 * 1.1728 = 4.904, anchor 14 = 6.899
    # Both take anchor 5; A's cost there (3.509) is lower, so A keeps it and B is left with anchor 15.
    fg, matched, iou = assign(boxes, cls, obj, centres, strides, [[12, 12, 16, 16], [20, 20, 16, 16]], [0, 1])
    assert fg_list(fg) == [0, 5, 15]
    assert matched.tolist() == [0, 0, 1]
    assert iou.tolist() == pytest.approx([1.0, 169 / 343, 1.0], abs=1e-5)


def test_contested_anchor_goes_to_the_other_gt_when_its_cost_is_lower():
    boxes, cls, obj, centres, strides = two_gt_scene()
    # make anchor 5 confident in class 1 (B's): class cost for B 0.161 -> 0.161 + 3.518 = 3.679;
    # for A -ln 0.1329 - ln(1 - 0.98201) = 6.036 -> 6.036 + 2.123 = 8.159. A's second choice is now anchor 1
    # (6.899 < 8.159), so anchor 5 is not even contested: A takes 0 and 1, B takes 5 and 15.
    cls[5], obj[5] = torch.tensor([-4.0, 4.0]), 4.0
    fg, matched, _ = assign(boxes, cls, obj, centres, strides, [[12, 12, 16, 16], [20, 20, 16, 16]], [0, 1])
    assert fg_list(fg) == [0, 1, 5, 15]
    assert matched.tolist() == [0, 0, 1, 1]


def test_gt_without_candidate_anchor_gets_nothing_and_changes_nothing():
    centres, strides = grid4()
    boxes, cls, obj = default_preds(centres)
    boxes[5] = torch.tensor([16, 16, 16, 16.])
    boxes[6] = torch.tensor([16, 16, 16, 8.])
    boxes[9] = torch.tensor([16, 16, 12, 12.])
    alone = assign(boxes, cls, obj, centres, strides, [[16, 16, 16, 16]], [0])
    # a GT centred at (100, 100), off the 32x32 grid: no cell centre within 12 px of it
    fg, matched, iou = assign(boxes, cls, obj, centres, strides, [[16, 16, 16, 16], [100, 100, 8, 8]], [0, 1])
    assert fg_list(fg) == fg_list(alone[0]) == [5, 9]
    assert matched.tolist() == [0, 0]
    assert torch.equal(iou, alone[2])
    fg, matched, iou = assign(boxes, cls, obj, centres, strides, [[100, 100, 8, 8]], [1])
    assert not fg.any() and matched.numel() == 0 and iou.numel() == 0


def test_gt_may_take_a_candidate_outside_its_own_region_as_the_authors():
    # three anchors of stride 8: (4, 4), (28, 4), (36, 4). GT1 at (4, 4): region x in (-8, 16) -> anchor 0 only.
    # GT2 at (32, 4): region (20, 44) -> anchors 1, 2. All three are candidates.
    centres = torch.tensor([[4, 4], [28, 4], [36, 4.]])
    strides = torch.full((3,), 8.0)
    gts = [[4, 4, 8, 8], [32, 4, 8, 8]]
    boxes = torch.tensor([[4, 4, 8, 8.],      # IoU GT1 1
                          [4, 4, 8, 8.],      # IoU GT1 1: predicts GT1 although its cell is far from it; IoU GT2 0
                          [32, 4, 8, 8.]])    # IoU GT2 1
    cls, obj = torch.zeros(3, C), torch.zeros(3)
    # GT1: k = int(1 + 1 + 0) = 2: anchor 0 (cost 1.386) and anchor 1 (cost 1.386 + 1e6, outside its region);
    # GT2: k = int(1 + 0 + 0) = 1: anchor 2. No conflict: anchor 1 goes to GT1, as in the authors' code.
    fg, matched, iou = simota_assign(boxes, cls, obj, centres, strides, torch.tensor(gts), torch.tensor([0, 1]))
    assert fg_list(fg) == [0, 1, 2]
    assert matched.tolist() == [0, 0, 1]


def test_empty_image():
    centres, strides = grid4()
    boxes, cls, obj = default_preds(centres)
    fg, matched, iou = simota_assign(boxes, cls, obj, centres, strides, torch.zeros(0, 4),
                                     torch.zeros(0, dtype=torch.long))
    assert fg.shape == (16,) and fg.dtype == torch.bool and not fg.any()
    assert matched.shape == (0,) and matched.dtype == torch.long
    assert iou.shape == (0,)


def test_obj_logits_may_be_a_column_and_inputs_stay_untouched():
    boxes, cls, obj, centres, strides = two_gt_scene()
    gts, labels = torch.tensor([[12, 12, 16, 16], [20, 20, 16, 16.]]), torch.tensor([0, 1])
    before = boxes.clone()
    a = simota_assign(boxes, cls, obj, centres, strides, gts, labels)
    b = simota_assign(boxes, cls, obj[:, None], centres, strides[:, None], gts, labels)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(boxes, before)


def test_bad_labels_are_rejected():
    boxes, cls, obj, centres, strides = two_gt_scene()
    with pytest.raises(ValueError, match="labels"):
        simota_assign(boxes, cls, obj, centres, strides, torch.tensor([[12, 12, 16, 16.]]), torch.tensor([2]))


# --- against a literal reference ---------------------------------------------------------------------
def reference_simota(boxes, cls, obj, centres, strides, gts, labels):
    """The algorithm as described, one GT at a time, the class cost on the full [G, N, C] one-hot tensor."""
    G, A = len(gts), len(boxes)
    in_region = torch.zeros(G, A, dtype=torch.bool)
    for g in range(G):
        for a in range(A):
            r = 1.5 * strides[a]
            in_region[g, a] = bool(abs(centres[a, 0] - gts[g, 0]) < r and abs(centres[a, 1] - gts[g, 1]) < r)
    cand = in_region.any(0).nonzero().squeeze(1)
    fg = torch.zeros(A, dtype=torch.bool)
    if len(cand) == 0:
        return fg, torch.zeros(0, dtype=torch.long), torch.zeros(0)
    ious = pairwise_iou_cxcywh(gts, boxes[cand])
    p = (cls[cand].sigmoid() * obj[cand].sigmoid()[:, None]).sqrt()
    onehot = F.one_hot(labels, cls.shape[1]).float()
    bce = F.binary_cross_entropy(p[None].expand(G, -1, -1), onehot[:, None].expand(-1, len(cand), -1),
                                 reduction="none").sum(-1)
    cost = bce + 3 * -torch.log(ious + 1e-8) + 1e6 * (~in_region[:, cand]).float()
    match = torch.zeros(G, len(cand), dtype=torch.bool)
    for g in range(G):
        if not in_region[g, cand].any():
            continue
        k = max(1, int(torch.topk(ious[g], min(10, len(cand))).values.sum()))
        match[g, torch.topk(cost[g], k, largest=False).indices] = True
    for n in range(len(cand)):
        if match[:, n].sum() > 1:
            best = int(cost[:, n].argmin())
            match[:, n] = False
            match[best, n] = True
    cols = match.any(0).nonzero().squeeze(1)
    fg[cand[cols]] = True
    matched = match[:, cols].float().argmax(0)
    return fg, matched, ious[matched, cols]


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_on_random_multilevel_scenes(seed):
    g = torch.Generator().manual_seed(seed)
    grid, stride = make_grid([(8, 8), (4, 4), (2, 2)], (8, 16, 32))
    centres, strides = anchor_points(grid, stride)
    A, num_classes = len(centres), 3
    num_gt = int(torch.randint(1, 6, (1,), generator=g))
    gt_c = torch.rand(num_gt, 2, generator=g) * 64
    gt_wh = 4 + torch.rand(num_gt, 2, generator=g) * 40
    gts = torch.cat((gt_c, gt_wh), 1)
    labels = torch.randint(0, num_classes, (num_gt,), generator=g)
    # predictions: jittered copies of random GTs so that IoUs spread over (0, 1)
    pick = torch.randint(0, num_gt, (A,), generator=g)
    boxes = gts[pick] + torch.randn(A, 4, generator=g) * torch.tensor([4, 4, 3, 3.])
    boxes[:, 2:] = boxes[:, 2:].abs() + 1
    cls = torch.randn(A, num_classes, generator=g) * 2
    obj = torch.randn(A, generator=g) * 2
    got = simota_assign(boxes, cls, obj, centres, strides, gts, labels)
    want = reference_simota(boxes, cls, obj, centres, strides, gts, labels)
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])
    assert torch.allclose(got[2], want[2])
    assert not math.isnan(float(got[2].sum()))
