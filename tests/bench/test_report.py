"""Writers: markdown / CSV / JSON round trip and the plot."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from yolox_deploy.bench.host import collect_host_info
from yolox_deploy.bench.latency import PipelineTimes
from yolox_deploy.bench.report import OUTPUT_NAMES, read_csv, read_json, to_markdown, write_report
from yolox_deploy.bench.results import BenchReport, BenchRow, DemoComparison
from yolox_deploy.bench.stats import LatencyStats
from yolox_deploy.bench.tables import published


def _times(base: float) -> PipelineTimes:
    rng = np.random.default_rng(int(base))
    a = np.stack([base + rng.random(20), 0.5 + rng.random(20) * 0.1, base - 1 + rng.random(20), 0.3 + rng.random(20) * 0.1], 1)
    return PipelineTimes.from_samples(a)


def make_report() -> BenchReport:
    ok = BenchRow("yolox-s", "onnxruntime", "fp32", 1, (640, 640), 8_968_255, 26.93, device="cpu",
                  weights="random (seed 0)", model_ms=LatencyStats.from_samples([98.0, 100.0, 102.0, 120.0]),
                  pipeline=_times(110), ap=0.405, ap50=0.59, published=published("s"), artefact="/x/yolox_s.onnx",
                  clock="perf_counter", notes=["artefact reused from cache"])
    batch8 = BenchRow("yolox-s", "onnxruntime", "fp32", 8, (640, 640), 8_968_255, 26.93,
                      model_ms=LatencyStats.from_samples([700.0, 720.0]), pipeline=_times(760),
                      published=published("s"), clock="perf_counter", options={"threads": 1, "opt_level": "basic"})
    missing = BenchRow("yolox-s", "tensorrt", "fp16", 1, (640, 640), 8_968_255, 26.93,
                       status="not available: TensorRT is not installed", published=published("s"))
    demo = DemoComparison("yolox-nano", (416, 416), "openvino", "fp32", "/w/yolox_nano.onnx", _times(10), _times(20),
                          100, 0.99, notes=["weights: yolox_nano.pth"])
    return BenchReport({"iters": 4, "warmup": 1, "images_desc": "synthetic"}, collect_host_info(),
                       [ok, batch8, missing], [demo], ["a note"], "2026-01-01T00:00:00+00:00", 12.5)


def test_json_round_trip(tmp_path):
    report = make_report()
    paths = write_report(report, tmp_path, plot=False)
    back = read_json(paths["json"])
    assert back.to_dict() == report.to_dict()
    d = json.loads(paths["json"].read_text())
    assert d["rows"][0]["derived"]["ratio_v100"] == pytest.approx(report.rows[0].model_ms.mean / 9.8)
    assert d["rows"][1]["derived"]["ratio_v100"] is None           # batch 8 is not compared with batch-1 figures
    report.rows[0].img_size = (416, 416)
    assert report.rows[0].ratio_v100 is None                        # nor another input size
    assert d["demo_comparisons"][0]["derived"]["speedup"] == pytest.approx(report.demo.speedup)
    assert "table3" in d["published"] and d["host_line"] == report.host.summary()


def test_csv_round_trip(tmp_path):
    report = make_report()
    paths = write_report(report, tmp_path, plot=False)
    rows = read_csv(paths["csv"])
    assert [r["backend"] for r in rows] == ["onnxruntime", "onnxruntime", "tensorrt"]
    first = report.rows[0]
    assert float(rows[0]["model_p99_ms"]) == first.model_ms.p99
    assert float(rows[0]["full_fps"]) == pytest.approx(first.full_fps)
    assert float(rows[1]["model_fps"]) == pytest.approx(8000 / 710)
    assert float(rows[0]["gflops"]) == 26.93 and float(rows[0]["params_m"]) == 8.968255
    assert rows[2]["status"] == "not available: TensorRT is not installed"
    assert rows[1]["options"] == "opt_level=basic;threads=1"
    assert rows[2]["model_mean_ms"] == ""
    assert int(rows[1]["iters"]) == 2 and int(rows[1]["full_iters"]) == report.rows[1].pipeline.total.n


def test_markdown_has_the_paper_table_and_the_status(tmp_path):
    report = make_report()
    text = to_markdown(report)
    assert "| YOLOX-S" in text and "26.93" in text
    assert "onnxruntime (opt_level=basic, threads=1)" in text
    assert "not available: TensorRT is not installed" in text
    assert "authors' ONNX Runtime demo" in text and f"{report.demo.speedup:.2f}x" in text
    assert report.host.cpu_model in text
    assert "4 timed iterations after 1 warm-up" in text and "| n model | n full |" in text
    report.settings["max_seconds"] = 0.5  # a cap: the counts come from the n columns
    assert "up to 4 timed iterations (fewer past --max-time 0.5 s: the *n* columns count them)" in to_markdown(report)


def test_non_finite_values_become_null(tmp_path):
    report = make_report()
    report.rows[0].ap = math.nan
    paths = write_report(report, tmp_path, plot=False)
    assert json.loads(paths["json"].read_text())["rows"][0]["ap"] is None


def test_plot_is_a_png(tmp_path):
    paths = write_report(make_report(), tmp_path, plot=True)
    assert set(paths) == set(OUTPUT_NAMES)
    data = paths["plot"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    partial = write_report(make_report(), tmp_path, plot=False)  # the next run's first rows: no stale plot
    assert "plot" not in partial and not paths["plot"].exists()


def test_a_plot_without_matplotlib_is_refused_before_any_file(tmp_path, monkeypatch):
    """The Python API said ModuleNotFoundError from inside the plot, after making the folder."""
    from yolox_deploy.errors import BackendUnavailable

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec and import both see it missing
    with pytest.raises(BackendUnavailable, match=r"pip install 'yolox-deploy\[bench\]'.*plot=False"):
        write_report(make_report(), tmp_path / "out", plot=True)
    assert not (tmp_path / "out").exists()
    assert "plot" not in write_report(make_report(), tmp_path / "out", plot=False)


def test_the_plot_marks_the_fp32_ap_of_a_model():
    """INT8's AP measured after FP32's took the model's star in the plot, labelled as the model's AP."""
    from yolox_deploy.bench.plot import measured_ap

    def row(precision, ap, backend="openvino"):
        return BenchRow("yolox-nano", backend, precision, 1, (416, 416), 912_159, 1.11, ap=ap,
                        model_ms=LatencyStats.from_samples([5.0]))

    assert measured_ap([row("fp32", 0.3052), row("int8", 0.2980)]) == {"yolox-nano": (pytest.approx(30.52), "fp32")}
    assert measured_ap([row("int8", 0.2980), row("fp32", 0.3052)]) == {"yolox-nano": (pytest.approx(30.52), "fp32")}
    assert measured_ap([row("int8", 0.2980), row("fp16", 0.3053)]) == {"yolox-nano": (pytest.approx(29.80), "int8")}
    assert measured_ap([row("fp32", None)]) == {}


def test_the_plot_title_names_the_gpu_only_when_a_row_ran_on_it(tmp_path, monkeypatch):
    """A CPU-only run on a host that has a GPU was titled 'measured on <GPU>'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    from yolox_deploy.bench.host import GpuInfo

    titles = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, t, **kw: titles.append(t) or real(self, t, **kw))
    report = make_report()
    report.host.gpus = [GpuInfo("NVIDIA Test GPU", 16.0)]
    write_report(report, tmp_path, plot=True)                      # every measured row ran on the CPU
    assert "NVIDIA Test GPU" not in titles[-1] and report.host.cpu_model in titles[-1]
    report.rows[0].device = "cuda"
    write_report(report, tmp_path, plot=True)
    assert "NVIDIA Test GPU" in titles[-1]


def test_a_speedup_just_short_of_the_target_is_not_printed_as_reaching_it():
    """1.497x printed as "1.50x (target >= 1.5x: NOT met)"."""
    from unittest import mock

    demo = DemoComparison("yolox-nano", (416, 416), "openvino", "fp32", "/w/yolox_nano.onnx", _times(10), _times(20),
                          100, 0.99)
    with mock.patch.object(DemoComparison, "speedup", new_callable=mock.PropertyMock, return_value=1.497):
        assert "-> 1.49x (target >= 1.5x: NOT met)" in demo.summary()
    with mock.patch.object(DemoComparison, "speedup", new_callable=mock.PropertyMock, return_value=1.5):
        assert "-> 1.50x (target >= 1.5x: met)" in demo.summary()


def test_the_markdown_heading_of_a_race_does_not_round_up_to_the_target():
    """The summary said "1.49x (target >= 1.5x: NOT met)" and the section heading above its table "1.50x"."""
    from unittest import mock

    report = make_report()
    with mock.patch.object(DemoComparison, "speedup", new_callable=mock.PropertyMock, return_value=1.497):
        text = to_markdown(report)
    assert "### openvino, fp32: 1.49x" in text and "1.50x" not in text


@pytest.mark.parametrize("failure", ["full disk", "interrupt"])
def test_a_plot_that_cannot_be_written_leaves_the_earlier_results_all_in_place(tmp_path, monkeypatch, failure):
    """The tables were replaced before the plot was drawn: a full disk (or a Ctrl-C) while plotting left this run's
    results.md/.csv/.json beside the earlier run's results.png."""
    from yolox_deploy.bench import plot
    from yolox_deploy.errors import WriteError

    first = make_report()
    write_report(first, tmp_path, plot=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == sorted(OUTPUT_NAMES.values())

    def failing(report, path, **kwargs):
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise WriteError(path, "No space left on device")

    monkeypatch.setattr(plot, "plot_speed_accuracy", failing)
    second = make_report()
    second.rows = second.rows[:1]
    with pytest.raises(WriteError if failure == "full disk" else KeyboardInterrupt) as e:
        write_report(second, tmp_path, plot=True)
    if failure == "full disk":
        assert str(e.value).startswith(f"could not write {tmp_path / 'results.png'}: No space left")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either
