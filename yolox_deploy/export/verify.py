"""Check a freshly written artefact against its source before it is reported as exported.

The artefact runs on a sample image through its own runtime backend (the same code ``Detector`` uses); the
reference is the fused torch model in FP32 on the CPU (or, for an ONNX source, that ONNX file in ONNX
Runtime), with the same decode setting. Two figures:

- max abs diff of the head output, in raw units: scores as they are, box centres divided by the anchor's
  stride and box sizes divided by ``max(size, stride)`` when the graph decodes (both are then what the raw
  offsets would differ by); for FP16/INT8 artefacts only over anchors scoring >= 0.01 in either output
  (none such: the head output is not compared, and the report says so).
  For an NMS graph it is the decoded head output the NMS tail reads, taken from a copy of the graph that
  also outputs it (:func:`head_before_nms`: ONNX Runtime for ONNX, OpenVINO on the CPU for an IR); a
  TensorRT engine keeps no such tensor;
- detections agreement at conf 0.25 / NMS 0.45 (an NMS graph: its own thresholds and cap): same-class
  matches with IoU >= 0.5 over the larger count. When neither has a detection on the image nothing is
  compared, and the report says so.

A report that compared nothing (an NMS engine without detections on the image) does not pass.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendUnavailable, ExportError, InputError
from ..io.images import read_image
from ..io.synthetic import synthetic_scene
from ..meta import ModelMeta
from ..ops.decode import cached_grid, decode, level_shapes
from ..ops.letterbox import preprocess_batch
from ..ops.match import EMPTY, Agreement, match_detections
from ..ops.postprocess import RawDetections, postprocess, split_nms_outputs
from ..utils.arrays import to_numpy
from .base import HEAD_OUTPUT, NMS_HEAD_KEY, ExportOptions, ExportSource

log = logging.getLogger(__name__)

# Max abs diff of the raw output, and minimum detections agreement, per precision. FP32 is compared on every
# anchor: between PyTorch's and ONNX Runtime's CPU kernels (AVX2 or AVX-512) YOLOX-Nano's background anchors'
# boxes differ by up to 1.2e-3 (101 COCO images at 416 on an AVX2 CPU; median 4.6e-4), those scoring >= 0.01
# by 4e-5, and an export's real defects by far more than 1e-2. Reduced precision only on anchors scoring
# >= SCORE_FLOOR in either output: background anchors' boxes are unconstrained (rounding YOLOX-Nano's weights
# to FP16 moves them by up to 0.9 raw units, in torch too, while its AP does not change), and INT8 on its
# detections alone (single anchors' scores move by up to ~0.6 while COCO AP moves by 0.002), its diff is
# reported, not checked.
TOLERANCE = {"fp32": 2e-3, "fp16": 0.25, "int8": math.inf}
SCORE_FLOOR = 0.01
MIN_AGREEMENT = {"fp32": 0.99, "fp16": 0.8, "int8": 0.5}
VERIFY_CONF, VERIFY_IOU = 0.25, 0.45


@dataclass(frozen=True)
class VerifyReport:
    """What verification compared. ``max_abs_diff`` is ``None`` when the head output was not reachable (an
    NMS engine) or, with ``head_reachable``, when no anchor scored ``SCORE_FLOOR`` (reduced precision);
    ``nms_in_graph``: the artefact's detections come from its own NMS at ``conf``."""

    precision: str
    max_abs_diff: float | None
    tolerance: float
    agreement: Agreement
    min_agreement: float
    image: str
    nms_in_graph: bool = False
    conf: float = VERIFY_CONF
    head_reachable: bool = True
    image_given: bool = False  # the image is the user's (--verify-image), not the synthetic scene

    @property
    def has_detections(self) -> bool:
        return max(self.agreement.n_a, self.agreement.n_b) > 0

    @property
    def checked(self) -> bool:
        """Whether anything was compared: the head output (when it has a tolerance), or detections."""
        return (self.max_abs_diff is not None and math.isfinite(self.tolerance)) or self.has_detections

    @property
    def passed(self) -> bool:
        diff_ok = self.max_abs_diff is None or self.max_abs_diff <= self.tolerance
        return self.checked and diff_ok and self.agreement.agreement >= self.min_agreement

    def summary(self) -> str:
        limit = "not checked" if math.isinf(self.tolerance) else f"tolerance {self.tolerance:g}"
        of = " of the head before NMS" if self.nms_in_graph else ""
        if self.max_abs_diff is None and not self.head_reachable:
            diff = "head output not reachable (NMS in graph), not compared"
        elif self.max_abs_diff is None:
            diff = f"head output{of} not compared (no anchor scores >= {SCORE_FLOOR:g} in either output)"
        else:
            diff = f"max abs diff{of} {self.max_abs_diff:.2e} ({limit})"
        a = self.agreement
        if self.has_detections:
            dets = f"detections {a.matched}/{max(a.n_a, a.n_b)} agree (mean IoU {a.mean_iou:.3f}) on {self.image}"
        elif self.nms_in_graph:
            dets = (f"NMS output not compared: no detections above conf {self.conf:g} on {self.image} "
                    "(a --verify-image with objects checks it)")
        elif self.image_given:  # a photo with objects where neither side finds one: the input may be wrong
            dets = (f"no detections above conf {self.conf:g} to compare on {self.image} (if it shows objects, "
                    "check the input contract: --legacy is for checkpoints before YOLOX 0.1.1 only)")
        else:
            dets = (f"no detections above conf {self.conf:g} to compare on {self.image} "
                    "(--verify-image IMAGE checks them)")
        return f"{diff}, {dets}"


def normalised_diff(out: np.ndarray, ref: np.ndarray, meta: ModelMeta, score_floor: float = 0.0) -> float | None:
    """Max abs diff of two head outputs ``[B, A, 5 + C]`` in raw units (see the module docstring).

    With ``score_floor > 0`` only anchors whose score (objectness x best class) reaches it in either output
    count; ``None`` when there are none.
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
    return float(diff.max()) if diff.size else None


def _detections(outputs: list[Any], meta: ModelMeta, conf: float = VERIFY_CONF, iou: float = VERIFY_IOU,
                max_det: int | None = None) -> list[RawDetections]:
    if meta.nms_in_graph:
        return split_nms_outputs(*[_np(o) for o in outputs[:4]])
    hw = None if meta.decode_in_graph else meta.input_size
    return postprocess(_np(outputs[0]), conf, iou, max_det=max_det, input_hw=hw, strides=meta.strides)


def _np(x: Any) -> np.ndarray:
    """An output as float32 numpy, to compare."""
    return to_numpy(x).astype(np.float32, copy=False)


def reference_outputs(source: ExportSource, batch: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """The source's head output for ``batch`` (decoded iff the artefact decodes), FP32 on the CPU."""
    if source.model is not None:
        model = (source.reference if source.reference is not None else source.model).cpu().float().eval()
        return model.head_output(batch, decode=meta.decode_in_graph or meta.nms_in_graph)
    from ..runtimes.detector import open_backend

    # at the artefact's size: a dynamic-size source without metadata has none of its own
    with open_backend(source.onnx_path, backend="onnxruntime", img_size=tuple(meta.input_size)) as ref:
        out = _np(ref.infer(batch)[0])
    if (meta.decode_in_graph or meta.nms_in_graph) and not source.meta.decode_in_graph:
        out = decode(out, tuple(meta.input_size), meta.strides)  # the artefact decodes what the source did not
    return out


def _source_nms_detections(source: ExportSource, batch: np.ndarray) -> RawDetections:
    """Detections of an ONNX source that has NMS in its graph."""
    from ..runtimes.detector import open_backend

    with open_backend(source.onnx_path, backend="onnxruntime") as ref:
        return split_nms_outputs(*[_np(o) for o in ref.infer(batch)[:4]])[0]


# Formats whose NMS graphs :func:`head_before_nms` can read the head of (a TensorRT engine keeps no such tensor).
HEAD_READABLE_FORMATS = ("onnx", "openvino")


def check_source_runnable(source: ExportSource) -> None:
    """Refuse, before the build, the verification of an export from an ONNX file where ONNX Runtime, which
    runs the source for the reference outputs, is not installed."""
    if source.model is None:
        from ..runtimes import registered_backends

        usable, reason = registered_backends()["onnxruntime"].info.importable()
        if not usable:
            raise BackendUnavailable(f"{reason}: verification runs the ONNX source {source.onnx_path.name} with it; "
                                     "or export with --no-verify")


def check_verifiable(format_name: str, options: ExportOptions) -> None:
    """Refuse, before the (slow) build, an export whose verification would compare nothing: an NMS graph whose
    head cannot be read, verified on the synthetic scene (where nothing is detected)."""
    if options.nms and options.verify_image is None and format_name not in HEAD_READABLE_FORMATS:
        raise InputError(f"a {format_name} artefact with NMS inside is verified on its detections only: pass "
                         "--verify-image IMAGE (a photo with objects), or --no-verify to skip verification")


def head_before_nms(path: Path, meta: ModelMeta, batch: np.ndarray) -> np.ndarray | None:
    """The decoded head output ``[B, A, 5 + C]`` the NMS tail of the graph at ``path`` reads, from a copy of
    the graph that also outputs it: ONNX Runtime for an ``.onnx`` file, OpenVINO on the CPU (in f32) for an
    IR. ``None`` where it cannot be reached: a TensorRT engine, or a graph without that tensor."""
    name = meta.extra.get(NMS_HEAD_KEY, HEAD_OUTPUT)
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _onnx_tensor(path, name, batch)
    if meta.format == "openvino":
        return _openvino_tensor(path, name, batch)
    return None


def _onnx_tensor(path: Path, name: str, batch: np.ndarray) -> np.ndarray | None:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    if name not in {t for node in model.graph.node for t in node.output}:
        return None
    if name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {session.get_inputs()[0].name: batch})[0]


def _openvino_tensor(path: Path, name: str, batch: np.ndarray) -> np.ndarray | None:
    from ..runtimes.openvino import _core, find_ir

    core = _core()  # the process's one Core (plugins load once)
    model = core.read_model(str(find_ir(path)))
    try:
        model.add_outputs(name)
    except RuntimeError:  # no tensor of that name
        return None
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(batch)[compiled.output(name)]


def _thresholds(meta: ModelMeta) -> tuple[float, float]:
    """Score and IoU thresholds detections are compared at: an NMS graph's own, else VERIFY_CONF / VERIFY_IOU."""
    if not meta.nms_in_graph:
        return VERIFY_CONF, VERIFY_IOU
    return meta.extra.get("nms_conf", VERIFY_CONF), meta.extra.get("nms_iou", VERIFY_IOU)


def _nms_graph_references(path: Path, source: ExportSource, meta: ModelMeta, batch: np.ndarray,
                          floor: float) -> tuple[float | None, bool, RawDetections]:
    """For an NMS graph: the max abs diff of the head before its NMS (``None`` when not reachable on either
    side, or no anchor reaches ``floor``), whether it was reachable, and the reference detections (the Python
    NMS at the graph's thresholds and cap, or for an ONNX source with NMS in its graph, that graph's)."""
    head = head_before_nms(path, meta, batch)
    if source.model is not None:
        ref = reference_outputs(source, batch, meta)
        conf, iou = _thresholds(meta)
        ref_meta = meta.with_(nms_in_graph=False, decode_in_graph=True)
        ref_dets = _detections([ref], ref_meta, conf, iou, meta.max_det)[0]
    else:
        ref = head_before_nms(source.onnx_path, source.meta, batch) if source.meta.nms_in_graph else None
        ref_dets = _source_nms_detections(source, batch)
    reachable = head is not None and ref is not None
    diff = normalised_diff(_np(head)[:1], _np(ref)[:1], meta, floor) if reachable else None
    return diff, reachable, ref_dets


# Calibration images tried, in order, for one to verify an INT8 artefact on (see calibration_verification_image).
VERIFY_PICK = 8


class NoVerificationImage(InputError):
    """None of the calibration images shows anything the model detects: an INT8 export has nothing to be
    verified on (yolox-bench words the way out in its own options)."""


def _reference_detections(source: ExportSource, meta: ModelMeta, batch: np.ndarray) -> RawDetections:
    """The source's own detections on ``batch`` at the verification thresholds (its graph's, for an ONNX source
    with NMS inside)."""
    if source.model is None and source.meta.nms_in_graph:
        return _source_nms_detections(source, batch)
    ref_meta = meta.with_(decode_in_graph=True, nms_in_graph=False)
    return _detections([reference_outputs(source, batch, ref_meta)], ref_meta)[0]


def calibration_verification_image(source: ExportSource, options: ExportOptions) -> Path:
    """The image an INT8 export without ``--verify-image`` is verified on: the first of the first
    ``VERIFY_PICK`` calibration images on which the source detects something. INT8 is checked on its
    detections alone, and the synthetic scene shows nothing a real model detects. Raises :class:`InputError`
    (before the build) when none of them does."""
    from .calibration import CalibrationData

    meta = source.meta.with_(input_size=tuple(options.img_size))
    candidates = CalibrationData(options.calib_images, meta).candidates  # refuses a missing or empty folder
    fixed = source.meta.batch if source.model is None else None
    tried = 0
    for path in candidates:
        try:
            image = read_image(path)
        except InputError:
            continue  # calibration skips it too
        batch, _ = preprocess_batch([image], meta.input_size, meta.preprocess, batch_size=fixed)
        if len(_reference_detections(source, meta, batch).scores):
            log.info("verifying on the calibration image %s (INT8 is checked on its detections)", path.name)
            return path
        tried += 1
        if tried == VERIFY_PICK:
            break
    raise NoVerificationImage(f"the model detects nothing at conf {VERIFY_CONF:g} on the first {tried} readable "
                     f"calibration images of {options.calib_images}, and INT8 is verified on detections: pass "
                     "--verify-image IMAGE (a photo with objects), or --no-verify; images without objects "
                     "also calibrate poorly")


def verify_artefact(path: Path, source: ExportSource, options: ExportOptions, meta: ModelMeta) -> VerifyReport:
    """Run the artefact at ``path`` and compare with the source; raises :class:`ExportError` when it differs
    or when nothing could be compared."""
    from ..runtimes.detector import open_backend

    if options.verify_image is not None:
        image, label = read_image(options.verify_image), Path(options.verify_image).name
    else:
        image, label = synthetic_scene(), "a synthetic scene"
    batch, _ = preprocess_batch([image], meta.input_size, meta.preprocess, batch_size=meta.batch)
    with open_backend(path, device=options.device) as backend:
        outputs = backend.infer(batch)
    floor = 0.0 if meta.precision == "fp32" else SCORE_FLOOR
    reachable = True
    if meta.nms_in_graph:
        diff, reachable, ref_dets = _nms_graph_references(path, source, meta, batch, floor)
    else:
        ref = reference_outputs(source, batch, meta)
        diff = normalised_diff(_np(outputs[0])[:1], ref[:1], meta, floor)
        ref_dets = _detections([ref], meta, VERIFY_CONF, VERIFY_IOU)[0]
    art_dets = _detections(outputs, meta)[0]
    agreement = EMPTY + match_detections(_np(ref_dets.boxes), _np(ref_dets.class_ids), _np(art_dets.boxes),
                                         _np(art_dets.class_ids))
    precision = meta.precision
    conf = _thresholds(meta)[0]
    report = VerifyReport(precision, diff, TOLERANCE[precision], agreement, MIN_AGREEMENT[precision], label,
                          nms_in_graph=meta.nms_in_graph, conf=conf, head_reachable=reachable,
                          image_given=options.verify_image is not None)
    log.info("verify %s: %s", meta.format, report.summary())
    if not report.checked:
        raise ExportError(f"verification compared nothing, nothing written: {report.summary()}; give "
                          "--verify-image IMAGE (a photo with objects), or use --no-verify to keep it unverified")
    if not report.passed:
        raise ExportError(f"verification failed, nothing written: {report.summary()}; "
                          "use --no-verify to keep such an artefact anyway")
    return report
