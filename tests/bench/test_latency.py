"""Timing loops: warm-up, cycling, budgets, stage split, clocks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from yolox_deploy.bench.latency import (
    MIN_ITERS,
    Clock,
    CpuClock,
    PipelineTimes,
    clock_for,
    measure_calls,
    measure_pipeline,
    sample_pipeline,
)


class FakeClock(Clock):
    """Reports a scripted duration per call (and calls the function)."""

    name = "fake"

    def __init__(self, durations):
        self.durations = list(durations)
        self.synced = 0

    def time(self, fn, *args):
        return fn(*args), self.durations.pop(0)

    def sync(self):
        self.synced += 1


def test_measure_calls_warms_up_then_cycles_inputs():
    seen = []
    stats = measure_calls(seen.append, ["a", "b", "c"], iters=4, warmup=2, clock=FakeClock([1, 2, 3, 4]))
    assert seen == ["a", "b", "c", "a", "b", "c"]    # 2 warm-up calls, then 4 timed ones continue the cycle
    assert stats.n == 4 and stats.mean == 2.5 and stats.p50 == 2.5


def test_time_budget_stops_after_the_minimum_iterations():
    def slow(_):
        time.sleep(0.01)

    stats = measure_calls(slow, [0], iters=1000, warmup=0, clock=CpuClock(), max_seconds=0.0)
    assert stats.n == MIN_ITERS
    assert stats.min >= 9.0


def test_cpu_clock_measures_wall_time():
    _, ms = CpuClock().time(time.sleep, 0.02)
    assert 15.0 < ms < 500.0


def test_clock_for_picks_by_device():
    assert isinstance(clock_for("cpu"), CpuClock)
    assert isinstance(clock_for("CPU"), CpuClock)


def test_bad_arguments():
    with pytest.raises(ValueError):
        measure_calls(print, [1], iters=0, warmup=0, clock=CpuClock())
    with pytest.raises(ValueError):
        measure_calls(print, [], iters=1, warmup=0, clock=CpuClock())


class FakeDetector:
    def __init__(self):
        self.calls = []

    def preprocess(self, images):
        self.calls.append(("pre", len(images)))
        return np.zeros((len(images), 3, 32, 32), np.float32), np.ones(len(images))

    def infer(self, batch):
        self.calls.append(("infer", batch.shape[0]))
        return [batch]

    def postprocess(self, outputs, ratios, sizes):
        self.calls.append(("post", len(sizes)))
        return [None] * len(sizes)


def test_pipeline_stage_split_and_total():
    det = FakeDetector()
    images = [[np.zeros((10, 10, 3), np.uint8)] * 2]
    durations = [1.0, 5.0, 2.0] * 3   # pre, infer, post for 1 warm-up + 2 timed calls
    a = sample_pipeline(det, images, iters=2, warmup=1, clock=FakeClock(durations))
    assert a.shape == (2, 4)
    assert (a[:, 1] == 1.0).all() and (a[:, 2] == 5.0).all() and (a[:, 3] == 2.0).all()
    assert det.calls[:3] == [("pre", 2), ("infer", 2), ("post", 2)]
    times = PipelineTimes.from_samples(a)
    assert times.infer.mean == 5.0
    assert PipelineTimes.from_dict(times.to_dict()) == times


def test_pipeline_total_is_wall_time_covering_the_stages():
    class Sleepy(FakeDetector):
        def infer(self, batch):
            time.sleep(0.01)
            return [batch]

    t = measure_pipeline(Sleepy(), [[np.zeros((8, 8, 3), np.uint8)]], iters=3, warmup=0, clock=CpuClock())
    assert t.total.min >= t.infer.min >= 9.0
    assert t.total.mean >= t.pre.mean + t.infer.mean + t.post.mean - 1e-6


@pytest.mark.gpu
def test_cuda_clock_times_gpu_work():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from yolox_deploy.bench.latency import CudaClock

    clock = clock_for("cuda")
    assert isinstance(clock, CudaClock)
    x = torch.randn(2048, 2048, device="cuda")
    _, small = clock.time(torch.mm, x[:64, :64], x[:64, :64])
    _, big = clock.time(lambda: [torch.mm(x, x) for _ in range(20)])
    assert big > small > 0
    stats = measure_calls(lambda a: a @ a, [x], iters=5, warmup=2, clock=clock)
    assert stats.n == 5 and stats.mean > 0
