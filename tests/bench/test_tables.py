"""The published tables as data."""

from __future__ import annotations

import pytest

from yolox_deploy.bench.tables import (
    ALL_TABLES,
    MODEL_ZOO,
    PAPER,
    TABLE2_ROADMAP,
    TABLE3_YOLOV5,
    TABLE4_LIGHT,
    published,
)
from yolox_deploy.zoo import VARIANTS, canonical_name


def test_yolox_s_published_values():
    p = published("s")
    assert (p.ap, p.params_m, p.gflops, p.v100_ms, p.t4_trt_ms) == (40.5, 9.0, 26.8, 9.8, 2.56)
    row = TABLE3_YOLOV5.row("YOLOX-S")
    assert (row.ap, row.params_m, row.gflops, row.latency_ms) == (39.6, 9.0, 26.8, 9.8)


def test_t4_column_and_nano_without_latency():
    assert [published(v).t4_trt_ms for v in ("s", "m", "l", "x")] == [2.56, 5.43, 9.04, 16.1]
    nano = published("nano")
    assert nano.v100_ms is None and nano.t4_trt_ms is None and nano.size == 416


def test_paper_tables_are_there():
    assert set(PAPER) == {"table2", "table3", "table4", "table6"}
    assert TABLE2_ROADMAP.row("yolox-darknet53").ap == 47.3
    assert TABLE4_LIGHT.row("YOLOX-Nano").params_m == 0.91


def test_model_zoo_agrees_with_the_zoo_module():
    for name, spec in VARIANTS.items():
        row = MODEL_ZOO.row(name)
        assert row.ap == spec.ap
        assert row.params_m == pytest.approx(spec.params / 1e6, abs=0.06)
        assert row.gflops == spec.gflops
        assert row.latency_ms == spec.v100_ms


def test_rows_are_sane():
    for table in ALL_TABLES.values():
        for r in table.rows:
            if r.variant is not None:
                assert canonical_name(r.variant) == r.variant
            if r.latency_ms is not None and r.fps is not None:
                assert r.fps == pytest.approx(1000 / r.latency_ms, rel=0.01)
            if r.ap is not None:
                assert 15 < r.ap < 60
