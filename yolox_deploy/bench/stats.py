"""Summary statistics of latency samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Latency of ``n`` timed iterations, in milliseconds.

    Percentiles use numpy's default (linear interpolation between the closest ranks), so ``p50`` of an
    even number of samples is the mean of the two middle ones.
    """

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float] | np.ndarray) -> LatencyStats:
        """Statistics of per-iteration times in ms; raises ``ValueError`` when there are none or any is not finite."""
        a = np.asarray(samples_ms, dtype=np.float64).ravel()
        if a.size == 0:
            raise ValueError("no latency samples")
        if not np.isfinite(a).all():
            raise ValueError("latency samples must be finite")
        p50, p90, p99 = np.percentile(a, PERCENTILES)
        return cls(int(a.size), float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, float(a.min()),
                   float(p50), float(p90), float(p99), float(a.max()))

    def fps(self, batch: int = 1) -> float:
        """Images per second at this mean latency per call of ``batch`` images."""
        return batch * 1000.0 / self.mean if self.mean > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyStats:
        return cls(int(d["n"]), *(float(d[k]) for k in ("mean", "std", "min", "p50", "p90", "p99", "max")))
