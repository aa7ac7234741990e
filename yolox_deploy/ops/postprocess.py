"""From head output to per-image detections, as the authors' ``postprocess``.

Per anchor the class is the arg-max class, the score is ``obj * p(class)``; anchors with score below
``conf_threshold`` are dropped; NMS runs per image and (unless ``class_agnostic``) per class. All images of a
batch go through one NMS call. Scores do not depend on decoding, so a raw output is filtered first and only
the surviving anchors are decoded. Works on numpy or torch (any device); results stay on the input's device.
On the CPU the steps run in numpy and NMS in OpenCV (a detector's post-processing is a dozen calls on small
arrays, where numpy's per-call cost is a fraction of torch's); elsewhere as torch ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError
from ..utils.sizes import STRIDES, level_shapes, num_anchors
from ..utils.values import is_integer, is_number
from ._array import Array, like, to_tensor
from .boxes import cxcywh_to_xyxy
from .decode import WH_LOGIT_MAX, XY_LOGIT_LIMIT, cached_grid, decode_with_grid
from .nms import batched_nms, batched_nms_numpy


class RawDetections(NamedTuple):
    """Detections of one image on the input canvas: ``boxes [K, 4]`` xyxy, ``scores [K]``, ``class_ids [K]``."""

    boxes: Array
    scores: Array
    class_ids: Array


def check_settings(conf: float | None, iou: float | None, max_det: int | None,
                   names: tuple[str, str] = ("conf_threshold", "iou_threshold"), *, uncapped: bool = True) -> None:
    """Raise :class:`InputError` for a threshold outside [0, 1] or a ``max_det`` other than >= 1 (or None,
    no cap, where ``uncapped``); ``names``: how the caller calls the two thresholds."""
    for name, value in zip(names, (conf, iou)):
        if value is not None and not (is_number(value) and 0.0 <= value <= 1.0):
            raise InputError(f"thresholds must be numbers in [0, 1]: {name}={value!r}")
    if (max_det is None and not uncapped) or (max_det is not None and (not is_integer(max_det) or max_det < 1)):
        raise InputError(f"max_det must be an integer >= 1{' (or None for no cap)' if uncapped else ''}, "
                         f"got {max_det!r}")


def postprocess(pred: Array, conf_threshold: float, iou_threshold: float, *, class_agnostic: bool = False,
                max_det: int | None = None, input_hw: tuple[int, int] | None = None,
                strides: tuple[int, ...] = STRIDES) -> list[RawDetections]:
    """Head output ``[B, A, 5 + C]`` -> one :class:`RawDetections` per image.

    ``pred`` holds decoded boxes (cx, cy, w, h in input pixels) when ``input_hw`` is ``None``; otherwise it
    is the raw output of an ``input_hw`` input and is decoded here (only for anchors above the threshold).
    Each result is sorted by decreasing score and holds at most ``max_det`` boxes (all when ``None``).
    """
    if not isinstance(pred, (np.ndarray, torch.Tensor)):
        raise InputError(f"expected predictions as a numpy array or a torch tensor, got {type(pred).__name__}")
    check_settings(None, iou_threshold, max_det)  # any score threshold filters (above 1: nothing passes)
    if pred.ndim != 3 or pred.shape[-1] < 6:
        raise InputError(f"expected predictions [B, A, 5 + C], got shape {tuple(pred.shape)}")
    if input_hw is not None and num_anchors(input_hw, strides) != pred.shape[1]:
        raise InputError(f"raw output has {pred.shape[1]} anchors, not those of a {input_hw[0]}x{input_hw[1]} input")
    # Python floats: numpy compares a float32 array with a numpy float64 scalar in float64, torch (and numpy with
    # a Python float) in float32, so a score or IoU equal to the float32 threshold passed on one path only
    iou_threshold = float(iou_threshold)
    if is_number(conf_threshold):
        conf_threshold = float(conf_threshold)
    if isinstance(pred, np.ndarray):
        return _postprocess_numpy(pred if pred.dtype == np.float32 else pred.astype(np.float32), np.asarray,
                                  conf_threshold, iou_threshold, class_agnostic, max_det, input_hw, strides)
    t = pred if pred.dtype == torch.float32 else pred.float()
    if t.device.type == "cpu":
        return _postprocess_numpy(t.detach().numpy(), torch.from_numpy, conf_threshold, iou_threshold,
                                  class_agnostic, max_det, input_hw, strides)
    return _postprocess_torch(t, pred, conf_threshold, iou_threshold, class_agnostic, max_det, input_hw, strides)


def _numpy_grid(input_hw: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    grid, stride = cached_grid(level_shapes(input_hw, strides), strides, torch.device("cpu"), torch.float32)
    return grid.numpy(), stride.numpy()


def _postprocess_numpy(a: np.ndarray, out: Callable[[np.ndarray], Array], conf_threshold: float,
                       iou_threshold: float, class_agnostic: bool, max_det: int | None,
                       input_hw: tuple[int, int] | None, strides: tuple[int, ...]) -> list[RawDetections]:
    """The CPU path: a few numpy calls on the anchors above the threshold, then OpenCV's NMS.

    Class probabilities are at most 1, so only anchors with ``obj >= conf`` can qualify: those are picked
    first and the arg-max over classes runs on their rows alone. Right after a runtime's inference every
    array operation runs on cold caches (several microseconds each), so a single image skips the image
    index bookkeeping. ``out`` turns the result arrays into the caller's kind (numpy or torch).
    """
    n_images, num_classes = a.shape[0], a.shape[-1] - 5
    if n_images == 1:
        img_idx = None
        anchor_idx = np.flatnonzero(a[0, :, 4] >= conf_threshold)
        rows = a[0, anchor_idx]                                        # [K, 5 + C]
    else:
        img_idx, anchor_idx = np.nonzero(a[..., 4] >= conf_threshold)
        rows = a[img_idx, anchor_idx]
    probs = rows[:, 5:]
    cls = probs.argmax(axis=1)
    scores = rows[:, 4] * probs.max(axis=1)
    ok = np.flatnonzero(scores >= conf_threshold)
    rows, cls, scores = rows[ok], cls[ok], scores[ok]
    xy, wh = rows[:, 0:2], rows[:, 2:4]
    if input_hw is not None:
        grid, stride = _numpy_grid(input_hw, strides)
        cells = anchor_idx[ok]
        xy = (np.clip(xy, -XY_LOGIT_LIMIT, XY_LOGIT_LIMIT) + grid[cells]) * stride[cells]
        wh = np.exp(np.minimum(wh, WH_LOGIT_MAX)) * stride[cells]
    half = wh / 2
    boxes = np.concatenate((xy - half, xy + half), axis=1)
    if img_idx is None:
        keep = batched_nms_numpy(boxes, scores, None if class_agnostic else cls, iou_threshold)
        per_image = [keep]
    else:
        img_idx = img_idx[ok]
        keep = batched_nms_numpy(boxes, scores, img_idx if class_agnostic else img_idx * num_classes + cls,
                                 iou_threshold)
        kept_img = img_idx[keep]
        per_image = [keep[kept_img == b] for b in range(n_images)]
    return [RawDetections(out(boxes[sel]), out(scores[sel]), out(cls[sel]))
            for sel in (per_image if max_det is None else [k[:max_det] for k in per_image])]


def _postprocess_torch(t: torch.Tensor, pred: Array, conf_threshold: float, iou_threshold: float,
                       class_agnostic: bool, max_det: int | None, input_hw: tuple[int, int] | None,
                       strides: tuple[int, ...]) -> list[RawDetections]:
    """Other devices (the GPU): the same steps as torch ops on the output tensor, results left there."""
    num_classes = t.shape[-1] - 5
    img_idx, anchor_idx = (t[..., 4] >= conf_threshold).nonzero(as_tuple=True)
    rows = t[img_idx, anchor_idx]
    class_conf, class_pred = rows[:, 5:].max(dim=1)
    scores = rows[:, 4] * class_conf
    ok = scores >= conf_threshold
    img_idx, anchor_idx, cand_scores, cand_cls = img_idx[ok], anchor_idx[ok], scores[ok], class_pred[ok]
    cand = rows[ok, :4]                                                # [K, 4]
    if input_hw is not None:
        grid, stride = cached_grid(level_shapes(input_hw, strides), strides, t.device, t.dtype)
        cand = decode_with_grid(cand, grid[anchor_idx], stride[anchor_idx])
    cand_boxes = cxcywh_to_xyxy(cand)
    groups = img_idx if class_agnostic else img_idx * num_classes + cand_cls
    keep = batched_nms(cand_boxes, cand_scores, groups, iou_threshold)

    if t.shape[0] == 1:
        per_image = [keep]
    else:
        kept_img = img_idx[keep]
        per_image = [keep[kept_img == b] for b in range(t.shape[0])]
    results = []
    for sel in per_image:
        if max_det is not None:
            sel = sel[:max_det]
        results.append(RawDetections(like(cand_boxes[sel], pred), like(cand_scores[sel], pred),
                                     like(cand_cls[sel], pred)))
    return results


def split_nms_outputs(num_dets: Array, boxes: Array, scores: Array, labels: Array) -> list[RawDetections]:
    """The four outputs of an in-graph NMS (``[B, 1]``, ``[B, K, 4]``, ``[B, K]``, ``[B, K]``) per image, by
    decreasing score. Entries with a negative score are dropped: no detection scores below 0, and TensorRT's
    EfficientNMS_TRT below a 0.007 score threshold can count its -32768 padding in ``num_dets``."""
    n = to_tensor(num_dets).reshape(-1).long()
    b, s, c = to_tensor(boxes), to_tensor(scores), to_tensor(labels)
    out = []
    for i in range(b.shape[0]):
        k = int(n[i])
        order = torch.sort(s[i, :k].float(), descending=True, stable=True).indices
        order = order[s[i, :k][order] >= 0]
        out.append(RawDetections(like(b[i, :k][order].float(), boxes), like(s[i, :k][order].float(), scores),
                                 like(c[i, :k][order].long(), labels)))
    return out
