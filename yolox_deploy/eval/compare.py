"""The same images through several artefacts: output differences, detection agreement and latency.

The first artefact is the reference. Raw outputs are compared in raw units (graphs that decode are encoded
back with :func:`~yolox_deploy.ops.decode.encode`), so a ``.pth``, a decoding ONNX and a raw OpenVINO IR
compare on equal terms; a dynamic-size reference also runs at the size of an artefact exported for another
one; artefacts with NMS in the graph, or of another size than a fixed-size reference, have no raw comparison.
Thresholds and the cap of detections per image not given are those of the first artefact with NMS in its graph,
for every artefact (a graph's NMS cannot take others, so the rest run its settings rather than the library's
defaults and disagree by them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bench.latency import Clock, clock_for, timed_call
from ..errors import InputError
from ..ops.decode import encode
from ..ops.match import EMPTY, Agreement, match_detections
from ..runtimes.detector import Detector
from ..utils.text import listed

log = logging.getLogger(__name__)


@dataclass
class CompareRow:
    """One artefact against the reference (the first artefact)."""

    artefact: str
    backend: str
    precision: str
    input_size: tuple[int, int]
    max_abs_diff: float | None
    agreement: Agreement
    pre_ms: float
    infer_ms: float
    post_ms: float
    conf: float | None = None  # the thresholds in effect (an artefact with NMS inside keeps its own)
    nms: float | None = None

    @property
    def total_ms(self) -> float:
        return self.pre_ms + self.infer_ms + self.post_ms

    @property
    def matched_iou(self) -> float | None:
        """Mean IoU of the matched detections; None when nothing matched (no figure to give)."""
        return self.agreement.mean_iou if self.agreement.matched else None

    def to_dict(self) -> dict[str, Any]:
        return {"artefact": self.artefact, "backend": self.backend, "precision": self.precision,
                "input_size": list(self.input_size), "max_abs_diff": self.max_abs_diff,
                "matched_iou": self.matched_iou,
                "agreement": self.agreement.agreement,
                "detections": self.agreement.n_b, "pre_ms": self.pre_ms, "infer_ms": self.infer_ms,
                "post_ms": self.post_ms, "total_ms": self.total_ms, "conf": self.conf, "nms": self.nms}


def _raw(det: Detector, outputs: list[Any]) -> np.ndarray | None:
    """The head output in raw units, or None for NMS graphs."""
    if det.meta.nms_in_graph:
        return None
    out = outputs[0]
    out = out if isinstance(out, np.ndarray) else out.detach().cpu().float().numpy()
    out = out[:1].astype(np.float32)
    return encode(out, det.meta.input_size, det.meta.strides) if det.meta.decode_in_graph else out


def compare_artefacts(artefacts: Sequence[Any], images: Sequence[np.ndarray], *, warmup: int = 2,
                      progress: bool = False, artefact_options: Sequence[Mapping[str, Any]] | None = None,
                      **detector_kwargs: Any) -> list[CompareRow]:
    """Run ``images`` (BGR uint8) through each artefact, one image per call; the first is the reference.

    ``detector_kwargs`` open every artefact; ``artefact_options`` (one mapping per artefact) add to them what
    only that artefact needs (``decode_in_graph=True`` for a decoding graph without metadata). Every artefact
    is opened before any image runs, so one that cannot be opened (or options it refuses) fail before the
    work; artefacts whose labels differ from the reference's are refused, since their detections cannot be
    matched class by class. A dynamic-size reference (a ``.pth``) also runs, untimed, at the size of each
    artefact exported for another one, which is compared with that run.
    """
    if not images:
        raise InputError("no images to compare on")
    if artefact_options is None:
        artefact_options = [{}] * len(artefacts)
    if len(artefact_options) != len(artefacts):
        raise InputError(f"{len(artefact_options)} sets of artefact options for {len(artefacts)} artefacts; give "
                         "one per artefact")
    kwargs = [{**detector_kwargs, **own} for own in artefact_options]
    with contextlib.ExitStack() as stack:
        detectors = [stack.enter_context(Detector(path, **kw)) for path, kw in zip(artefacts, kwargs)]
        labels = detectors[0].meta.class_names
        for path, det in zip(artefacts[1:], detectors[1:]):
            if det.meta.class_names != labels:
                raise InputError(f"{path} has {det.meta.num_classes} classes ({listed(det.meta.class_names)}), "
                                 f"the reference {artefacts[0]} {len(labels)} ({listed(labels)}): their detections "
                                 "cannot be compared; compare artefacts of one model")
        _share_graph_thresholds(artefacts, detectors, detector_kwargs)
        from tqdm import tqdm

        # one step per image per artefact; closed however the run ends, so a message that follows starts on a
        # line of its own
        bar = stack.enter_context(tqdm(total=len(artefacts) * len(images), desc="compare", unit="run", leave=False,
                                       disable=not progress))
        ref_size = tuple(detectors[0].meta.input_size)
        row, results = _run(artefacts[0], detectors[0], images, warmup, None, bar)
        rows, references = [row], {ref_size: results}
        for path, det in zip(artefacts[1:], detectors[1:]):
            size = tuple(det.meta.input_size)
            if size not in references and detectors[0].meta.dynamic_hw:
                with _at_size(artefacts[0], kwargs[0], detectors[0], size) as at_size:
                    clock = clock_for(at_size.backend.output_device)
                    references[size] = [_result(at_size, image, clock)[:2] for image in images]
            rows.append(_run(path, det, images, warmup, references.get(size, references[ref_size]), bar)[0])
    return rows


def _at_size(path: Any, kwargs: Mapping[str, Any], reference: Detector, size: tuple[int, int]) -> Detector:
    """The dynamic-size reference opened again at ``size``, with the thresholds and cap it runs (those shared
    from an NMS graph included), so that it detects there as it does at its own size."""
    return Detector(path, **{**kwargs, "img_size": size, "conf": reference.conf, "nms": reference.nms,
                             "max_det": reference.max_det})


def _share_graph_thresholds(artefacts: Sequence[Any], detectors: Sequence[Detector],
                            given: Mapping[str, Any]) -> None:
    """Give every artefact the score and IoU thresholds and the cap of detections per image of the first one
    with NMS in its graph, where the caller gave none (``conf`` / ``nms`` / ``max_det`` in ``given``; a
    ``max_det`` of None is given: no cap)."""
    graphs = [(path, det) for path, det in zip(artefacts, detectors) if det.meta.nms_in_graph]
    if not graphs:
        return
    path, first = graphs[0]
    shared = {name: getattr(first, name) for name in ("conf", "nms") if given.get(name) is None}
    if "max_det" not in given:  # the graph keeps at most its own cap (100) where the others keep 300
        shared["max_det"] = first.max_det
    if not shared:
        return
    others = [p for p, det in graphs[1:] if any(getattr(det, n) != v for n, v in shared.items())]
    if others:
        log.warning("%s run NMS in their graphs with other thresholds or caps than %s: their detections differ by "
                    "them too", listed([str(p) for p in others]), path)
    for det in detectors:
        if not det.meta.nms_in_graph:
            for name, value in shared.items():
                setattr(det, name, value)


def _result(det: Detector, image: np.ndarray, clock: Clock) -> tuple[np.ndarray | None, Any, tuple[float, ...]]:
    """One image through ``det``: its raw output (None for NMS graphs), its detections, and the ms of the
    three stages (timed by ``clock``: on a GPU, the infer stage ends when the device has finished)."""
    [dets], outputs, ms = timed_call(det, [image], clock)
    return _raw(det, outputs), dets, ms[1:]


def _run(path: Any, det: Detector, images: Sequence[np.ndarray], warmup: int,
         reference: list[tuple[np.ndarray | None, Any]] | None, bar: Any,
         ) -> tuple[CompareRow, list[tuple[np.ndarray | None, Any]]]:
    """One artefact's row against ``reference`` (the reference's own row when None), and its results."""
    for image in images[:warmup]:
        det.run_batch([image])
    diff: float | None = None
    comparable = True
    agreement = EMPTY
    times = np.zeros(3)
    results = []
    clock = clock_for(det.backend.output_device)
    for i, image in enumerate(images):
        raw, dets, ms = _result(det, image, clock)
        times += ms
        results.append((raw, dets))
        ref_raw, ref_dets = reference[i] if reference is not None else (raw, dets)
        if raw is None or ref_raw is None or raw.shape != ref_raw.shape:
            comparable = False
        else:
            d = float(np.abs(raw - ref_raw).max())
            diff = d if diff is None else max(diff, d)
        agreement = agreement + match_detections(ref_dets.xyxy, ref_dets.class_ids, dets.xyxy, dets.class_ids)
        bar.update(1)
    row = CompareRow(str(path), det.backend.info.name, det.meta.precision, tuple(det.meta.input_size),
                     diff if comparable else None, agreement, *(times / len(images)), conf=det.conf, nms=det.nms)
    return row, results
