"""The YOLOX variants: architecture settings, default test size and the authors' published figures.

Published figures are the authors' (paper "YOLOX: Exceeding YOLO Series in 2021", Tables 3-4, and the
release page): COCO val2017 AP, parameters (M), GFLOPs at the test size, V100 FP16 batch-1 latency (ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError

RELEASE_URL = "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0"


@dataclass(frozen=True)
class ModelSpec:
    """One YOLOX variant.

    ``backbone`` is ``"cspdarknet"`` (PAFPN neck) or ``"darknet53"`` (YOLOv3-SPP backbone, YOLOFPN neck).
    ``test_size`` is ``(height, width)``. ``train_size`` is the size the authors' recipe trains at (its Mosaic
    canvases and letterbox), ``random_size`` its multi-scale range of ``k`` (sides ``32 k``) where the
    experiment file sets one: YOLOX-Tiny's file sets ``input_scale = (416, 416)``, a name the trainer never reads,
    so Tiny trains at the base 640 (as its released weights were: the 0.1.x file set no size) with sides
    320-640, and is evaluated at 416.
    """

    name: str
    depth: float
    width: float
    depthwise: bool = False
    act: str = "silu"
    backbone: str = "cspdarknet"
    test_size: tuple[int, int] = (640, 640)
    train_size: tuple[int, int] = (640, 640)
    random_size: tuple[int, int] | None = None
    # training recipe (paper, section 2.2 and the authors' experiment files)
    mosaic_scale: tuple[float, float] = (0.1, 2.0)
    mixup: bool = True
    mosaic_prob: float = 1.0
    # published figures
    params: int = 0
    ap: float | None = None
    gflops: float | None = None
    v100_ms: float | None = None
    weights_file: str = ""

    @property
    def url(self) -> str:
        return f"{RELEASE_URL}/{self.weights_file}"


_SMALL = dict(mosaic_scale=(0.5, 1.5), mixup=False, random_size=(10, 20), test_size=(416, 416))

VARIANTS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("yolox-nano", 0.33, 0.25, depthwise=True, train_size=(416, 416), mosaic_prob=0.5,
                  params=912_159, ap=25.8, gflops=1.08, weights_file="yolox_nano.pth", **_SMALL),
        ModelSpec("yolox-tiny", 0.33, 0.375, params=5_055_855, ap=32.8,
                  gflops=6.45, weights_file="yolox_tiny.pth", **_SMALL),
        ModelSpec("yolox-s", 0.33, 0.50, params=8_968_255, ap=40.5, gflops=26.8, v100_ms=9.8,
                  weights_file="yolox_s.pth"),
        ModelSpec("yolox-m", 0.67, 0.75, params=25_326_495, ap=46.9, gflops=73.8, v100_ms=12.3,
                  weights_file="yolox_m.pth"),
        ModelSpec("yolox-l", 1.0, 1.0, params=54_208_895, ap=49.7, gflops=155.6, v100_ms=14.5,
                  weights_file="yolox_l.pth"),
        ModelSpec("yolox-x", 1.33, 1.25, params=99_071_455, ap=51.1, gflops=281.9, v100_ms=17.3,
                  weights_file="yolox_x.pth"),
        ModelSpec("yolox-darknet53", 1.0, 1.0, act="lrelu", backbone="darknet53", params=63_724_767,
                  ap=47.7, gflops=185.3, v100_ms=11.1, weights_file="yolox_darknet.pth"),
    )
}


def canonical_name(name: str) -> str:
    """``"s"``, ``"yolox_s"``, ``"YOLOX-S"`` -> ``"yolox-s"``; raises :class:`InputError` if unknown."""
    if not isinstance(name, str):
        raise InputError(f"a model is named by a string ({', '.join(VARIANTS)}), not {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key in ("darknet", "darknet53", "yolov3", "yolox-darknet"):
        key = "yolox-darknet53"
    if not key.startswith("yolox-"):
        key = f"yolox-{key}"
    if key not in VARIANTS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(VARIANTS)}")
    return key


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a variant, by any spelling accepted by :func:`canonical_name`."""
    return VARIANTS[canonical_name(name)]


def variant_by_params(count: int, tolerance: float = 0.1) -> str | None:
    """The variant whose parameter count is nearest ``count`` (by ratio), if within ``tolerance`` of it, else
    None. Neighbouring variants differ by 17 % (yolox-l and yolox-darknet53) or more; folded BatchNorms and
    another class count move a count by a few %. How a file that does not record its variant (the authors'
    released ONNX files) is recognised."""
    best = min(VARIANTS.values(), key=lambda spec: abs(math.log(max(count, 1) / spec.params)))
    return best.name if abs(count / best.params - 1) <= tolerance else None
