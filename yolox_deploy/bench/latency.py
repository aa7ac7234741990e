"""Latency measurement: the model alone (as the paper times it) and the full Detector, stage by stage.

Protocol: ``warmup`` untimed calls, then ``iters`` timed calls cycling through the given inputs (optionally
stopped early by a time budget). Each timed call is measured by a :class:`Clock`:

- :class:`CpuClock`: ``time.perf_counter`` around the call, for backends whose outputs are host arrays (the
  call has returned when the work is done);
- :class:`CudaClock`: CUDA events on the current stream around the call, with a device-wide synchronise
  before the end event is recorded, so work that a runtime queues on its own streams is inside the interval.

The full-Detector time of an iteration is the wall time of preprocess (letterbox) -> backend.infer ->
postprocess (decode / NMS / scale back), with each stage timed by the same clock for the split. Images are
in memory: decoding files from disk is not timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import LatencyStats


class Clock:
    """Times one call: ``result, ms = clock.time(fn, *args)``."""

    name = "perf_counter"

    def time(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait until the device is idle (nothing to wait for on the CPU)."""


class CpuClock(Clock):
    """Wall time with ``time.perf_counter``."""

    name = "perf_counter"

    def time(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = fn(*args)
        return out, (time.perf_counter() - t0) * 1e3


class CudaClock(Clock):
    """CUDA-event timing on ``device`` (``"cuda"`` / ``"cuda:N"``), synchronised.

    ``start`` is recorded on the current stream before the call; after the call the whole device is
    synchronised and ``end`` recorded, so kernels queued on any stream are counted.
    """

    name = "cuda-events"

    def __init__(self, device: str = "cuda") -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("CUDA timing asked for, but torch sees no CUDA device")
        self.device = torch.device(device)
        self._torch = torch

    def sync(self) -> None:
        self._torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        cuda = self._torch.cuda
        with cuda.device(self.device):
            start = cuda.Event(enable_timing=True)
            end = cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            cuda.synchronize(self.device)
            end.record()
            end.synchronize()
            return out, float(start.elapsed_time(end))


def clock_for(device: str) -> Clock:
    """The clock for outputs living on ``device``: CUDA events for ``cuda*``, else ``perf_counter``."""
    return CudaClock(device) if str(device).lower().startswith("cuda") else CpuClock()


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="it", leave=False, disable=not enabled)


def _budget_exhausted(started: float, max_seconds: float | None, done: int, min_iters: int) -> bool:
    return max_seconds is not None and done >= min_iters and time.perf_counter() - started > max_seconds


MIN_ITERS = 5  # never fewer timed iterations than this, whatever the time budget


def measure_calls(fn: Callable[[Any], Any], inputs: Sequence[Any], *, iters: int, warmup: int, clock: Clock,
                  max_seconds: float | None = None, desc: str = "timing", progress: bool = False) -> LatencyStats:
    """Time ``fn(inputs[i % len(inputs)])``: ``warmup`` untimed calls, then up to ``iters`` timed ones."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    if not inputs:
        raise ValueError("no inputs to time")
    samples: list[float] = []
    with _progress(warmup + iters, desc, progress) as bar:
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
            bar.update(1)
        clock.sync()
        started = time.perf_counter()
        for i in range(iters):
            _, ms = clock.time(fn, inputs[(warmup + i) % len(inputs)])
            samples.append(ms)
            bar.update(1)
            if _budget_exhausted(started, max_seconds, i + 1, MIN_ITERS):
                break
    return LatencyStats.from_samples(samples)


@dataclass(frozen=True)
class PipelineTimes:
    """Full-Detector latency per call and its split: preprocess, backend inference, postprocess (ms)."""

    total: LatencyStats
    pre: LatencyStats
    infer: LatencyStats
    post: LatencyStats

    STAGES = ("total", "pre", "infer", "post")

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> PipelineTimes:
        """From an ``[n, 4]`` array of (total, pre, infer, post) ms per iteration."""
        a = np.asarray(samples, dtype=np.float64).reshape(-1, 4)
        return cls(*(LatencyStats.from_samples(a[:, k]) for k in range(4)))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_dict() for k in self.STAGES}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineTimes:
        return cls(*(LatencyStats.from_dict(d[k]) for k in cls.STAGES))


def timed_call(detector: Any, images: Sequence[np.ndarray], clock: Clock,
               ) -> tuple[list[Any], list[Any], tuple[float, float, float, float]]:
    """One full call of ``detector`` (a :class:`~yolox_deploy.runtimes.detector.Detector`, or anything with its
    three stage methods) on a list of BGR uint8 images, each stage timed by ``clock``: ``(detections, backend
    outputs, (total, pre, infer, post) ms)``. The total is the call's wall time after a device synchronise."""
    t0 = time.perf_counter()
    (batch, ratios), pre = clock.time(detector.preprocess, images)
    outputs, infer = clock.time(detector.infer, batch)
    dets, post = clock.time(detector.postprocess, outputs, ratios, [im.shape[:2] for im in images])
    clock.sync()
    return dets, outputs, ((time.perf_counter() - t0) * 1e3, pre, infer, post)


def sample_pipeline(detector: Any, image_batches: Sequence[Sequence[np.ndarray]], *, iters: int, warmup: int,
                    clock: Clock, max_seconds: float | None = None, desc: str = "pipeline",
                    progress: bool = False, offset: int = 0) -> np.ndarray:
    """Per-iteration ``[n, 4]`` ms (total, pre, infer, post) of ``preprocess -> infer -> postprocess``.

    ``detector`` is a :class:`~yolox_deploy.runtimes.detector.Detector` or anything with those three stage
    methods; each call gets one list of BGR uint8 images, cycling from ``image_batches[offset]``. The total
    of an iteration is its wall time (``perf_counter``, after a device synchronise).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    if not image_batches:
        raise ValueError("no images to time")

    def run(images: Sequence[np.ndarray]) -> tuple[float, float, float, float]:
        return timed_call(detector, images, clock)[2]

    rows: list[tuple[float, float, float, float]] = []
    n = len(image_batches)
    with _progress(warmup + iters, desc, progress) as bar:
        for i in range(warmup):
            run(image_batches[(offset + i) % n])
            bar.update(1)
        started = time.perf_counter()
        for i in range(iters):
            rows.append(run(image_batches[(offset + warmup + i) % n]))
            bar.update(1)
            if _budget_exhausted(started, max_seconds, i + 1, MIN_ITERS):
                break
    return np.asarray(rows, dtype=np.float64)


def measure_pipeline(detector: Any, image_batches: Sequence[Sequence[np.ndarray]], *, iters: int, warmup: int,
                     clock: Clock, max_seconds: float | None = None, desc: str = "pipeline",
                     progress: bool = False) -> PipelineTimes:
    """:func:`sample_pipeline` summarised per stage."""
    return PipelineTimes.from_samples(sample_pipeline(detector, image_batches, iters=iters, warmup=warmup, clock=clock,
                                                      max_seconds=max_seconds, desc=desc, progress=progress))
