"""NMS against a brute-force reference with torchvision's semantics (suppress when IoU > threshold)."""

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from yolox_deploy.ops import nms as nms_module
from yolox_deploy.ops.nms import batched_nms, batched_nms_numpy, dense_nms_numpy, nms


def reference_nms(boxes: np.ndarray, scores: np.ndarray, thr: float, groups: np.ndarray | None = None) -> list[int]:
    """Textbook greedy NMS, one pair at a time in float64."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            if groups is not None and groups[i] != groups[j]:
                continue
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            a_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            a_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            union = a_i + a_j - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def random_boxes(rng: np.random.Generator, n: int, spread: float = 100.0) -> np.ndarray:
    xy = rng.uniform(0, spread, (n, 2))
    wh = rng.uniform(1, spread / 2, (n, 2))
    # round to a grid so float32 and float64 IoUs agree away from the threshold
    return np.round(np.concatenate([xy, xy + wh], axis=1) * 4) / 4


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300), thr=st.sampled_from([0.3, 0.45, 0.5, 0.65, 0.7]),
       classes=st.integers(1, 5))
def test_batched_nms_matches_brute_force(seed, n, thr, classes):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / max(n, 1)  # distinct scores: order is defined
    groups = rng.integers(0, classes, n)
    got = batched_nms(boxes, scores, groups, thr)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    assert got.tolist() == reference_nms(boxes.astype(np.float64), scores, thr, groups)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 200))
def test_nms_matches_brute_force(seed, n):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, spread=40).astype(np.float32)  # dense: long suppression chains
    scores = rng.permutation(n).astype(np.float32)
    assert nms(boxes, scores, 0.5).tolist() == reference_nms(boxes.astype(np.float64), scores, 0.5)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 256), thr=st.sampled_from([0.3, 0.5, 0.65]),
       classes=st.sampled_from([None, 1, 3]))
def test_dense_numpy_nms_matches_brute_force(seed, n, thr, classes):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, spread=60).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32)
    groups = None if classes is None else rng.integers(0, classes, n)
    got = dense_nms_numpy(boxes, scores, groups, thr)
    assert got.dtype == np.int64
    assert got.tolist() == reference_nms(boxes.astype(np.float64), scores, thr, groups)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300), thr=st.sampled_from([0.3, 0.45, 0.65]),
       classes=st.sampled_from([None, 1, 4]), one_call_max=st.sampled_from([2048, 16]))
def test_opencv_nms_matches_brute_force(seed, n, thr, classes, one_call_max):
    """The CPU pipeline's NMS (OpenCV), in one call and one call per group, with negative coordinates."""
    rng = np.random.default_rng(seed)
    boxes = (random_boxes(rng, n, spread=60) - 20).astype(np.float32)
    scores = (rng.permutation(n).astype(np.float32) + 1) / (n + 1)
    groups = None if classes is None else rng.integers(0, classes, n)
    with mock.patch.object(nms_module, "OPENCV_ONE_CALL_MAX", one_call_max):
        got = batched_nms_numpy(boxes, scores, groups, thr)
    assert got.dtype == np.int64
    assert got.tolist() == reference_nms(boxes.astype(np.float64), scores, thr, groups)


def test_opencv_nms_ties_equal_iou_and_fallbacks():
    boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1], [0, 0, 2, 1]], np.float32)  # iou(0,1) = 1/3, iou(0,2) = 1
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert batched_nms_numpy(boxes, scores, None, 1 / 3).tolist() == [0, 1]  # IoU equal to the threshold: kept
    assert batched_nms_numpy(boxes, scores, np.array([0, 1, 1]), 0.5).tolist() == [0, 1, 2]
    tied = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11]], np.float32)
    assert batched_nms_numpy(tied, np.full(3, 0.5, np.float32), None, 0.5).tolist() == [0, 1, 2]
    empty = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]], np.float32)  # two empty boxes never suppress
    assert sorted(batched_nms_numpy(empty, scores, None, 0.1).tolist()) == [0, 1, 2]
    zero = np.array([0.9, 0.0, 0.0], np.float32)  # scores of 0, which OpenCV would drop
    assert batched_nms_numpy(tied, zero, None, 0.5).tolist() == [0, 1, 2]
    assert batched_nms_numpy(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None, 0.5).shape == (0,)


@pytest.mark.parametrize("groups", [np.zeros(4, np.int64), np.array([0, 0, 1, 1]), None])
def test_an_infinite_box_does_not_drop_others(groups):
    """An infinite side moved every group's stretch of the plane to NaN: OpenCV kept only the first box (the
    torch path, which GPU backends use, kept all three that should stay)."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, np.inf, 10], [100, 100, 110, 110]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    expected = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                           torch.from_numpy(groups if groups is not None else np.zeros(4, np.int64)), 0.5)
    assert batched_nms_numpy(boxes, scores, groups, 0.5).tolist() == expected.tolist() == [0, 2, 3]


def test_chunks_and_long_chains(monkeypatch):
    """Pairs tested in many small chunks, and a chain of boxes each overlapping the next (worst case)."""
    monkeypatch.setattr(nms_module, "PAIR_CHUNK", 37)
    monkeypatch.setattr(nms_module, "DENSE_MAX", 8)
    n = 100
    x = np.arange(n, dtype=np.float32) * 2.0
    boxes = np.stack([x, np.zeros(n), x + 10, np.full(n, 10.0)], axis=1).astype(np.float32)
    scores = np.linspace(1, 0.01, n).astype(np.float32)
    for thr in (0.5, 0.7, 0.85):
        expected = reference_nms(boxes.astype(np.float64), scores, thr)
        assert nms(boxes, scores, thr).tolist() == expected
        assert dense_nms_numpy(boxes, scores, None, thr).tolist() == expected
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 400, spread=60).astype(np.float32)
    scores = rng.permutation(400).astype(np.float32)
    groups = rng.integers(0, 7, 400)
    assert batched_nms(boxes, scores, groups, 0.4).tolist() == reference_nms(boxes.astype(np.float64), scores, 0.4,
                                                                             groups)


def test_equal_iou_is_not_suppressed():
    # IoU exactly 0.5: kept (strictly greater suppresses)
    boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1], [0, 0, 2, 1]], np.float32)  # iou(0,1) = 1/3, iou(0,2) = 1
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 1 / 3).tolist() == [0, 1]
    assert nms(boxes, scores, 0.99).tolist() == [0, 1]
    assert nms(boxes, scores, 1.0).tolist() == [0, 1, 2]


def test_ties_keep_input_order():
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11]], np.float32)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]


def test_empty_and_degenerate_boxes():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    boxes = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]], np.float32)  # two empty boxes
    assert sorted(nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.1).tolist()) == [0, 1, 2]


def test_torch_in_torch_out_and_same_answer():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 500).astype(np.float32)
    scores = rng.random(500).astype(np.float32)
    idxs = rng.integers(0, 10, 500)
    t = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), 0.5)
    assert isinstance(t, torch.Tensor)
    assert t.tolist() == batched_nms(boxes, scores, idxs, 0.5).tolist()


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(2)
    boxes = torch.from_numpy(random_boxes(rng, 3000).astype(np.float32))
    scores = torch.from_numpy(rng.random(3000).astype(np.float32))
    idxs = torch.from_numpy(rng.integers(0, 80, 3000))
    cpu = batched_nms(boxes, scores, idxs, 0.65)
    gpu = batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.65)
    assert gpu.device.type == "cuda"
    assert gpu.cpu().tolist() == cpu.tolist()
