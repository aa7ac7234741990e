"""Latency statistics: percentiles, spread, FPS, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from yolox_deploy.bench.stats import LatencyStats


def test_percentiles_of_one_to_hundred():
    s = LatencyStats.from_samples(np.arange(1, 101, dtype=float))
    assert s.n == 100
    assert s.mean == pytest.approx(50.5)
    assert s.p50 == pytest.approx(50.5)       # linear interpolation between 50 and 51
    assert s.p90 == pytest.approx(90.1)
    assert s.p99 == pytest.approx(99.01)
    assert (s.min, s.max) == (1.0, 100.0)
    assert s.std == pytest.approx(np.std(np.arange(1, 101), ddof=1))


def test_tail_shows_in_p99_not_in_p50():
    samples = [10.0] * 98 + [100.0, 100.0]
    s = LatencyStats.from_samples(samples)
    assert s.p50 == 10.0 and s.p90 == 10.0
    assert s.p99 == pytest.approx(100.0)
    assert s.mean == pytest.approx(11.8)


def test_single_sample_and_fps():
    s = LatencyStats.from_samples([20.0])
    assert s.std == 0.0 and s.p50 == s.p99 == 20.0
    assert s.fps() == pytest.approx(50.0)
    assert s.fps(8) == pytest.approx(400.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_rejects_empty_or_non_finite(bad):
    with pytest.raises(ValueError):
        LatencyStats.from_samples(bad)


def test_dict_round_trip():
    s = LatencyStats.from_samples([3.0, 1.0, 2.0, 10.0])
    assert LatencyStats.from_dict(s.to_dict()) == s
