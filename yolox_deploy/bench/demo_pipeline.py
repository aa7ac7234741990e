"""The authors' ONNX Runtime demo pipeline, stage for stage, as a speed baseline.

Their ``demo/ONNXRuntime/onnx_inference.py`` runs, per image:

1. ``preproc`` (from their training-augmentation module): a ``114``-filled uint8 canvas, ``cv2.resize`` by
   ``r = min(H / h, W / w)`` (linear), pasted top-left, transposed to CHW and copied to float32;
2. ``session.run`` on a default ``onnxruntime.InferenceSession`` of a raw-output ONNX file (no decode in
   the graph), input ``[1, 3, H, W]``;
3. ``demo_postprocess``: grids and strides rebuilt with ``np.meshgrid`` on every call, ``xy = (xy + grid) *
   stride``, ``wh = exp(wh) * stride``;
4. scores ``obj * cls`` for every class, boxes to xyxy divided by ``r``, then ``multiclass_nms`` in its
   class-agnostic default: best class per box, keep scores ``> 0.1``, greedy NMS at IoU ``0.45`` in a numpy
   loop with the ``+ 1`` pixel area convention. The demo then draws boxes scoring at least ``0.3``
   (drawing is not part of the timed pipeline).

This module re-implements those stages (from their documented behaviour) so the benchmark can time them on
the same images, in the same run, as the :class:`~yolox_deploy.runtimes.detector.Detector`. It exposes the
Detector's stage interface (``preprocess`` / ``infer`` / ``postprocess``) for
:func:`yolox_deploy.bench.latency.measure_pipeline`; it handles one image per call, as the demo does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import BackendUnavailable, InputError

DEMO_STRIDES = (8, 16, 32)
DEMO_NMS_IOU = 0.45          # multiclass_nms(nms_thr=0.45)
DEMO_NMS_SCORE = 0.1         # multiclass_nms(score_thr=0.1)
DEMO_DRAW_SCORE = 0.3        # --score_thr default: boxes drawn by vis()
DEMO_PAD = 114


def demo_preproc(image: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """BGR uint8 ``[h, w, 3]`` -> (float32 ``[3, H, W]`` letterboxed top-left on 114, ratio ``r``)."""
    canvas = np.ones((input_hw[0], input_hw[1], 3), dtype=np.uint8) * DEMO_PAD
    r = min(input_hw[0] / image.shape[0], input_hw[1] / image.shape[1])
    new_w, new_h = int(image.shape[1] * r), int(image.shape[0] * r)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    canvas[:new_h, :new_w] = resized
    chw = canvas.transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32), r


def demo_decode(outputs: np.ndarray, input_hw: tuple[int, int], strides: Sequence[int] = DEMO_STRIDES) -> np.ndarray:
    """Raw head output ``[N, A, 5 + C]`` -> boxes decoded to ``cx, cy, w, h`` input pixels, in place.

    The grids are rebuilt on every call, as the demo does.
    """
    grids, expanded = [], []
    for stride in strides:
        h, w = input_hw[0] // stride, input_hw[1] // stride
        xv, yv = np.meshgrid(np.arange(w), np.arange(h))
        grid = np.stack((xv, yv), 2).reshape(1, -1, 2)
        grids.append(grid)
        expanded.append(np.full((1, grid.shape[1], 1), stride))
    grid_all = np.concatenate(grids, 1)
    stride_all = np.concatenate(expanded, 1)
    outputs[..., :2] = (outputs[..., :2] + grid_all) * stride_all
    outputs[..., 2:4] = np.exp(outputs[..., 2:4]) * stride_all
    return outputs


def demo_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy single-class NMS over xyxy ``boxes [N, 4]`` (areas with the ``+ 1`` convention); kept indices."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[np.where(iou <= iou_threshold)[0]]
    return keep


def demo_multiclass_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = DEMO_NMS_IOU,
                        score_threshold: float = DEMO_NMS_SCORE) -> np.ndarray:
    """Class-agnostic NMS: best class per box, ``score > score_threshold``, then :func:`demo_nms`.

    ``boxes [N, 4]`` xyxy, ``scores [N, C]``; returns ``[K, 6]`` rows ``x1, y1, x2, y2, score, class``
    (``[0, 6]`` when nothing is kept).
    """
    cls_ids = scores.argmax(1)
    cls_scores = scores[np.arange(len(cls_ids)), cls_ids]
    mask = cls_scores > score_threshold
    if not mask.any():
        return np.zeros((0, 6), dtype=np.float32)
    boxes, cls_scores, cls_ids = boxes[mask], cls_scores[mask], cls_ids[mask]
    keep = demo_nms(boxes, cls_scores, iou_threshold)
    return np.concatenate([boxes[keep], cls_scores[keep, None], cls_ids[keep, None].astype(boxes.dtype)], 1)


def demo_postprocess(output: np.ndarray, ratio: float, input_hw: tuple[int, int],
                     iou_threshold: float = DEMO_NMS_IOU, score_threshold: float = DEMO_NMS_SCORE) -> np.ndarray:
    """One image's raw output ``[1, A, 5 + C]`` -> detections ``[K, 6]`` in original-image pixels."""
    pred = demo_decode(output, input_hw)[0]
    boxes = pred[:, :4]
    scores = pred[:, 4:5] * pred[:, 5:]
    xyxy = np.ones_like(boxes)
    xyxy[:, 0] = boxes[:, 0] - boxes[:, 2] / 2.0
    xyxy[:, 1] = boxes[:, 1] - boxes[:, 3] / 2.0
    xyxy[:, 2] = boxes[:, 0] + boxes[:, 2] / 2.0
    xyxy[:, 3] = boxes[:, 1] + boxes[:, 3] / 2.0
    xyxy /= ratio
    return demo_multiclass_nms(xyxy, scores, iou_threshold, score_threshold)


class DemoPipeline:
    """The authors' ONNX Runtime demo on a raw-output ONNX file (theirs, or ours exported without decode).

    ``session`` is created as the demo does (``InferenceSession(path)``, default options) on the CPU
    execution provider; ``threads`` sets its intra-op threads (a race against a Detector held to N threads
    holds the demo to them too). Call with one BGR image, or use the stage methods.
    """

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailable("the ONNX Runtime demo baseline needs onnxruntime "
                                     "(pip install 'yolox-deploy[onnx]')") from None
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise InputError(f"ONNX file not found: {self.path}")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        h, w = inp.shape[2], inp.shape[3]
        if not (isinstance(h, int) and isinstance(w, int)):
            raise InputError(f"{self.path.name} has a dynamic input size; the demo needs a fixed one")
        self.input_hw = (h, w)

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if len(images) != 1:
            raise InputError("the authors' demo runs one image per call")
        blob, r = demo_preproc(images[0], self.input_hw)
        return blob[None, :, :, :], np.array([r])

    def infer(self, batch: np.ndarray) -> list[Any]:
        return self.session.run(None, {self.input_name: batch})

    def postprocess(self, outputs: list[Any], ratios: np.ndarray, image_sizes: Sequence[tuple[int, int]]
                    ) -> list[np.ndarray]:
        return [demo_postprocess(outputs[0], float(ratios[0]), self.input_hw)]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Detections ``[K, 6]`` (score > 0.1, as ``multiclass_nms`` returns them) for one BGR image."""
        batch, ratios = self.preprocess([image])
        return self.postprocess(self.infer(batch), ratios, [image.shape[:2]])[0]
