"""TensorRT export: profiles, calibration feeding and caches, the sidecar, the ONNX handed to TensorRT, the
behaviour without TensorRT (the ONNX step is kept, one error line) and, marked ``tensorrt``, real engines."""

from __future__ import annotations

import enum
import importlib.util
import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from yolox_deploy.errors import BackendUnavailable, ExportError
from yolox_deploy.export.base import ExportOptions
from yolox_deploy.export.tensorrt import (
    CalibrationFeeder,
    TensorRTExporter,
    calibration_fingerprint,
    calibration_shape,
    intermediate_onnx_path,
    onnx_input,
    profile_for,
    reusable_calibration,
    side_range,
    sidecar_meta,
    timing_cache_path,
    trtexec_command,
)
from yolox_deploy.meta import ModelMeta, Preprocess, read_sidecar, sidecar_path
from yolox_deploy.runtimes.tensorrt import DECODED_OUTPUT, Profile, build_record, check_compatibility

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = HAVE_TRT and torch.cuda.is_available()
HAVE_WRITE_ONNX = importlib.util.find_spec("yolox_deploy.export.onnx") is not None
HAVE_CALIBRATION = importlib.util.find_spec("yolox_deploy.export.calibration") is not None
needs_trt = pytest.mark.skipif(not HAVE_GPU, reason="needs TensorRT and a CUDA GPU")
needs_write_onnx = pytest.mark.skipif(not HAVE_WRITE_ONNX, reason="needs yolox_deploy.export.onnx")

ENV = {"tensorrt": "10.3.0", "gpu": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6", "cuda": "12.4"}


# --- profiles ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side, expected", [(640, (320, 640, 1280)), (416, (320, 416, 832)), (256, (256, 256, 512)),
                                            (1024, (320, 1024, 1280)), (1280, (320, 1280, 1280)),
                                            (1536, (320, 1536, 1536))])
def test_side_range(side, expected):
    assert side_range(side) == expected
    assert all(v % 32 == 0 for v in expected)


def test_static_onnx_keeps_its_shape():
    opts = ExportOptions(img_size=(640, 640), dynamic=True, dynamic_hw=True)  # the file's own dims win
    p = profile_for([1, 3, 416, 416], opts)
    assert p == Profile.fixed((1, 3, 416, 416)) and not p.is_dynamic


def test_dynamic_batch_profile():
    assert profile_for([-1, 3, 640, 640], ExportOptions(dynamic=True)) == Profile(
        (1, 3, 640, 640), (1, 3, 640, 640), (8, 3, 640, 640))
    assert profile_for([-1, 3, 640, 640], ExportOptions(dynamic=True, batch=4, max_batch=32)).max[0] == 32
    assert profile_for([-1, 3, 640, 640], ExportOptions(dynamic=True, batch=12)).max[0] == 12  # max(8, batch)
    # a dynamic ONNX exported without --dynamic: pinned to the requested batch
    assert profile_for([-1, 3, 640, 640], ExportOptions(batch=2)) == Profile.fixed((2, 3, 640, 640))


def test_dynamic_hw_profile():
    p = profile_for([-1, 3, -1, -1], ExportOptions(img_size=(416, 640), dynamic=True, dynamic_hw=True, batch=2))
    assert p.min == (1, 3, 320, 320) and p.opt == (2, 3, 416, 640) and p.max == (8, 3, 832, 1280)
    fixed_hw = profile_for([-1, 3, -1, -1], ExportOptions(img_size=(416, 416), dynamic=True))
    assert fixed_hw.min[2:] == fixed_hw.max[2:] == (416, 416)


@pytest.mark.parametrize("dims, match", [([1, 3, 640], "must be"), ([1, -1, 640, 640], "channel")])
def test_bad_onnx_input(dims, match):
    with pytest.raises(ExportError, match=match):
        profile_for(dims, ExportOptions())


def test_calibration_shape():
    assert calibration_shape(Profile.fixed((4, 3, 416, 416))) == (4, 3, 416, 416)
    assert calibration_shape(Profile((1, 3, 320, 320), (2, 3, 640, 640), (16, 3, 1280, 1280))) == (8, 3, 640, 640)
    assert calibration_shape(Profile((1, 3, 640, 640), (1, 3, 640, 640), (4, 3, 640, 640)))[0] == 4


def test_trtexec_command():
    p = Profile((1, 3, 320, 320), (1, 3, 640, 640), (8, 3, 1280, 1280))
    cmd = trtexec_command(Path("my models/m.onnx"), Path("m.engine"), "images", p, shapes=True, half=True)
    assert cmd.startswith("trtexec '--onnx=my models/m.onnx' --saveEngine=m.engine")
    assert "--minShapes=images:1x3x320x320" in cmd and "--optShapes=images:1x3x640x640" in cmd
    assert "--maxShapes=images:8x3x1280x1280" in cmd and cmd.endswith("--fp16")
    plain = trtexec_command("m.onnx", "m.engine", "images", Profile.fixed((1, 3, 416, 416)), shapes=False, half=False)
    assert plain == "trtexec --onnx=m.onnx --saveEngine=m.engine"
    sized = trtexec_command("m.onnx", "m.engine", "images", p, shapes=False, half=False, workspace=1.5)
    assert sized == "trtexec --onnx=m.onnx --saveEngine=m.engine --memPoolSize=workspace:1536M"  # the builder's pool


def test_intermediate_onnx_path():
    assert intermediate_onnx_path("out/yolox_s_fp16.engine") == Path("out/yolox_s_fp16.onnx")


def test_timing_cache_path(tmp_path, monkeypatch):
    p = timing_cache_path(ENV, tmp_path)
    assert p == tmp_path / "tensorrt" / "timing-trt10.3.0-sm86-nvidia-geforce-rtx-3090.cache"
    monkeypatch.setenv("YOLOX_DEPLOY_CACHE", str(tmp_path / "c"))
    assert timing_cache_path(ENV).parent == tmp_path / "c" / "tensorrt"
    assert timing_cache_path({**ENV, "compute_capability": "8.9"}) != timing_cache_path(ENV)


# --- calibration feeding -------------------------------------------------------------------------------------
def _batches(sizes, hw=(32, 32)):
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 255, (n, 3, *hw)).astype(np.float64) for n in sizes]


def test_feeder_batches():
    batches = _batches([4, 4, 2])
    feeder = CalibrationFeeder(batches, (4, 3, 32, 32))
    got = []
    while (b := feeder.next_batch()) is not None:
        got.append(b)
    assert [b.shape for b in got] == [(4, 3, 32, 32)] * 3
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in got)
    np.testing.assert_allclose(got[0], batches[0].astype(np.float32))
    # the short last batch is filled with its own images, in order
    np.testing.assert_allclose(got[2], batches[2][[0, 1, 0, 1]].astype(np.float32))
    assert feeder.batches_fed == 3 and feeder.images_fed == 10
    assert feeder.next_batch() is None


@pytest.mark.parametrize("bad", [np.zeros((4, 3, 32, 16)), np.zeros((5, 3, 32, 32)), np.zeros((3, 32, 32))])
def test_feeder_rejects_batches_that_do_not_fit(bad):
    feeder = CalibrationFeeder([bad], (4, 3, 32, 32))
    with pytest.raises(ExportError, match="does not fit"):
        feeder.next_batch()


def test_feeder_cache_files(tmp_path):
    cache = tmp_path / "m.engine.calib"
    feeder = CalibrationFeeder([], (1, 3, 32, 32), cache_in=cache, cache_out=cache)
    assert feeder.read_cache() is None  # no file yet: TensorRT calibrates
    feeder.write_cache(memoryview(b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n"))
    assert cache.read_bytes().startswith(b"TRT-1003")
    assert feeder.read_cache() == cache.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["m.engine.calib"]  # no temporary left behind
    cache.write_bytes(b"")
    assert feeder.read_cache() is None  # an empty cache is not a cache
    CalibrationFeeder([], (1, 3, 32, 32)).write_cache(b"x")  # no cache_out: nothing written, no error
    with pytest.raises(ValueError):
        CalibrationFeeder([], (3, 32, 32))


def test_device_copy_needs_a_cuda_package():
    from yolox_deploy.export.tensorrt import DeviceBuffer, import_cudart

    have_copy = import_cudart() is not None or importlib.util.find_spec("pycuda") or torch.cuda.is_available()
    if have_copy:
        pytest.skip("checks the message on a machine without cuda-python, pycuda and CUDA PyTorch")
    with pytest.raises(BackendUnavailable, match="install PyTorch for your CUDA, or cuda-python of your driver"):
        DeviceBuffer(1024)


def test_calibration_fingerprint(tmp_path):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"model-a")
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.jpg")
        images[-1].write_bytes(b"x" * (i + 1))
    kw = {"method": "entropy", "shape": (8, 3, 416, 416), "preprocess": Preprocess(), "images": images,
          "tensorrt": "10.3.0"}
    base = calibration_fingerprint(onnx_file, **kw)
    assert calibration_fingerprint(onnx_file, **kw) == base
    assert calibration_fingerprint(onnx_file, **{**kw, "method": "minmax"}) != base
    assert calibration_fingerprint(onnx_file, **{**kw, "shape": (4, 3, 416, 416)}) != base
    assert calibration_fingerprint(onnx_file, **{**kw, "preprocess": Preprocess.legacy()}) != base
    assert calibration_fingerprint(onnx_file, **{**kw, "images": images[:2]}) != base
    onnx_file.write_bytes(b"model-b")
    assert calibration_fingerprint(onnx_file, **kw) != base


def test_reusable_calibration(tmp_path):
    engine = tmp_path / "m_int8.engine"
    assert reusable_calibration(engine, "abc") is None
    assert reusable_calibration(None, "abc") is None
    (tmp_path / "m_int8.engine.calib").write_bytes(b"TRT cache")
    assert reusable_calibration(engine, "abc") is None  # no sidecar says what the cache is for
    meta = sidecar_meta(ModelMeta.default(80, (416, 416)), ENV, input_name="images",
                        profile=Profile.fixed((1, 3, 416, 416)), options=ExportOptions(int8=True),
                        calibration={"fingerprint": "abc"})
    sidecar_path(engine).write_text(meta.to_json())
    assert reusable_calibration(engine, "abc") == tmp_path / "m_int8.engine.calib"
    assert reusable_calibration(engine, "other") is None
    sidecar_path(engine).write_text("{broken")
    assert reusable_calibration(engine, "abc") is None


# --- sidecar -------------------------------------------------------------------------------------------------
def test_sidecar_content_and_round_trip(tmp_path):
    opts = ExportOptions(img_size=(416, 416), dynamic=True, half=True, workspace=2.0)
    profile = profile_for([-1, 3, 416, 416], opts)
    meta = ModelMeta.default(80, (416, 416), model="yolox-nano", batch=None, decode_in_graph=True,
                             precision="fp16", format="tensorrt")
    full = sidecar_meta(meta, ENV, input_name="images", profile=profile, options=opts, onnx="yolox_nano.onnx")
    engine = tmp_path / "yolox_nano_fp16.engine"
    sidecar_path(engine).write_text(full.to_json())
    assert sidecar_path(engine).name == "yolox_nano_fp16.engine.json"

    raw = json.loads(sidecar_path(engine).read_text())
    assert raw["input_size"] == [416, 416] and raw["batch"] is None and raw["format"] == "tensorrt"
    record = raw["extra"]["tensorrt"]
    assert {k: record[k] for k in ENV} == ENV
    assert record["input"] == "images" and record["precision"] == "fp16" and record["fp16"] and not record["int8"]
    assert record["profile"] == {"min": [1, 3, 416, 416], "opt": [1, 3, 416, 416], "max": [8, 3, 416, 416]}
    assert record["workspace_gib"] == 2.0 and record["calibration"] is None and record["onnx"] == "yolox_nano.onnx"

    back = read_sidecar(engine)
    assert back == full
    assert Profile.from_dict(build_record(back)["profile"]) == profile
    assert check_compatibility(build_record(back), ENV) == []
    assert check_compatibility(build_record(back), {**ENV, "compute_capability": "9.0"})


# --- the ONNX handed to TensorRT -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_source(tiny_random_model):
    from yolox_deploy.export.source import load_source

    return load_source(tiny_random_model)


@needs_write_onnx
@pytest.mark.parametrize("nms", [False, True])
def test_onnx_for_tensorrt(tmp_path, tiny_source, nms):
    import onnx

    from yolox_deploy.export.tensorrt import write_tensorrt_onnx

    opts = ExportOptions(img_size=(128, 160), dynamic=True, half=True, nms=nms, max_det=50, simplify=False)
    path = tmp_path / "m.onnx"
    meta = write_tensorrt_onnx(tiny_source, opts, path)
    model = onnx.load(str(path))
    name, dims = onnx_input(path)
    assert name == "images" and dims[0] == -1 and dims[1:] == [3, 128, 160]
    assert profile_for(dims, opts) == Profile((1, 3, 128, 160), (1, 3, 128, 160), (8, 3, 128, 160))
    assert meta.precision == "fp32"  # FP16 is TensorRT's job, the ONNX stays FP32
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in model.graph.initializer
               if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    outputs = [o.name for o in model.graph.output]
    plugin = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    if nms:
        assert outputs == ["num_dets", "boxes", "scores", "labels"] and meta.nms_in_graph
        [node] = plugin
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["max_output_boxes"] == 50 and attrs["box_coding"] == 0
        assert list(node.output) == outputs
    else:
        assert outputs == ["output"] and not plugin and meta.decode_in_graph
        onnx.checker.check_model(model)


# --- without TensorRT: the ONNX step is kept, one error line -------------------------------------------------
def _export_cli(args):
    from yolox_deploy.cli.export import main

    return main(args)


def _error_lines(err):
    return [line for line in err.splitlines() if line.startswith("error:")]


@needs_write_onnx
@pytest.mark.skipif(HAVE_GPU, reason="checks the behaviour where TensorRT or the GPU is missing")
def test_cli_without_tensorrt_keeps_the_onnx_step(tmp_path, nano_pth, capsys, monkeypatch):
    import onnx

    import yolox_deploy.export.onnx as onnx_module

    out = tmp_path / "out" / "nano.engine"
    rc = _export_cli(["--weights", str(nano_pth), "--format", "trt", "--output", str(out), "--dynamic", "--half"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    [line] = _error_lines(err)
    assert "TensorRT" in line or "GPU" in line
    kept = tmp_path / "out" / "nano.onnx"
    assert str(kept) in line and "trtexec" in line and "--fp16" in line and "--maxShapes=images:8x3x416x416" in line
    # the engine trtexec makes has none of our metadata: its sidecar is written for it
    assert line.endswith(f"; its metadata is in {sidecar_path(out)})") and not out.exists()
    sidecar = read_sidecar(out)
    assert sidecar.decode_in_graph and sidecar.batch is None and sidecar.precision == "fp16"
    assert sidecar.format == "tensorrt" and build_record(sidecar) == {}  # TensorRT did not run: no build record
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["nano.engine.json", "nano.onnx"]  # no staging
    model = onnx.load(str(kept))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["output"]
    assert onnx_input(kept) == ("images", [-1, 3, 416, 416])

    # an existing ONNX beside the engine is never overwritten (--force is for the engine): known before the step
    kept.write_bytes(b"mine")
    with monkeypatch.context() as m:
        m.setattr(onnx_module, "onnx_to_convert", None)
        for force in ([], ["--force"]):
            rc = _export_cli(["--weights", str(nano_pth), "--format", "engine", "--output", str(out), *force])
            [line] = _error_lines(capsys.readouterr().err)
            assert rc == 2 and f"{kept} already exists, where the ONNX step for trtexec would be kept" in line
            assert kept.read_bytes() == b"mine"
            assert sorted(p.name for p in out.parent.iterdir()) == ["nano.engine.json", "nano.onnx"]

    # one made while the step ran is not replaced either
    monkeypatch.setattr(TensorRTExporter, "check_before", lambda self, source: None)
    rc = _export_cli(["--weights", str(nano_pth), "--format", "engine", "--output", str(out)])
    [line] = _error_lines(capsys.readouterr().err)
    assert rc == 2 and f"the ONNX step ran but {kept} already exists, so it was not kept there" in line
    assert kept.read_bytes() == b"mine"


@pytest.mark.skipif(HAVE_GPU, reason="checks the behaviour where TensorRT or the GPU is missing")
def test_onnx_source_without_tensorrt(tmp_path, nano_onnx, capsys):
    """A raw ONNX source kept raw is built from as it is; by default its decoded copy is the ONNX step."""
    from yolox_deploy.export.source import read_onnx_meta

    out = tmp_path / "new" / "authors.engine"
    rc = _export_cli(["--weights", str(nano_onnx), "--format", "tensorrt", "--output", str(out),
                      "--no-decode-in-graph"])
    [line] = _error_lines(capsys.readouterr().err)
    assert rc == 2 and f"the ONNX model to build from is {nano_onnx}" in line
    assert f"trtexec --onnx={nano_onnx} --saveEngine={out}" in line and "Shapes" not in line  # static input
    assert list(tmp_path.iterdir()) == [out.parent] and list(out.parent.iterdir()) == [sidecar_path(out)]
    assert not read_sidecar(out).decode_in_graph and read_sidecar(out).input_size == (416, 416)

    rc = _export_cli(["--weights", str(nano_onnx), "--format", "tensorrt", "--output", str(out)])
    [line] = _error_lines(capsys.readouterr().err)
    kept = out.with_suffix(".onnx")
    assert rc == 2 and f"the ONNX step ran and is at {kept}" in line
    assert read_onnx_meta(kept).decode_in_graph and read_sidecar(out).decode_in_graph
    assert sorted(out.parent.iterdir()) == [sidecar_path(out), kept]

    source = tmp_path / "m.onnx"  # the ONNX step's name beside m.engine is the source itself: never replaced
    source.write_bytes(nano_onnx.read_bytes())
    rc = _export_cli(["--weights", str(source), "--format", "tensorrt", "--force"])
    [line] = _error_lines(capsys.readouterr().err)
    assert rc == 2 and f"{source} is the source, where the ONNX step for trtexec would be kept" in line
    assert source.read_bytes() == nano_onnx.read_bytes()


@pytest.mark.skipif(HAVE_GPU, reason="checks the behaviour where TensorRT or the GPU is missing")
def test_int8_without_tensorrt_keeps_nothing(tmp_path, nano_onnx, unlabelled_images, capsys, monkeypatch):
    """trtexec cannot calibrate from the user's images: an ONNX step kept for it would be of no use, so the
    export is refused before any work (the ONNX step is never made)."""
    import yolox_deploy.export.onnx as onnx_module

    monkeypatch.setattr(onnx_module, "onnx_to_convert", None)
    out = tmp_path / "new" / "authors_int8.engine"
    rc = _export_cli(["--weights", str(nano_onnx), "--format", "tensorrt", "--output", str(out), "--int8",
                      "--calib-images", str(unlabelled_images), "--no-verify"])
    [line] = _error_lines(capsys.readouterr().err)
    assert rc == 2 and "INT8 calibration runs inside TensorRT" in line and "ONNX step" not in line
    assert list(tmp_path.iterdir()) == []


# --- the build's control flow, with a stand-in for the tensorrt module ----------------------------------------
class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def _fake_tensorrt(calls: dict, *, parse_ok: bool = True, fast_fp16: bool = True):
    """Just enough of the TensorRT 10 Python API for build_engine to run; records what it was asked."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = ENV["tensorrt"]

    class ILogger:
        Severity = _Severity

        def __init__(self):
            pass

    class Calibrator:
        def __init__(self):
            pass

    class Dims(tuple):
        pass

    class Tensor:
        def __init__(self, name, shape=()):
            self.name, self.shape = name, Dims(shape)

    class Network:
        num_inputs = 1

        def __init__(self):
            self.input, self.outputs = None, []
            calls["network"] = self

        def get_input(self, i):
            return self.input

        def get_output(self, i):
            return self.outputs[i]

    class ParserError:
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, path):
            import onnx

            calls["parsed"] = path
            graph = onnx.load(path, load_external_data=False).graph
            init = {i.name for i in graph.initializer}
            graph_in = [i for i in graph.input if i.name not in init][0]
            self.network.input = Tensor("images", [d.dim_value or -1 for d in graph_in.type.tensor_type.shape.dim])
            self.network.outputs = [Tensor(o.name) for o in graph.output]
            return parse_ok

        def get_error(self, i):
            return ParserError(f"node {i}: unsupported operator")

    class OptimizationProfile:
        def set_shape(self, name, lo, opt, hi):
            if calls.get("refuse_shape"):  # as TensorRT's Python API: a RuntimeError, not a -1 later
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self.shape = (name, tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return memoryview(b"timing:" + bytes(self.data))

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.int8_calibrator, self.calibration_profile = set(), [], None, None
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = (pool, size)

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, p):
            self.profiles.append(p.shape)
            return len(self.profiles) - 1

        def set_calibration_profile(self, p):
            self.calibration_profile = p.shape
            return True

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        platform_has_fast_fp16 = fast_fp16
        platform_has_fast_int8 = True

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            calls["config"] = config
            calls["build_thread"] = threading.current_thread().name
            if calls.get("interrupt") == "twice":  # a second Ctrl-C while a build winds down
                for _ in range(2):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.3)
                calls["finished"] = True
                return None
            if calls.get("interrupt"):  # Ctrl-C while TensorRT works: it asks its monitor after each step
                os.kill(os.getpid(), signal.SIGINT)
                calls["steps"] = 0
                while calls["steps"] < 1000 and config.progress_monitor.step_complete("build", calls["steps"]):
                    calls["steps"] += 1
                    time.sleep(0.01)
                return None  # a cancelled build
            cal = config.int8_calibrator
            if cal is not None:  # as TensorRT: a cache, or batches until None, then the new cache
                calls["cache_read"] = cal.read_calibration_cache()
                calls["batches"] = []
                if calls["cache_read"] is None:
                    while (ptrs := cal.get_batch(["images"])) is not None:
                        calls["batches"].append(ptrs)
                    cal.write_calibration_cache(memoryview(b"TRT-1003-EntropyCalibration2\n"))
            return memoryview(b"PLAN" + bytes(range(16)))

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.ILogger, trt.IProgressMonitor = ILogger, IProgressMonitor
    trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (Calibrator,), {})
    trt.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (Calibrator,), {})
    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    trt.init_libnvinfer_plugins = lambda logger, namespace: calls.setdefault("plugins", namespace)
    return trt


class _HostBuffer:
    """Stands in for DeviceBuffer: keeps the uploaded batches."""

    uploads: list = []

    @staticmethod
    def available_kind():
        return "host"

    def __init__(self, nbytes, device_index=0):
        self.nbytes, self.ptr = nbytes, 0x1000

    def upload(self, host):
        _HostBuffer.uploads.append(host.copy())

    def free(self):
        self.ptr = 0


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls))
    monkeypatch.setattr("yolox_deploy.export.tensorrt.current_environment", lambda version, index=None: dict(ENV))
    monkeypatch.setattr("yolox_deploy.export.tensorrt.DeviceBuffer", _HostBuffer)
    monkeypatch.setenv("YOLOX_DEPLOY_CACHE", str(tmp_path / "cache"))
    _HostBuffer.uploads = []
    return calls


@needs_write_onnx
def test_build_flow(tmp_path, tiny_random_model, fake_trt):
    from yolox_deploy.export import export

    out = tmp_path / "m.engine"
    result = export(tiny_random_model, "trt", out, img_size=128, dynamic=True, dynamic_hw=True, batch=2, half=True,
                    workspace=1.5, simplify=False, verify=False)
    assert out.read_bytes() == b"PLAN" + bytes(range(16))  # the plan exactly, no header
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "m.engine", "m.engine.json"]
    config = fake_trt["config"]
    assert fake_trt["network_flags"] == 0 and fake_trt["plugins"] == ""
    assert fake_trt["workspace"] == ("WORKSPACE", int(1.5 * 2**30))
    assert config.flags == {"FP16"} and config.int8_calibrator is None
    assert config.profiles == [("images", (1, 3, 128, 128), (2, 3, 128, 128), (8, 3, 256, 256))]
    record = build_record(read_sidecar(out))
    assert record["profile"]["max"] == [8, 3, 256, 256] and record["precision"] == "fp16"
    assert result.meta.batch is None and result.meta.dynamic_hw and result.meta.format == "tensorrt"
    # the plan keeps no metadata but its tensor names: the decoded head says what it is without the sidecar
    assert result.meta.decode_in_graph and [o.name for o in fake_trt["network"].outputs] == [DECODED_OUTPUT]
    timing = timing_cache_path(ENV, tmp_path / "cache")
    assert timing.read_bytes() == b"timing:"  # saved for the next build...

    export(tiny_random_model, "trt", out, img_size=128, simplify=False, verify=False, force=True)
    assert fake_trt["config"].cache.data == b"timing:"  # ...and loaded by it
    assert fake_trt["config"].profiles == [] and fake_trt["config"].flags == set()  # static: no profile

    export(tiny_random_model, "trt", out, img_size=128, simplify=False, verify=False, force=True, decode_in_graph=False)
    assert [o.name for o in fake_trt["network"].outputs] == ["output"]  # a raw head keeps its name
    export(tiny_random_model, "trt", out, img_size=128, simplify=False, verify=False, force=True, nms=True)
    assert [o.name for o in fake_trt["network"].outputs] == ["num_dets", "boxes", "scores", "labels"]


@needs_write_onnx
def test_a_profile_tensorrt_refuses_is_an_export_error(tmp_path, tiny_random_model, fake_trt):
    from yolox_deploy.errors import ExportError
    from yolox_deploy.export import export

    fake_trt["refuse_shape"] = True
    with pytest.raises(ExportError, match=r"TensorRT refused the shapes \(1, 3, 128, 128\)..\(8, 3, 128, 128\) "
                                          "of images: Shape provided for min is inconsistent"):
        export(tiny_random_model, "trt", tmp_path / "m.engine", img_size=128, dynamic=True, simplify=False,
               verify=False)
    assert not (tmp_path / "m.engine").exists()


def test_calibration_copies_with_pytorch_when_it_sees_the_gpu(monkeypatch):
    """cuda-python was taken first: a release newer than the driver's CUDA fails where PyTorch works."""
    from yolox_deploy.export import tensorrt as trt_export

    monkeypatch.setattr(trt_export, "import_cudart", lambda: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trt_export.DeviceBuffer.available_kind() == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trt_export.DeviceBuffer.available_kind() == "cuda-python"


@needs_write_onnx
def test_ctrl_c_during_a_build_cancels_it_and_leaves_nothing(tmp_path, tiny_random_model, fake_trt):
    """The build runs in a thread of its own: Ctrl-C reaches the main thread at once (inside TensorRT's
    callbacks it was swallowed), the progress monitor cancels the build at its next step, nothing is written."""
    from yolox_deploy.export import export

    fake_trt["interrupt"] = True
    with pytest.raises(KeyboardInterrupt):
        export(tiny_random_model, "trt", tmp_path / "m.engine", img_size=64, simplify=False, verify=False)
    assert fake_trt["build_thread"] == "tensorrt-build" and fake_trt["steps"] < 100
    assert list(tmp_path.iterdir()) == []
    fake_trt["interrupt"] = "twice"  # the second one waits for the build too (it still reads the buffers)
    with pytest.raises(KeyboardInterrupt):
        export(tiny_random_model, "trt", tmp_path / "m.engine", img_size=64, simplify=False, verify=False)
    assert fake_trt["finished"] and list(tmp_path.iterdir()) == []


@needs_write_onnx
def test_parser_errors_are_one_message(tmp_path, tiny_random_model, monkeypatch):
    from yolox_deploy.export import export

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt({}, parse_ok=False))
    monkeypatch.setattr("yolox_deploy.export.tensorrt.current_environment", lambda version, index=None: dict(ENV))
    out = tmp_path / "m.engine"
    with pytest.raises(ExportError) as e:
        export(tiny_random_model, "trt", out, img_size=64, simplify=False, verify=False)
    assert "could not parse" in str(e.value) and "node 0: unsupported operator; node 1" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@needs_write_onnx
@pytest.mark.skipif(not HAVE_CALIBRATION, reason="needs yolox_deploy.export.calibration")
def test_int8_calibration_flow(tmp_path, tiny_random_model, fake_trt, unlabelled_images):
    from yolox_deploy.export import export

    out = tmp_path / "m_int8.engine"
    kw = {"img_size": 64, "dynamic": True, "int8": True, "calib_images": unlabelled_images, "calib_count": 20,
          "calib_method": "minmax", "simplify": False, "verify": False}
    export(tiny_random_model, "trt", out, **kw)
    config = fake_trt["config"]
    assert config.flags == {"FP16", "INT8"} and type(config.int8_calibrator).__mro__[1].__name__ == "IInt8MinMaxCalibrator"
    assert config.calibration_profile == ("images", (8, 3, 64, 64), (8, 3, 64, 64), (8, 3, 64, 64))
    assert fake_trt["cache_read"] is None and len(fake_trt["batches"]) == 3  # 20 images in batches of 8
    assert all(u.shape == (8, 3, 64, 64) and u.dtype == np.float32 for u in _HostBuffer.uploads)
    assert 0 <= min(u.min() for u in _HostBuffer.uploads) and max(u.max() for u in _HostBuffer.uploads) <= 255
    cache = tmp_path / "m_int8.engine.calib"
    assert cache.read_bytes().startswith(b"TRT-1003")
    calib = build_record(read_sidecar(out))["calibration"]
    assert calib["method"] == "minmax" and calib["cache"] == cache.name and not calib["reused"]
    assert calib["images"] == 20 and calib["batches"] == 3 and calib["shape"] == [8, 3, 64, 64]
    # the last batch is completed with the first images (a fixed-shape calibration profile)
    np.testing.assert_array_equal(_HostBuffer.uploads[2][4:], _HostBuffer.uploads[0][:4])

    export(tiny_random_model, "trt", out, force=True, **kw)  # same model, images and settings: cache reused
    assert fake_trt["cache_read"] == cache.read_bytes() and fake_trt["batches"] == []
    calib = build_record(read_sidecar(out))["calibration"]
    assert calib["reused"] and calib["batches"] == 0 and cache.is_file()

    export(tiny_random_model, "trt", out, force=True, **{**kw, "calib_method": "entropy"})  # changed: recalibrated
    assert fake_trt["cache_read"] is None and len(fake_trt["batches"]) == 3


@needs_write_onnx
def test_no_gpu_keeps_the_onnx_step(tmp_path, tiny_random_model, monkeypatch):
    """TensorRT importable but no CUDA GPU: same outcome as without TensorRT."""
    if torch.cuda.is_available():
        pytest.skip("checks the behaviour on a machine without a CUDA GPU")
    from yolox_deploy.export import export

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt({}))
    out = tmp_path / "m.engine"
    with pytest.raises(BackendUnavailable) as e:
        export(tiny_random_model, "trt", out, img_size=64, simplify=False, verify=False)
    assert "no CUDA GPU" in str(e.value) and str(tmp_path / "m.onnx") in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine.json", "m.onnx"]


def test_exporter_used_directly_reports_the_reason(tmp_path, monkeypatch):
    """Without a final output (the exporter used outside ``export``) nothing is kept; the reason is reported."""
    exporter = TensorRTExporter(ExportOptions(), output=None)
    msg = exporter._unavailable("TensorRT is not installed", None, tmp_path / "x.onnx", "images", [1, 3, 64, 64],
                                Profile.fixed((1, 3, 64, 64)), ModelMeta.default(80, (64, 64)))
    assert msg == "TensorRT is not installed" and list(tmp_path.iterdir()) == []


# --- on a GPU with TensorRT ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    return tmp_path_factory.mktemp("trt-export")


def _build(weights, folder, name, **kw):
    from yolox_deploy.export import export

    return export(weights, "tensorrt", folder / name, model="yolox-nano", device="cuda", **kw)


def _torch_reference(nano_pth, batch, decode=True):
    from yolox_deploy.export.source import load_source
    from yolox_deploy.export.verify import reference_outputs

    source = load_source(nano_pth, model="yolox-nano")
    meta = source.meta.with_(decode_in_graph=decode)
    return reference_outputs(source, batch, meta)


def _dog_batch(dog_jpg, n=1, size=(416, 416)):
    from yolox_deploy.io.images import read_image
    from yolox_deploy.ops.letterbox import preprocess_batch

    image = read_image(dog_jpg)
    images = [image if i % 2 == 0 else image[:, ::-1].copy() for i in range(n)]
    return preprocess_batch(images, size)[0]


@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("half, tolerance", [(False, 1e-3), (True, 2e-2)])
def test_engine_parity_with_torch(engines, nano_pth, dog_jpg, half, tolerance):
    from yolox_deploy.export.verify import normalised_diff
    from yolox_deploy.runtimes.detector import open_backend

    result = _build(nano_pth, engines, f"nano_{'fp16' if half else 'fp32'}.engine", half=half, verify_image=dog_jpg)
    assert result.verification.passed
    record = build_record(read_sidecar(result.path))
    assert record["tensorrt"] and record["compute_capability"] and record["precision"] == ("fp16" if half else "fp32")
    batch = _dog_batch(dog_jpg)
    with open_backend(result.path, device="cuda") as backend:
        out = backend.infer(batch)[0].float().cpu().numpy()
    ref = _torch_reference(nano_pth, batch)
    assert normalised_diff(out, ref, result.meta) <= tolerance


@pytest.mark.tensorrt
@needs_trt
def test_dynamic_batch_engine(engines, nano_pth, dog_jpg):
    from yolox_deploy.errors import InputError
    from yolox_deploy.export.verify import normalised_diff
    from yolox_deploy.runtimes.detector import open_backend

    result = _build(nano_pth, engines, "nano_dynamic.engine", dynamic=True, max_batch=8)
    assert result.meta.batch is None
    with open_backend(result.path, device="cuda") as backend:
        for n in (1, 3, 8):
            batch = _dog_batch(dog_jpg, n)
            out = backend.infer(batch)[0].cpu().numpy()
            assert out.shape == (n, 3549, 85)
            assert normalised_diff(out, _torch_reference(nano_pth, batch), result.meta) <= 1e-3
        with pytest.raises(InputError, match="batch 9"):
            backend.infer(_dog_batch(dog_jpg, 9))


@pytest.mark.tensorrt
@needs_trt
def test_dynamic_hw_engine(engines, nano_pth, dog_jpg):
    from yolox_deploy.export.verify import normalised_diff
    from yolox_deploy.runtimes.detector import open_backend

    result = _build(nano_pth, engines, "nano_dynamic_hw.engine", dynamic=True, dynamic_hw=True)
    assert build_record(read_sidecar(result.path))["profile"]["max"] == [8, 3, 832, 832]
    with open_backend(result.path, device="cuda") as backend:
        for size in ((320, 320), (416, 640), (832, 832)):
            batch = _dog_batch(dog_jpg, 2, size)
            out = backend.infer(batch)[0].cpu().numpy()
            assert normalised_diff(out, _torch_reference(nano_pth, batch), result.meta.with_(input_size=size)) <= 1e-3


@pytest.mark.tensorrt
@needs_trt
def test_nms_engine_matches_the_python_path(engines, nano_pth, dog_jpg, unlabelled_images):
    from yolox_deploy import Detector
    from yolox_deploy.ops.match import match_detections

    result = _build(nano_pth, engines, "nano_nms.engine", nms=True, conf=0.25, iou=0.45, max_det=100,
                    verify_image=dog_jpg)  # the engine's head is not reachable: its detections are verified
    assert result.meta.nms_in_graph
    images = [dog_jpg, *sorted(unlabelled_images.iterdir())[:10]]
    with Detector(result.path, device="cuda") as det, Detector(nano_pth, model="yolox-nano", conf=0.25, nms=0.45,
                                                               max_det=100) as ref:
        for image in images:
            [got], [want] = det(image), ref(image)
            a = match_detections(want.xyxy, want.class_ids, got.xyxy, got.class_ids)
            assert a.matched >= 0.95 * max(len(want), len(got))


@pytest.mark.tensorrt
@needs_trt
def test_int8_engine_ap(engines, nano_pth, coco_tiny, unlabelled_images):
    from tests.conftest import REFERENCE_AP
    from yolox_deploy import Detector
    from yolox_deploy.eval.coco import AUTHORS_PROTOCOL, evaluate

    result = _build(nano_pth, engines, "nano_int8.engine", int8=True, calib_images=unlabelled_images)
    calib = build_record(read_sidecar(result.path))["calibration"]
    assert calib["images"] == 100 and (engines / "nano_int8.engine.calib").stat().st_size > 0
    with Detector(result.path, device="cuda", **AUTHORS_PROTOCOL) as det:
        ap = evaluate(det, coco_tiny).stats["AP"]
    assert abs(ap - REFERENCE_AP) <= 0.03

    again = _build(nano_pth, engines, "nano_int8.engine", int8=True, calib_images=unlabelled_images, force=True)
    assert build_record(read_sidecar(again.path))["calibration"]["reused"]


@pytest.mark.tensorrt
@needs_trt
def test_authors_onnx_to_engine(engines, nano_onnx, nano_pth, dog_jpg):
    from yolox_deploy.export import export
    from yolox_deploy.export.verify import normalised_diff
    from yolox_deploy.runtimes.detector import open_backend

    result = export(nano_onnx, "tensorrt", engines / "authors.engine", device="cuda", decode_in_graph=False)
    assert not result.meta.decode_in_graph and build_record(result.meta)["onnx"] == nano_onnx.name
    batch = _dog_batch(dog_jpg)
    with open_backend(result.path, device="cuda") as backend:
        out = backend.infer(batch)[0].cpu().numpy()
    assert normalised_diff(out, _torch_reference(nano_pth, batch, decode=False), result.meta) <= 1e-3


def test_a_timing_cache_that_cannot_be_saved_costs_a_warning_only(tmp_path, caplog):
    """A refused write is a WriteError since atomic_write names the file: the export failed after its build."""
    from types import SimpleNamespace

    from yolox_deploy.export.tensorrt import _save_timing_cache

    config = SimpleNamespace(get_timing_cache=lambda: SimpleNamespace(serialize=lambda: b"cache"))
    with caplog.at_level("WARNING"):
        _save_timing_cache(config, Path("/proc/tensorrt/timing.cache"))  # a folder no file can be made in
    assert "could not save the TensorRT timing cache /proc/tensorrt/timing.cache" in caplog.text
    _save_timing_cache(config, tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").read_bytes() == b"cache"


@needs_write_onnx
@pytest.mark.skipif(not HAVE_CALIBRATION, reason="needs yolox_deploy.export.calibration")
def test_calibration_cache_is_not_reused_when_an_image_taking_an_unreadable_ones_place_changes(
        tmp_path, tiny_random_model, fake_trt, unlabelled_images):
    """An unreadable file is skipped and the next image takes its place: that image is one of the calibration
    set, so a change to it must not let the previous cache be reused."""
    import shutil

    from yolox_deploy.export import export

    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # unreadable: b, c and d are calibrated on
    real = sorted(unlabelled_images.iterdir())
    for name, src in zip(("b.jpg", "c.jpg", "d.jpg"), real):
        shutil.copyfile(src, folder / name)
    out = tmp_path / "m_int8.engine"
    kw = {"img_size": 64, "int8": True, "calib_images": folder, "calib_count": 3, "simplify": False,
          "verify": False}
    export(tiny_random_model, "trt", out, **kw)
    assert fake_trt["cache_read"] is None and build_record(read_sidecar(out))["calibration"]["images"] == 3
    export(tiny_random_model, "trt", out, force=True, **kw)  # nothing changed: reused
    assert build_record(read_sidecar(out))["calibration"]["reused"]

    shutil.copyfile(real[5], folder / "d.jpg")  # an image calibrated on is replaced
    export(tiny_random_model, "trt", out, force=True, **kw)
    assert fake_trt["cache_read"] is None and len(fake_trt["batches"]) == 3  # calibrated again
    assert not build_record(read_sidecar(out))["calibration"]["reused"]


@needs_write_onnx
@pytest.mark.skipif(not HAVE_CALIBRATION, reason="needs yolox_deploy.export.calibration")
def test_a_dangling_link_in_the_calibration_folder_is_skipped(tmp_path, tiny_random_model, fake_trt,
                                                             unlabelled_images):
    """A link whose target is gone is listed and skipped with a warning, as any unreadable file: the cache's
    fingerprint does not stat it (a FileNotFoundError traceback)."""
    import shutil

    from yolox_deploy.export import export

    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "0.jpg").symlink_to(tmp_path / "gone.jpg")  # first by name
    for src in sorted(unlabelled_images.iterdir())[:2]:
        shutil.copyfile(src, folder / src.name)
    out = tmp_path / "m_int8.engine"
    export(tiny_random_model, "trt", out, img_size=64, int8=True, calib_images=folder, calib_count=2,
           simplify=False, verify=False)
    assert len(fake_trt["batches"]) == 2 and build_record(read_sidecar(out))["calibration"]["images"] == 2
