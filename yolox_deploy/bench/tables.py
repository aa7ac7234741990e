"""Published figures, as data: the YOLOX paper's tables, the authors' model zoo, and T4 TensorRT latencies.

Sources
- ``PAPER``: Ge et al., "YOLOX: Exceeding YOLO Series in 2021", arXiv:2107.08430 (v2). Table 2 (roadmap of
  YOLOX-DarkNet53, COCO val), Table 3 (YOLOX vs YOLOv5, COCO val), Table 4 (Nano/Tiny vs light detectors,
  COCO val, 416x416), Table 6 (COCO test-dev; only its YOLOX rows are kept here). Latency: V100, FP16, batch
  1, 640x640, model only (no post-processing). FPS in Table 6 is 1000 / latency.
- ``MODEL_ZOO``: the authors' README for the released weights (retrained after the paper: their AP is higher
  than the paper's for Nano, S and M, 0.1-0.3 lower for L and X); same V100 latency protocol.
- ``T4_TENSORRT``: Ultralytics model comparison pages (docs.ultralytics.com/compare), "Speed T4 TensorRT10
  (ms)", FP16, batch 1, 640x640; no figure is given for Nano and Tiny.

GFLOPs in the paper are ``2 x MACs`` counted by thop in 2021 (BatchNorm as 2 ops per element); our
counter follows the current thop convention, which gives slightly higher values (see ``bench.flops``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..zoo import canonical_name


@dataclass(frozen=True)
class PublishedRow:
    """One row of a published table. ``None`` where the source prints no value ('-')."""

    model: str
    ap: float | None = None
    params_m: float | None = None
    gflops: float | None = None
    latency_ms: float | None = None
    fps: float | None = None
    size: int = 640
    variant: str | None = None  # our zoo name when the row is a YOLOX variant we can build
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PublishedTable:
    key: str
    title: str
    setting: str
    rows: tuple[PublishedRow, ...]

    def row(self, model: str) -> PublishedRow:
        for r in self.rows:
            if r.model == model or r.variant == model:
                return r
        raise KeyError(f"{model!r} is not in {self.key}")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "setting": self.setting, "rows": [r.to_dict() for r in self.rows]}


TABLE2_ROADMAP = PublishedTable(
    "table2", "Table 2: roadmap of YOLOX-DarkNet53 (COCO val AP)",
    "640x640, V100, FP16, batch 1, latency without post-processing",
    (
        PublishedRow("YOLOv3-ultralytics", 44.3, 63.00, 157.3, 10.5, 95.2),
        PublishedRow("YOLOv3 baseline", 38.5, 63.00, 157.3, 10.5, 95.2),
        PublishedRow("+decoupled head", 39.6, 63.86, 186.0, 11.6, 86.2),
        PublishedRow("+strong augmentation", 42.0, 63.86, 186.0, 11.6, 86.2),
        PublishedRow("+anchor-free", 42.9, 63.72, 185.3, 11.1, 90.1),
        PublishedRow("+multi positives", 45.0, 63.72, 185.3, 11.1, 90.1),
        PublishedRow("+SimOTA", 47.3, 63.72, 185.3, 11.1, 90.1, variant="yolox-darknet53"),
        PublishedRow("+NMS free (optional)", 46.5, 67.27, 205.1, 13.5, 74.1),
    ),
)

TABLE3_YOLOV5 = PublishedTable(
    "table3", "Table 3: YOLOX vs YOLOv5 (COCO val AP)",
    "640x640, V100, FP16, batch 1, latency without post-processing",
    (
        PublishedRow("YOLOv5-S", 36.7, 7.3, 17.1, 8.7),
        PublishedRow("YOLOX-S", 39.6, 9.0, 26.8, 9.8, variant="yolox-s"),
        PublishedRow("YOLOv5-M", 44.5, 21.4, 51.4, 11.1),
        PublishedRow("YOLOX-M", 46.4, 25.3, 73.8, 12.3, variant="yolox-m"),
        PublishedRow("YOLOv5-L", 48.2, 47.1, 115.6, 13.7),
        PublishedRow("YOLOX-L", 50.0, 54.2, 155.6, 14.5, variant="yolox-l"),
        PublishedRow("YOLOv5-X", 50.4, 87.8, 219.0, 16.0),
        PublishedRow("YOLOX-X", 51.2, 99.1, 281.9, 17.3, variant="yolox-x"),
    ),
)

TABLE4_LIGHT = PublishedTable(
    "table4", "Table 4: YOLOX-Tiny / Nano vs light detectors (COCO val AP)", "416x416",
    (
        PublishedRow("YOLOv4-Tiny", 21.7, 6.06, 6.96, size=416),
        PublishedRow("PPYOLO-Tiny", 22.7, 4.20, None, size=416),
        PublishedRow("YOLOX-Tiny", 32.8, 5.06, 6.45, size=416, variant="yolox-tiny"),
        PublishedRow("NanoDet", 23.5, 0.95, 1.20, size=416),
        PublishedRow("YOLOX-Nano", 25.3, 0.91, 1.08, size=416, variant="yolox-nano"),
    ),
)

TABLE6_SOTA = PublishedTable(
    "table6", "Table 6: speed and accuracy on COCO test-dev (YOLOX rows)", "640x640, V100 FPS, batch 1",
    (
        PublishedRow("YOLOX-DarkNet53", 47.4, fps=90.1, variant="yolox-darknet53", note="AP50 67.3, AP75 52.1"),
        PublishedRow("YOLOX-M", 46.4, fps=81.3, variant="yolox-m", note="AP50 65.4, AP75 50.6"),
        PublishedRow("YOLOX-L", 50.0, fps=68.9, variant="yolox-l", note="AP50 68.5, AP75 54.5"),
        PublishedRow("YOLOX-X", 51.2, fps=57.8, variant="yolox-x", note="AP50 69.6, AP75 55.7"),
    ),
)

MODEL_ZOO = PublishedTable(
    "model_zoo", "Authors' model zoo (released weights, COCO val2017 AP)",
    "V100, FP16, batch 1, latency without post-processing; Nano/Tiny at 416",
    (
        PublishedRow("YOLOX-Nano", 25.8, 0.91, 1.08, None, size=416, variant="yolox-nano"),
        PublishedRow("YOLOX-Tiny", 32.8, 5.06, 6.45, None, size=416, variant="yolox-tiny"),
        PublishedRow("YOLOX-S", 40.5, 9.0, 26.8, 9.8, variant="yolox-s"),
        PublishedRow("YOLOX-M", 46.9, 25.3, 73.8, 12.3, variant="yolox-m"),
        PublishedRow("YOLOX-L", 49.7, 54.2, 155.6, 14.5, variant="yolox-l"),
        PublishedRow("YOLOX-X", 51.1, 99.1, 281.9, 17.3, variant="yolox-x"),
        PublishedRow("YOLOX-Darknet53", 47.7, 63.7, 185.3, 11.1, variant="yolox-darknet53"),
    ),
)

T4_TENSORRT = PublishedTable(
    "t4_tensorrt", "T4 TensorRT latency (Ultralytics comparison pages)", "640x640, T4, TensorRT 10, FP16, batch 1",
    (
        PublishedRow("YOLOX-S", latency_ms=2.56, variant="yolox-s"),
        PublishedRow("YOLOX-M", latency_ms=5.43, variant="yolox-m"),
        PublishedRow("YOLOX-L", latency_ms=9.04, variant="yolox-l"),
        PublishedRow("YOLOX-X", latency_ms=16.1, variant="yolox-x"),
    ),
)

PAPER: dict[str, PublishedTable] = {t.key: t for t in (TABLE2_ROADMAP, TABLE3_YOLOV5, TABLE4_LIGHT, TABLE6_SOTA)}
ALL_TABLES: dict[str, PublishedTable] = {**PAPER, MODEL_ZOO.key: MODEL_ZOO, T4_TENSORRT.key: T4_TENSORRT}


@dataclass(frozen=True)
class Published:
    """What is published for one variant: released-weights AP / params / GFLOPs, V100 and T4 latencies."""

    variant: str
    display: str
    ap: float | None
    params_m: float | None
    gflops: float | None
    v100_ms: float | None
    t4_trt_ms: float | None
    size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def published(variant: str) -> Published:
    """The published reference for a zoo variant (any spelling ``canonical_name`` accepts)."""
    name = canonical_name(variant)
    zoo = MODEL_ZOO.row(name)
    try:
        t4 = T4_TENSORRT.row(name).latency_ms
    except KeyError:
        t4 = None
    return Published(name, zoo.model, zoo.ap, zoo.params_m, zoo.gflops, zoo.latency_ms, t4, zoo.size)
