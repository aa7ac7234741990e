"""Learning-rate and multi-scale schedules at hand-computed points."""

from __future__ import annotations

import math

import pytest

from yolox_deploy.errors import InputError
from yolox_deploy.train.schedule import LRSchedule, default_multiscale_range, multiscale_size


def test_warmup_cosine_and_constant_tail():
    s = LRSchedule(base_lr=0.01, iters_per_epoch=10, epochs=300, warmup_epochs=5, no_aug_epochs=15)
    assert s(0) == 0.0
    assert s(25) == pytest.approx(0.01 * (25 / 50) ** 2)        # quadratic warm-up
    assert s(50) == pytest.approx(0.01)
    span = 3000 - 50 - 150
    mid = 50 + span // 2
    assert s(mid) == pytest.approx(0.0005 + 0.5 * 0.0095 * (1 + math.cos(math.pi * (span // 2) / span)))
    assert s(mid) == pytest.approx((0.01 + 0.0005) / 2, rel=1e-3)
    assert s(3000 - 150) == s(2999) == pytest.approx(0.0005)      # min lr for the no-augmentation epochs
    assert s(3000 - 151) == pytest.approx(0.0005, rel=1e-3)


def test_without_warmup_the_first_step_runs_at_the_base_lr():
    s = LRSchedule(0.01, 10, 4, warmup_epochs=0, no_aug_epochs=0)
    assert s(0) == pytest.approx(0.01) and s(39) > s(40 - 1) * 0.99 > 0


def test_epochs_must_fit():
    with pytest.raises(InputError, match="do not fit"):
        LRSchedule(0.01, 10, 10, warmup_epochs=5, no_aug_epochs=6)


def test_multiscale_sizes():
    assert default_multiscale_range("yolox-s", (640, 640)) == (15, 25)
    assert default_multiscale_range("yolox-nano", (416, 416)) == (10, 20)
    assert multiscale_size(5, (640, 640), (14, 26)) == (640, 640)   # first block: the base size
    sizes = {multiscale_size(i * 10, (640, 640), (14, 26), seed=1) for i in range(1, 200)}
    assert sizes <= {(32 * k, 32 * k) for k in range(14, 27)} and len(sizes) > 8
    assert {(448, 448), (832, 832)} <= sizes
    # one size per block of 10, the same for every rank and on resume
    assert len({multiscale_size(i, (640, 640), (14, 26), seed=1) for i in range(30, 40)}) == 1
    assert multiscale_size(123, (640, 640), (14, 26), seed=1) == multiscale_size(123, (640, 640), (14, 26), seed=1)
    h, w = multiscale_size(40, (480, 640), (10, 20), seed=0)
    assert h % 32 == 0 and w % 32 == 0 and w == 32 * int(h * 640 / 480 / 32)
    assert multiscale_size(40, (640, 640), None) == (640, 640)


def test_small_inputs_never_go_below_64_pixels():
    """At 32 px the stride-32 map is one cell: BatchNorm cannot train on it for a batch of one image."""
    from pathlib import Path

    from yolox_deploy.train.config import TrainConfig

    assert default_multiscale_range("yolox-nano", (128, 128)) == (2, 9)
    sizes = {multiscale_size(i * 10, (128, 512), (2, 9), seed=s) for i in range(1, 60) for s in range(3)}
    assert min(min(hw) for hw in sizes) == 64
    base = {"model": "yolox-nano", "data": Path("data"), "output": Path("out")}
    for bad, message in (({"img_size": 32}, "sides of at least 64"), ({"img_size": (32, 128)}, "sides of at least 64"),
                         ({"multiscale_range": (1, 5)}, r"must be increasing and start at 2"),
                         ({"multiscale_range": (6, 5)}, "must be increasing"), ({"seed": -1}, "seed must be >= 0")):
        with pytest.raises(InputError, match=message):
            TrainConfig(**base, **bad).resolved()
    assert TrainConfig(**base, img_size=64).resolved().multiscale_range == (2, 7)
