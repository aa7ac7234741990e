"""End-to-end runs on the torch backend (and whatever else is installed), unavailable backends as rows."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from yolox_deploy.bench.report import read_csv, read_json, write_report
from yolox_deploy.bench.runner import (
    BenchConfig,
    demo_candidates,
    demo_contenders,
    image_groups,
    load_timing_images,
    run_benchmark,
)
from yolox_deploy.errors import InputError
from yolox_deploy.runtimes import registered_backends


def test_image_groups_wrap_around():
    imgs = list(range(5))
    assert image_groups(imgs, 2) == [[0, 1], [2, 3], [4, 0]]
    assert image_groups(imgs, 8) == [[0, 1, 2, 3, 4, 0, 1, 2]]


def test_synthetic_images_when_no_folder():
    images, desc = load_timing_images(None, 3)
    assert len(images) == 3 and "synthetic" in desc
    assert all(im.dtype.name == "uint8" and im.ndim == 3 for im in images)


def test_config_validation(tmp_path):
    with pytest.raises(InputError):
        BenchConfig(precisions=["fp8"])
    with pytest.raises(InputError):
        BenchConfig(batches=[0])
    with pytest.raises(InputError):
        BenchConfig(models=["yolox-q"])
    with pytest.raises(InputError):
        BenchConfig(images=tmp_path / "missing")
    with pytest.raises(InputError, match="unknown backend"):
        BenchConfig(backends=["onnxruntime", "no-such-runtime"])
    with pytest.raises(InputError, match="thresholds must lie in"):
        BenchConfig(conf=1.5)
    with pytest.raises(InputError, match="not a COCO folder"):  # refused before any timing
        BenchConfig(with_eval=tmp_path)
    cfg = BenchConfig(models=["s", "NANO"], backends=["trt", "ort"])
    assert cfg.models == ["yolox-s", "yolox-nano"] and cfg.backends == ["tensorrt", "onnxruntime"]


def test_tiny_end_to_end_run_writes_all_four_outputs(tmp_path):
    cfg = BenchConfig(models=["nano"], backends=["torch"], iters=3, warmup=1, images=None, max_images=2,
                      img_size=(224, 224), output=tmp_path, demo=False, progress=False, isolate=True)
    report = run_benchmark(cfg)
    [row] = report.rows
    assert row.ok, row.status
    assert row.model_ms.n == 3 and row.pipeline.total.n == 3
    assert row.params == 912_159 and row.gflops == pytest.approx(1.1127 * (224 / 416) ** 2, rel=1e-3)
    assert row.pipeline.total.mean >= row.pipeline.infer.mean > 0
    assert row.clock == "perf_counter" and row.weights == "random (seed 0)"
    paths = write_report(report, tmp_path)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert read_json(paths["json"]).rows[0].model_ms == row.model_ms
    assert read_csv(paths["csv"])[0]["status"] == "ok"
    assert any("Random weights" in n for n in report.notes)
    assert any("fresh Python process" in n for n in report.notes)


def test_a_dying_worker_gives_a_failed_row(tmp_path):
    from yolox_deploy.bench.artefacts import model_source
    from yolox_deploy.bench.runner import RowSpec, run_isolated

    cfg = BenchConfig(models=["nano"], output=tmp_path, progress=False)
    spec = RowSpec("yolox-nano", "torch", "fp32", 1, (160, 160), 1, 1.0)
    payload = {"row": {"model": "yolox-nano"}}          # malformed: the worker raises before measuring
    row = run_isolated("row", cfg, payload, fallback=spec.failed_row(model_source("nano", None), {}, "cuda"))
    assert row.status == "failed: the worker process died (code 1)" and row.device == "cuda"
    assert row.model_ms is None


def test_demo_worker_reports_why_it_skipped(tmp_path):
    from yolox_deploy.bench.runner import _demo_isolated

    demos, skipped = _demo_isolated(BenchConfig(output=tmp_path, progress=False), [])
    assert demos == [] and skipped.startswith("demo comparison skipped: no successful CPU batch-1 row")


def test_missing_backend_gives_a_not_available_row_and_the_run_continues(tmp_path, monkeypatch):
    from yolox_deploy.runtimes.base import BackendInfo

    real = BackendInfo.available

    def fake(self):
        if self.name == "onnxruntime":
            return False, "the onnxruntime backend needs the 'onnxruntime' package (pip install 'yolox-deploy[onnx]')"
        return real(self)

    monkeypatch.setattr(BackendInfo, "available", fake)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # a known backend whose package cannot be imported
    cfg = BenchConfig(models=["nano"], backends=["onnxruntime", "tensorrt", "torch"], iters=2, warmup=0,
                      max_images=1, img_size=(160, 160), output=tmp_path, demo=False, progress=False, isolate=False)
    partial = []
    rows = run_benchmark(cfg, on_row=lambda report: partial.append(len(report.rows))).rows
    assert partial == [0, 1, 2, 3]  # an empty report first: an earlier run's files are replaced at once
    assert [r.backend for r in rows] == ["onnxruntime", "tensorrt", "torch"]
    if "onnxruntime" in registered_backends():
        assert rows[0].status.startswith("not available: the onnxruntime backend needs")
    assert rows[1].status.startswith("not available:")
    assert rows[2].ok
    assert rows[0].model_ms is None and rows[0].gflops == rows[2].gflops > 0.1


def test_precision_a_backend_cannot_run_is_not_available(tmp_path):
    cfg = BenchConfig(models=["nano"], backends=["torch"], precisions=["int8"], iters=2, warmup=0, max_images=1,
                      img_size=(160, 160), device="cpu", output=tmp_path, demo=False, progress=False, isolate=False)
    [row] = run_benchmark(cfg).rows
    assert row.status == "not available: the torch backend runs fp32, not int8, on cpu"


@pytest.mark.parametrize("computes, note", [
    ("bf16", "computes in bf16, as its --backend-option asks"),
    ("fp32", "computes in fp32: its --backend-option asked for bf16, which cpu does not run"),  # a CPU without BF16
])
def test_a_compute_precision_chosen_by_a_backend_option_is_measured_and_said(tmp_path, monkeypatch, computes, note):
    from yolox_deploy.bench.artefacts import backend_status

    if not backend_status("openvino")[0]:
        pytest.skip("openvino not installed")
    from yolox_deploy.runtimes.openvino import OpenVINOBackend

    monkeypatch.setattr(OpenVINOBackend, "compute_precision", property(lambda self: computes))
    cfg = BenchConfig(models=["nano"], backends=["openvino"], iters=2, warmup=0, max_images=1, img_size=(64, 64),
                      device="cpu", output=tmp_path, demo=False, progress=False, isolate=False,
                      backend_options={"openvino": {"inference_precision": "bf16"}})
    [row] = run_benchmark(cfg).rows
    assert row.ok and row.precision == "fp32", row.status
    assert note in row.notes


def test_a_precision_option_the_runtime_does_not_honour_is_not_available(tmp_path, monkeypatch):
    """OpenVINO takes an f16 hint on a CPU without FP16 arithmetic and computes in FP32: that row is neither
    what the artefact is nor what the option asked for."""
    from yolox_deploy.bench.artefacts import backend_status
    from yolox_deploy.runtimes.base import asked_precision

    assert [asked_precision(o) for o in ({}, {"half": True}, {"half": False}, {"inference_precision": "F16"},
                                         {"inference_precision": "bf16"})] == [None, "fp16", "fp32", "fp16", "bf16"]
    if not backend_status("openvino")[0]:
        pytest.skip("openvino not installed")
    from yolox_deploy.runtimes.openvino import OpenVINOBackend

    monkeypatch.setattr(OpenVINOBackend, "compute_precision", property(lambda self: "fp32"))
    cfg = BenchConfig(models=["nano"], backends=["openvino"], precisions=["fp16"], iters=2, warmup=0, max_images=1,
                      img_size=(64, 64), device="cpu", output=tmp_path, demo=False, progress=False, isolate=False,
                      backend_options={"openvino": {"inference_precision": "f16"}})
    [row] = run_benchmark(cfg).rows
    assert row.status == ("not available: the openvino backend runs fp32, not fp16, on cpu (its --backend-option "
                          "asked for fp16)")


def test_a_device_the_backend_cannot_use_stays_in_the_device_column(tmp_path):
    cfg = BenchConfig(models=["nano"], backends=["torch"], iters=2, warmup=0, max_images=1, img_size=(160, 160),
                      device="vulkan", output=tmp_path, demo=False, progress=False, isolate=False)
    [row] = run_benchmark(cfg).rows
    assert row.device == "vulkan" and row.status.startswith("not available: the torch backend runs on")


def test_exports_of_real_weights_are_verified_on_the_first_photo(tmp_path, dog_jpg):
    from yolox_deploy.bench.runner import RowRunner

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.jpg", "a.jpg"):
        (folder / name).write_bytes(dog_jpg.read_bytes())
    runner = lambda images: RowRunner(BenchConfig(images=images, output=tmp_path), [])  # noqa: E731
    assert runner(folder).verification_image() == folder / "a.jpg"
    assert runner(None).verification_image() is None  # synthetic images: the synthetic scene


def test_threads_reach_torch_rows_and_the_notes(tmp_path):
    import torch

    before = torch.get_num_threads()
    cfg = BenchConfig(models=["nano"], backends=["torch"], iters=2, warmup=0, max_images=1, img_size=(160, 160),
                      device="cpu", output=tmp_path, demo=False, progress=False, isolate=False, threads=1)
    try:
        report = run_benchmark(cfg)
        assert torch.get_num_threads() == 1 and report.rows[0].ok
    finally:
        torch.set_num_threads(before)
    assert any("1 inference threads in every backend (--threads)" in n for n in report.notes)


def test_demo_comparison_with_real_weights(tmp_path, nano_pth, nano_onnx):
    pytest.importorskip("onnxruntime")
    cfg = BenchConfig(models=["nano"], backends=["torch"], iters=4, warmup=1, max_images=2, images=None,
                      weights_dir=nano_pth.parent, output=tmp_path, demo=True, demo_rounds=2, progress=False,
                      isolate=False)
    report = run_benchmark(cfg)
    assert demo_candidates(report.rows)[0] is report.rows[0]
    d = report.demo
    assert d is not None and d.ours_backend == "torch" and d.demo_onnx == str(nano_onnx)
    assert d.ours.total.n == 4 and d.demo.total.n == 4
    assert d.agreement is not None and d.agreement >= 0.9
    assert d.speedup == pytest.approx(d.ours_fps / d.demo_fps) and d.speedup > 0
    assert "FPS" in d.summary()


def test_the_demo_runs_the_released_onnx_only_beside_its_own_weights(tmp_path, nano_pth, nano_onnx):
    """Weights changed under the released file's name: the race runs their own raw export, not the file."""
    pytest.importorskip("onnxruntime")
    import torch

    from yolox_deploy.bench.artefacts import model_source
    from yolox_deploy.bench.runner import _holds_the_weights

    source = model_source("nano", nano_pth.parent)
    assert _holds_the_weights(nano_onnx, source, (416, 416))
    assert not _holds_the_weights(nano_onnx, source, (320, 320))
    with torch.no_grad():
        source.model().head.cls_preds[0].bias -= 3
    assert not _holds_the_weights(nano_onnx, source, (416, 416))


def test_without_onnx_runtime_the_demo_is_skipped_saying_why(nano_pth, monkeypatch, caplog):
    """Without ONNX Runtime the released file was said not to hold the weights, and the export that replaced
    it was blamed on onnx."""
    from yolox_deploy.bench import demo_pipeline
    from yolox_deploy.bench.artefacts import model_source
    from yolox_deploy.bench.runner import _demo_onnx
    from yolox_deploy.errors import BackendUnavailable

    def unavailable(*a, **k):
        raise BackendUnavailable("the ONNX Runtime demo baseline needs onnxruntime")

    monkeypatch.setattr(demo_pipeline, "DemoPipeline", unavailable)
    with caplog.at_level("WARNING"), pytest.raises(BackendUnavailable, match="needs onnxruntime"):
        _demo_onnx(None, model_source("nano", nano_pth.parent), (416, 416))
    assert "does not hold the weights" not in caplog.text
    from yolox_deploy.bench.latency import PipelineTimes
    from yolox_deploy.bench.results import BenchRow
    from yolox_deploy.bench.runner import run_demo_comparison
    from yolox_deploy.bench.stats import LatencyStats

    row = BenchRow("yolox-nano", "openvino", "fp32", 1, (416, 416), 1, 1.0, device="cpu",
                   model_ms=LatencyStats.from_samples([8.0]), pipeline=PipelineTimes.from_samples([[8, 0, 8, 0]]))
    with caplog.at_level("WARNING"):
        results, note = run_demo_comparison(None, [row], {"yolox-nano": model_source("nano", nano_pth.parent)})
    assert results == [] and note == "demo comparison skipped: the ONNX Runtime demo baseline needs onnxruntime"
    assert "does not hold the weights" not in caplog.text


def test_the_demo_race_keeps_to_max_time(tmp_path, nano_pth):
    pytest.importorskip("onnxruntime")
    cfg = BenchConfig(models=["nano"], backends=["torch"], iters=40, warmup=1, max_images=2, images=None,
                      weights_dir=nano_pth.parent, output=tmp_path, demo=True, demo_rounds=2, progress=False,
                      isolate=False, max_seconds=0.01)
    d = run_benchmark(cfg).demo
    assert d.ours.total.n == d.demo.total.n == 2 * 5  # each of the 2 blocks a side stops at the minimum of 5 calls
    assert any("up to 20 calls each (--max-time 0.01 s per side)" in n for n in d.notes)


def test_demo_contenders_fastest_then_fastest_fp32():
    from yolox_deploy.bench.latency import PipelineTimes
    from yolox_deploy.bench.results import BenchRow
    from yolox_deploy.bench.stats import LatencyStats

    def row(backend, precision, ms, device="cpu", batch=1):
        return BenchRow("yolox-nano", backend, precision, batch, (416, 416), 1, 1.0, device=device,
                        model_ms=LatencyStats.from_samples([ms]), pipeline=PipelineTimes.from_samples([[ms, 0, ms, 0]]))

    int8, ov32, ort32 = row("openvino", "int8", 6.0), row("openvino", "fp32", 8.0), row("onnxruntime", "fp32", 7.5)
    gpu, b8 = row("tensorrt", "fp16", 1.0, device="cuda:0"), row("onnxruntime", "fp32", 3.0, batch=8)
    assert demo_contenders([ov32, int8, ort32, gpu, b8]) == [int8, ort32]
    assert demo_contenders([ov32, ort32]) == [ort32]
    assert demo_contenders([gpu]) == []


def _available_cpu_backends() -> list[str]:
    from yolox_deploy.bench.artefacts import backend_status

    names = []
    for name, cls in registered_backends().items():
        if backend_status(name)[0] and "cpu" in cls.info.devices:
            names.append(name)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("backend", _available_cpu_backends())
def test_every_available_backend_gives_a_measured_row(tmp_path, backend):
    cfg = BenchConfig(models=["nano"], backends=[backend], iters=2, warmup=1, max_images=2, img_size=(160, 160),
                      device="cpu", output=tmp_path, demo=False, progress=False, isolate=False)
    [row] = run_benchmark(cfg).rows
    assert row.ok, row.status
    assert row.model_ms.n == 2 and row.pipeline.total.n == 2


@pytest.mark.slow
def test_with_eval_measures_the_reference_ap(tmp_path, nano_pth, coco_tiny):
    from tests.conftest import REFERENCE_AP

    cfg = BenchConfig(models=["nano", "tiny"], backends=["torch"], iters=1, warmup=0, max_images=1,
                      weights_dir=nano_pth.parent, with_eval=coco_tiny, output=tmp_path, demo=False, progress=False,
                      isolate=False)
    report = run_benchmark(cfg)
    nano, tiny = report.rows
    assert nano.ap == pytest.approx(REFERENCE_AP, abs=0.002)
    assert tiny.ok and tiny.ap is None and any("random weights" in n for n in tiny.notes)
    assert any("80 images" in n for n in report.notes)


def test_a_damaged_cache_entry_names_the_folder_to_delete(tmp_path):
    """Each run reuses a cached export; one damaged outside the run fails every run until it is removed."""
    pytest.importorskip("onnxruntime")
    cfg = BenchConfig(models=["nano"], backends=["onnxruntime"], iters=2, warmup=0, images=None, max_images=1,
                      img_size=(64, 64), output=tmp_path, demo=False, progress=False, isolate=False)
    [row] = run_benchmark(cfg).rows
    assert row.ok, row.status
    artefact = Path(row.artefact)
    with open(artefact, "r+b") as f:
        f.truncate(1000)
    [again] = run_benchmark(cfg).rows
    assert again.status.startswith("failed:") and "artefact reused from cache" in again.notes[0]
    assert again.status.endswith(f"(delete the cache entry {artefact.parent} to export it again)")


def test_int8_of_real_weights_on_synthetic_images_names_the_bench_options(tmp_path, nano_pth):
    pytest.importorskip("nncf")
    cfg = BenchConfig(models=["nano"], backends=["openvino"], precisions=["int8"], iters=2, warmup=0, images=None,
                      max_images=2, img_size=(416, 416), output=tmp_path, demo=False, progress=False, isolate=False,
                      weights_dir=nano_pth.parent)
    [row] = [r for r in run_benchmark(cfg).rows if r.precision == "int8"]
    assert row.status.startswith("not available: INT8 of real weights is verified on a calibration image")
    assert "give --calib-images DIR or --images DIR" in row.status and "--verify-image" not in row.status


def _worker(tmp_path, body: str, setup: str = ""):
    import subprocess

    script = f"import signal, sys, time\n{setup}open({str(tmp_path / 'started')!r}, 'w').close()\n{body}"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def test_an_interrupted_worker_cleans_up_before_it_ends(tmp_path):
    """The parent killed its worker outright on Ctrl-C: an export's temporary files (hundreds of MB) stayed."""
    from yolox_deploy.bench.runner import stop_worker

    cleanup = (f"def stop(*args):\n    open({str(tmp_path / 'cleaned')!r}, 'w').close()\n    sys.exit(130)\n"
               "signal.signal(signal.SIGINT, stop)\n")
    proc = _worker(tmp_path, "time.sleep(60)\n", setup=cleanup)
    stop_worker(proc, grace=20)
    assert proc.returncode == 130 and (tmp_path / "cleaned").exists()
    (tmp_path / "started").unlink()
    stubborn = _worker(tmp_path, "time.sleep(60)\n", setup="signal.signal(signal.SIGINT, signal.SIG_IGN)\n")
    t0 = time.monotonic()
    stop_worker(stubborn, grace=0.5)  # one that does not end in time is killed
    assert stubborn.returncode == -9 and time.monotonic() - t0 < 10


def test_params_and_gflops_are_those_of_the_checkpoint_timed(tmp_path):
    """A checkpoint with 20 classes in --weights-dir was timed, but its row gave the 80-class model's params and
    GFLOPs."""
    import torch

    from yolox_deploy.bench.flops import count_parameters, yolox_complexity
    from yolox_deploy.nn.yolox import build_model

    weights = tmp_path / "weights"
    weights.mkdir()
    model = build_model("yolox-nano", 20)
    torch.save({"model": model.state_dict()}, weights / "yolox_nano.pth")
    cfg = BenchConfig(models=["nano"], backends=["torch"], iters=1, warmup=0, images=None, max_images=1,
                      img_size=(64, 64), weights_dir=weights, output=tmp_path / "out", demo=False, progress=False,
                      isolate=False)
    [row] = run_benchmark(cfg).rows
    assert row.ok, row.status
    assert row.weights == "yolox_nano.pth"
    assert row.params == count_parameters(model) == 900_459
    assert row.gflops == pytest.approx(yolox_complexity("nano", (64, 64), 20).gflops)
