"""Check a freshly written artefact against its source before it is reported as exported.

The artefact runs on a sample image through its own runtime backend (the same code ``Detector`` uses); the
reference is the fused torch model in FP32 on the CPU (or, for an ONNX source, that ONNX file in ONNX
Runtime), with the same decode setting. Two figures:

- max abs diff of the head output, in raw units: scores as they are, box centres divided by the anchor's
  stride and box sizes divided by ``max(size, stride)`` when the graph decodes (both are then what the raw
  offsets would differ by); for FP16/INT8 artefacts only over anchors scoring >= 0.01 in either output;
  not available for NMS graphs;
- detections agreement at conf 0.25 / NMS 0.45: same-class matches with IoU >= 0.5 over the larger count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ExportError
from ..io.images import read_image
from ..io.synthetic import synthetic_scene
from ..meta import ModelMeta
from ..ops.decode import cached_grid, decode, level_shapes
from ..ops.letterbox import preprocess_batch
from ..ops.match import EMPTY, Agreement, match_detections
from ..ops.postprocess import RawDetections, postprocess, split_nms_outputs
from .base import ExportOptions, ExportSource

log = logging.getLogger(__name__)

# Max abs diff of the raw output, and minimum detections agreement, per precision. FP32 is compared on every
# anchor. Reduced precision only on anchors scoring >= SCORE_FLOOR in either output: background anchors' boxes
# are unconstrained (rounding YOLOX-Nano's weights to FP16 moves them by up to 0.9 raw units, in torch too,
# while its AP does not change), and INT8 on its detections alone (single anchors' scores move by up to ~0.6
# while COCO AP moves by 0.002), its diff is reported, not checked.
TOLERANCE = {"fp32": 1e-3, "fp16": 0.25, "int8": math.inf}
SCORE_FLOOR = 0.01
MIN_AGREEMENT = {"fp32": 0.99, "fp16": 0.8, "int8": 0.5}
VERIFY_CONF, VERIFY_IOU = 0.25, 0.45


@dataclass(frozen=True)
class VerifyReport:
    precision: str
    max_abs_diff: float | None
    tolerance: float
    agreement: Agreement
    min_agreement: float
    image: str

    @property
    def passed(self) -> bool:
        diff_ok = self.max_abs_diff is None or self.max_abs_diff <= self.tolerance
        return diff_ok and self.agreement.agreement >= self.min_agreement

    def summary(self) -> str:
        diff = "n/a (NMS in graph)" if self.max_abs_diff is None else f"{self.max_abs_diff:.2e}"
        a = self.agreement
        limit = "not checked" if math.isinf(self.tolerance) else f"tolerance {self.tolerance:g}"
        if max(a.n_a, a.n_b) == 0:
            dets = f"no detections above conf {VERIFY_CONF:g} to compare (--verify-image IMAGE checks them)"
        else:
            dets = f"detections {a.matched}/{max(a.n_a, a.n_b)} agree (mean IoU {a.mean_iou:.3f})"
        return f"max abs diff {diff} ({limit}), {dets} on {self.image}"


def normalised_diff(out: np.ndarray, ref: np.ndarray, meta: ModelMeta, score_floor: float = 0.0) -> float:
    """Max abs diff of two head outputs ``[B, A, 5 + C]`` in raw units (see the module docstring).

    With ``score_floor > 0`` only anchors whose score (objectness x best class) reaches it in either output
    count; 0.0 when there are none.
    """
    out = out.astype(np.float64)
    ref = ref.astype(np.float64)
    if not meta.decode_in_graph:
        diff = np.abs(out - ref)
    else:
        _, stride = cached_grid(level_shapes(meta.input_size, meta.strides), meta.strides, torch.device("cpu"),
                                torch.float32)
        s = stride.numpy().astype(np.float64)  # [A, 1]
        diff = np.concatenate([np.abs(out[..., 0:2] - ref[..., 0:2]) / s,
                               np.abs(out[..., 2:4] - ref[..., 2:4]) / np.maximum(np.abs(ref[..., 2:4]), s),
                               np.abs(out[..., 4:] - ref[..., 4:])], axis=-1)
    if score_floor > 0:
        score = np.maximum(out[..., 4] * out[..., 5:].max(-1), ref[..., 4] * ref[..., 5:].max(-1))  # [B, A]
        diff = diff[score >= score_floor]
    return float(diff.max()) if diff.size else 0.0


def _detections(outputs: list[Any], meta: ModelMeta, conf: float = VERIFY_CONF, iou: float = VERIFY_IOU,
                max_det: int | None = None) -> list[RawDetections]:
    if meta.nms_in_graph:
        return split_nms_outputs(*[_np(o) for o in outputs[:4]])
    hw = None if meta.decode_in_graph else meta.input_size
    return postprocess(_np(outputs[0]), conf, iou, max_det=max_det, input_hw=hw, strides=meta.strides)


def _np(x: Any) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.detach().cpu().float().numpy()


def reference_outputs(source: ExportSource, batch: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """The source's head output for ``batch`` (decoded iff the artefact decodes), FP32 on the CPU."""
    if source.model is not None:
        model = (source.reference if source.reference is not None else source.model).cpu().float().eval()
        return model.head_output(batch, decode=meta.decode_in_graph or meta.nms_in_graph)
    from ..runtimes.detector import open_backend

    with open_backend(source.onnx_path, backend="onnxruntime") as ref:
        out = _np(ref.infer(batch)[0])
    if (meta.decode_in_graph or meta.nms_in_graph) and not source.meta.decode_in_graph:
        out = decode(out, tuple(meta.input_size), meta.strides)  # the artefact decodes what the source did not
    return out


def _source_nms_detections(source: ExportSource, batch: np.ndarray) -> RawDetections:
    """Detections of an ONNX source that has NMS in its graph (its head output is not reachable)."""
    from ..runtimes.detector import open_backend

    with open_backend(source.onnx_path, backend="onnxruntime") as ref:
        return split_nms_outputs(*[_np(o) for o in ref.infer(batch)[:4]])[0]


def verify_artefact(path: Path, source: ExportSource, options: ExportOptions, meta: ModelMeta) -> VerifyReport:
    """Run the artefact at ``path`` and compare with the source; raises :class:`ExportError` when it differs."""
    from ..runtimes.detector import open_backend

    if options.verify_image is not None:
        image, label = read_image(options.verify_image), Path(options.verify_image).name
    else:
        image, label = synthetic_scene(), "a synthetic scene"
    batch, _ = preprocess_batch([image], meta.input_size, meta.preprocess, batch_size=meta.batch)
    with open_backend(path, device=options.device) as backend:
        outputs = backend.infer(batch)
    if source.model is None and source.meta.nms_in_graph:
        diff, ref_dets = None, _source_nms_detections(source, batch)
    else:
        ref = reference_outputs(source, batch, meta)
        floor = 0.0 if meta.precision == "fp32" else SCORE_FLOOR
        diff = None if meta.nms_in_graph else normalised_diff(_np(outputs[0])[:1], ref[:1], meta, floor)
        ref_meta = meta.with_(nms_in_graph=False, decode_in_graph=meta.decode_in_graph or meta.nms_in_graph)
        # An NMS graph is compared with the Python NMS at the graph's own thresholds and cap.
        conf, iou = (meta.extra.get("nms_conf", VERIFY_CONF), meta.extra.get("nms_iou", VERIFY_IOU)) \
            if meta.nms_in_graph else (VERIFY_CONF, VERIFY_IOU)
        ref_dets = _detections([ref], ref_meta, conf, iou, meta.max_det if meta.nms_in_graph else None)[0]
    art_dets = _detections(outputs, meta)[0]
    agreement = EMPTY + match_detections(_np(ref_dets.boxes), _np(ref_dets.class_ids), _np(art_dets.boxes),
                                         _np(art_dets.class_ids))
    precision = meta.precision
    report = VerifyReport(precision, diff, TOLERANCE[precision], agreement, MIN_AGREEMENT[precision], label)
    log.info("verify %s: %s", meta.format, report.summary())
    if not report.passed:
        raise ExportError(f"verification failed, nothing written: {report.summary()}; "
                          "use --no-verify to keep such an artefact anyway")
    return report
