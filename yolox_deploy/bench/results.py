"""The benchmark's results as data: one :class:`BenchRow` per configuration, the demo head-to-head, the host.

Everything round-trips through plain dicts (``to_dict`` / ``from_dict``), which is what ``results.json``
holds; ``BenchRow.flat()`` is the CSV line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .host import HostInfo
from .latency import PipelineTimes
from .stats import LatencyStats
from .tables import Published

STATUS_OK = "ok"
NOT_AVAILABLE = "not available"
FAILED = "failed"
# what results.json's numbers are in (the CSV names its units in its columns: *_ms, *_pct, params_m)
JSON_UNITS = {
    "rows[].ap, rows[].ap50": "COCO AP as a fraction (0.3052), as pycocotools reports it",
    "published.*.ap, rows[].published.ap": "percent (25.8), as the paper prints it",
    "*_ms, mean, std, min, p50, p90, p99, max": "milliseconds per call of `batch` images",
    "fps": "images per second", "rows[].params": "parameters (a count)",
    "gflops": "GFLOPs per image at the row's input size",
}


def _pct(fraction: float | None) -> float | None:
    """A COCO AP fraction as a percentage (the paper's unit), for the CSV."""
    return None if fraction is None else round(100.0 * fraction, 4)


@dataclass
class BenchRow:
    """One (model, backend, precision, batch, input size) configuration and what was measured.

    ``model_ms``: ``backend.infer`` on a preprocessed batch (the paper's "without post-processing");
    ``pipeline``: the full Detector on raw BGR images (letterbox, inference, decode/NMS, scale back), with
    its stage split. Latencies are per call of ``batch`` images; FPS is images per second.
    ``status``: ``"ok"``, ``"not available: <reason>"`` or ``"failed: <reason>"``.
    """

    model: str
    backend: str
    precision: str
    batch: int
    img_size: tuple[int, int]
    params: int
    gflops: float
    device: str = "cpu"
    weights: str = ""
    status: str = STATUS_OK
    model_ms: LatencyStats | None = None
    pipeline: PipelineTimes | None = None
    ap: float | None = None
    ap50: float | None = None
    published: Published | None = None
    artefact: str | None = None
    clock: str | None = None
    input_on_device: bool | None = None
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def input(self) -> str:
        return f"{self.img_size[0]}x{self.img_size[1]}"

    @property
    def backend_label(self) -> str:
        """The backend name, with the runtime options it was given: ``openvino (hint=throughput)``."""
        if not self.options:
            return self.backend
        return f"{self.backend} ({', '.join(f'{k}={v}' for k, v in sorted(self.options.items()))})"

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def model_fps(self) -> float | None:
        return self.model_ms.fps(self.batch) if self.model_ms else None

    @property
    def full_fps(self) -> float | None:
        return self.pipeline.total.fps(self.batch) if self.pipeline else None

    def ratio(self, reference_ms: float | None) -> float | None:
        """Measured model-alone mean latency / a published batch-1 latency.

        Only for batch-1 rows at the published input size (``None`` otherwise).
        """
        if self.model_ms is None or reference_ms is None or self.batch != 1:
            return None
        if self.published is not None and tuple(self.img_size) != (self.published.size, self.published.size):
            return None
        return self.model_ms.mean / reference_ms

    @property
    def ratio_v100(self) -> float | None:
        return self.ratio(self.published.v100_ms if self.published else None)

    @property
    def ratio_t4(self) -> float | None:
        return self.ratio(self.published.t4_trt_ms if self.published else None)

    # --- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "backend": self.backend, "precision": self.precision, "batch": self.batch,
            "img_size": list(self.img_size), "params": self.params, "gflops": self.gflops, "device": self.device,
            "weights": self.weights, "status": self.status,
            "model_ms": self.model_ms.to_dict() if self.model_ms else None,
            "pipeline": self.pipeline.to_dict() if self.pipeline else None,
            "ap": self.ap, "ap50": self.ap50, "published": self.published.to_dict() if self.published else None,
            "artefact": self.artefact, "clock": self.clock, "input_on_device": self.input_on_device,
            "notes": list(self.notes), "options": dict(self.options),
            "derived": {"model_fps": self.model_fps, "full_fps": self.full_fps, "ratio_v100": self.ratio_v100,
                        "ratio_t4_trt": self.ratio_t4},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchRow:
        return cls(
            d["model"], d["backend"], d["precision"], int(d["batch"]), tuple(d["img_size"]), int(d["params"]),
            float(d["gflops"]), d.get("device", "cpu"), d.get("weights", ""), d.get("status", STATUS_OK),
            LatencyStats.from_dict(d["model_ms"]) if d.get("model_ms") else None,
            PipelineTimes.from_dict(d["pipeline"]) if d.get("pipeline") else None,
            d.get("ap"), d.get("ap50"), Published(**d["published"]) if d.get("published") else None,
            d.get("artefact"), d.get("clock"), d.get("input_on_device"), list(d.get("notes", [])),
            dict(d.get("options") or {}),
        )

    CSV_FIELDS = (
        "model", "backend", "device", "precision", "batch", "input", "params_m", "gflops", "weights", "status",
        "model_mean_ms", "model_p50_ms", "model_p90_ms", "model_p99_ms", "model_fps",
        "full_mean_ms", "full_p50_ms", "full_p90_ms", "full_p99_ms", "full_fps",
        "pre_ms", "infer_ms", "post_ms", "iters", "full_iters", "ap_pct", "ap50_pct",
        "published_ap_pct", "published_params_m", "published_gflops", "published_v100_ms", "ratio_v100", "t4_trt_ms",
        "ratio_t4_trt",
        "clock", "options", "artefact", "notes",
    )

    def flat(self) -> dict[str, Any]:
        """One CSV line (keys: :attr:`CSV_FIELDS`); missing values are ``None``."""
        m, p, pub = self.model_ms, self.pipeline, self.published
        return {
            "model": self.model, "backend": self.backend, "device": self.device, "precision": self.precision,
            "batch": self.batch, "input": self.input, "params_m": round(self.params_m, 6),
            "gflops": round(self.gflops, 4), "weights": self.weights, "status": self.status,
            "model_mean_ms": m.mean if m else None, "model_p50_ms": m.p50 if m else None,
            "model_p90_ms": m.p90 if m else None, "model_p99_ms": m.p99 if m else None,
            "model_fps": self.model_fps,
            "full_mean_ms": p.total.mean if p else None, "full_p50_ms": p.total.p50 if p else None,
            "full_p90_ms": p.total.p90 if p else None, "full_p99_ms": p.total.p99 if p else None,
            "full_fps": self.full_fps,
            "pre_ms": p.pre.mean if p else None, "infer_ms": p.infer.mean if p else None,
            "post_ms": p.post.mean if p else None, "iters": m.n if m else None,
            "full_iters": p.total.n if p else None,
            "ap_pct": _pct(self.ap), "ap50_pct": _pct(self.ap50),
            "published_ap_pct": pub.ap if pub else None, "published_params_m": pub.params_m if pub else None,
            "published_gflops": pub.gflops if pub else None, "published_v100_ms": pub.v100_ms if pub else None,
            "ratio_v100": self.ratio_v100, "t4_trt_ms": pub.t4_trt_ms if pub else None,
            "ratio_t4_trt": self.ratio_t4, "clock": self.clock,
            "options": ";".join(f"{k}={v}" for k, v in sorted(self.options.items())), "artefact": self.artefact,
            "notes": "; ".join(self.notes),
        }


@dataclass
class DemoComparison:
    """Our fastest CPU Detector vs the authors' ONNX Runtime demo pipeline, same images, same run.

    Both ran interleaved in blocks, one image per call; ``agreement`` is the share of the demo's
    detections (score > 0.1, class-agnostic NMS 0.45) that our Detector, set to the same thresholds,
    reproduces (same class, IoU >= 0.5).
    """

    model: str
    img_size: tuple[int, int]
    ours_backend: str
    ours_precision: str
    demo_onnx: str
    ours: PipelineTimes
    demo: PipelineTimes
    images: int
    agreement: float | None = None
    target: float = 1.5
    notes: list[str] = field(default_factory=list)
    ours_ap: float | None = None

    @property
    def ours_fps(self) -> float:
        return self.ours.total.fps(1)

    @property
    def demo_fps(self) -> float:
        return self.demo.total.fps(1)

    @property
    def speedup(self) -> float:
        return self.ours_fps / self.demo_fps

    @property
    def speedup_shown(self) -> float:
        """The speedup rounded down to hundredths, as printed: 1.497 is 1.49x, not a 1.5x target met."""
        return math.floor(self.speedup * 100) / 100

    @property
    def met(self) -> bool:
        return self.speedup >= self.target

    def summary(self) -> str:
        h, w = self.img_size
        return (f"{self.model} {h}x{w} full pipeline, one image per call: {self.ours_backend} "
                f"{self.ours_precision.upper()} Detector "
                f"{self.ours_fps:.1f} FPS vs the authors' ONNX Runtime demo pipeline {self.demo_fps:.1f} FPS -> "
                f"{self.speedup_shown:.2f}x (target >= {self.target:g}x: {'met' if self.met else 'NOT met'})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "img_size": list(self.img_size), "ours_backend": self.ours_backend,
            "ours_precision": self.ours_precision, "demo_onnx": self.demo_onnx, "ours": self.ours.to_dict(),
            "demo": self.demo.to_dict(), "images": self.images, "agreement": self.agreement, "target": self.target,
            "notes": list(self.notes), "ours_ap": self.ours_ap,
            "derived": {"ours_fps": self.ours_fps, "demo_fps": self.demo_fps, "speedup": self.speedup, "met": self.met},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DemoComparison:
        return cls(d["model"], tuple(d["img_size"]), d["ours_backend"], d["ours_precision"], d["demo_onnx"],
                   PipelineTimes.from_dict(d["ours"]), PipelineTimes.from_dict(d["demo"]), int(d["images"]),
                   d.get("agreement"), float(d.get("target", 1.5)), list(d.get("notes", [])), d.get("ours_ap"))


@dataclass
class BenchReport:
    """A whole run: settings, host, rows, the demo comparisons (when they ran) and notes.

    ``demos``: our fastest CPU Detector against the authors' demo pipeline, then, when that one is not FP32,
    our fastest FP32 Detector against it too.
    """

    settings: dict[str, Any]
    host: HostInfo
    rows: list[BenchRow]
    demos: list[DemoComparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0

    @property
    def demo(self) -> DemoComparison | None:
        """The headline comparison (our fastest CPU Detector), or None."""
        return self.demos[0] if self.demos else None

    def to_dict(self) -> dict[str, Any]:
        from .tables import ALL_TABLES

        return {
            "schema": 1, "units": JSON_UNITS, "started": self.started, "seconds": self.seconds,
            "settings": self.settings,
            "host": self.host.to_dict(), "host_line": self.host.summary(), "rows": [r.to_dict() for r in self.rows],
            "demo_comparisons": [d.to_dict() for d in self.demos], "notes": list(self.notes),
            "published": {k: t.to_dict() for k, t in ALL_TABLES.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        return cls(dict(d["settings"]), HostInfo.from_dict(d["host"]), [BenchRow.from_dict(r) for r in d["rows"]],
                   [DemoComparison.from_dict(x) for x in d.get("demo_comparisons", [])],
                   list(d.get("notes", [])), d.get("started", ""), float(d.get("seconds", 0.0)))
