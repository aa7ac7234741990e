"""The TensorRT backend: what runs anywhere (environment checks, profiles, sidecars, metadata from shapes, the
errors on a machine without TensorRT) and, marked ``tensorrt``, engines on a GPU."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from yolox_deploy.errors import ArtefactError, BackendUnavailable, InputError
from yolox_deploy.meta import ModelMeta, Preprocess, read_sidecar, sidecar_path
from yolox_deploy.runtimes.tensorrt import (
    DECODED_OUTPUT,
    Profile,
    TensorSpec,
    build_record,
    check_compatibility,
    check_sidecar,
    cuda_index,
    ensure_compatible,
    meta_from_shapes,
    order_outputs,
    resolve_cuda_device,
    torch_dtype,
    version_key,
)

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = HAVE_TRT and torch.cuda.is_available()
needs_trt = pytest.mark.skipif(not HAVE_GPU, reason="needs TensorRT and a CUDA GPU")

ENV = {"tensorrt": "10.3.0", "gpu": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6", "cuda": "12.4"}


# --- environment ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, index", [("cuda:1", 1), ("1", 1), (2, 2), ("cuda", None), ("cpu", None),
                                           ("AUTO", None), ("gpu:0", 0), (None, None)])
def test_cuda_index(device, index):
    assert cuda_index(device) == index


@pytest.mark.parametrize("device", ["mps", "NPU", "cuda:x", "cuda:-1"])
def test_cuda_index_rejects_other_devices(device):
    with pytest.raises(InputError, match="CUDA GPU"):
        cuda_index(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_no_cuda_is_a_clear_error():
    with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
        resolve_cuda_device("cuda")


@pytest.mark.parametrize("version, key", [("10.3.0.26", (10, 3, 0)), ("10.0.1", (10, 0, 1)),
                                          ("8.6.1.post1", (8, 6, 1)), ("10", (10,))])
def test_version_key(version, key):
    assert version_key(version) == key


def test_same_environment_is_compatible():
    assert check_compatibility(ENV, dict(ENV)) == []
    assert check_compatibility(ENV, {**ENV, "tensorrt": "10.3.0.30", "cuda": "12.6"}) == []  # build / CUDA: fine


def test_other_tensorrt_release_is_refused():
    assert check_compatibility(ENV, {**ENV, "tensorrt": "10.3.1.4"})  # a plan loads only in its own release
    problems = check_compatibility(ENV, {**ENV, "tensorrt": "10.4.0"})
    assert len(problems) == 1 and "TensorRT 10.3.0" in problems[0] and "10.4.0" in problems[0]
    assert check_compatibility(ENV, {**ENV, "tensorrt": "8.6.1"})


def test_other_compute_capability_is_refused():
    here = {**ENV, "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    [problem] = check_compatibility(ENV, here)
    assert "8.6" in problem and "8.9" in problem and "RTX 3090" in problem and "L4" in problem


def test_both_problems_in_one_sentence():
    here = {"tensorrt": "10.7.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    with pytest.raises(ArtefactError) as e:
        ensure_compatible(ENV, here, "m.engine")
    msg = str(e.value)
    assert msg.startswith("m.engine cannot run here") and "10.7.0" in msg and "9.0" in msg and "\n" not in msg
    assert "rebuild" in msg


def test_unknown_fields_are_not_judged():
    assert check_compatibility({}, ENV) == []
    assert check_compatibility({"tensorrt": "10.3.0"}, {"compute_capability": "8.6"}) == []


# --- profiles ------------------------------------------------------------------------------------------------
def test_profile_bounds():
    p = Profile((1, 3, 320, 320), (4, 3, 640, 640), (8, 3, 1280, 1280))
    assert p.is_dynamic
    assert p.problem((1, 3, 320, 320)) is None and p.problem((8, 3, 1280, 1280)) is None
    assert "batch 9" in p.problem((9, 3, 640, 640)) and "1..8" in p.problem((9, 3, 640, 640))
    assert "height 288" in p.problem((1, 3, 288, 640))
    assert "width 1312" in p.problem((1, 3, 640, 1312))
    assert "4-d" in p.problem((3, 640, 640))
    assert Profile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_fixed_profile():
    p = Profile.fixed((1, 3, 416, 416))
    assert not p.is_dynamic
    assert p.problem((1, 3, 416, 416)) is None
    assert "(1)" in p.problem((2, 3, 416, 416))


@pytest.mark.parametrize("lo, opt, hi", [((2, 3), (1, 3), (4, 3)), ((1, 3), (1, 3), (1, 3, 3)), ((0, 3), (1, 3), (1, 3))])
def test_invalid_profiles(lo, opt, hi):
    with pytest.raises(ValueError):
        Profile(lo, opt, hi)


# --- tensors and metadata from the engine's shapes ----------------------------------------------------------
class _DType:
    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize("name, dtype", [("FLOAT", torch.float32), ("HALF", torch.float16), ("INT32", torch.int32),
                                         ("INT64", torch.int64), ("BOOL", torch.bool)])
def test_torch_dtype(name, dtype):
    assert torch_dtype(_DType(name)) is dtype


def test_torch_dtype_unknown():
    with pytest.raises(ArtefactError, match="FP8"):
        torch_dtype(_DType("FP8"))


def _spec(name, shape, is_input=False):
    return TensorSpec(name, tuple(shape), torch.float32, is_input)


def test_nms_outputs_in_pipeline_order():
    outs = [_spec(n, (1, 100)) for n in ("labels", "num_dets", "scores", "boxes")]
    assert [o.name for o in order_outputs(outs, nms_in_graph=True)] == ["num_dets", "boxes", "scores", "labels"]
    assert [o.name for o in order_outputs(outs, nms_in_graph=False)] == ["labels", "num_dets", "scores", "boxes"]


def test_meta_from_static_shapes():
    inp = _spec("images", (1, 3, 416, 416), True)
    meta = meta_from_shapes(inp, [_spec("output", (1, 3549, 85))], Profile.fixed(inp.shape), "nano.engine")
    assert meta.input_size == (416, 416) and meta.num_classes == 80 and meta.batch == 1
    assert not meta.decode_in_graph and not meta.dynamic_hw and meta.format == "tensorrt"
    assert meta.preprocess.is_identity
    legacy = meta_from_shapes(inp, [_spec("output", (1, 3549, 85))], Profile.fixed(inp.shape), "nano.engine", legacy=True)
    assert legacy.preprocess == Preprocess.legacy()


def test_meta_from_dynamic_shapes():
    inp = _spec("images", (-1, 3, -1, -1), True)
    prof = Profile((1, 3, 320, 320), (2, 3, 640, 640), (8, 3, 1280, 1280))
    meta = meta_from_shapes(inp, [_spec("output", (-1, -1, 8))], prof, "m.engine")
    assert meta.batch is None and meta.dynamic_hw and meta.input_size == (640, 640) and meta.num_classes == 3
    assert meta_from_shapes(inp, [_spec("output", (-1, -1, 8))], prof, "m.engine", img_size=416).input_size == (416, 416)


def test_a_decoded_head_is_known_by_its_name():
    """yolox-export's engines decode in the graph and name that output: a copy without its sidecar is not
    decoded a second time."""
    inp = _spec("images", (1, 3, 416, 416), True)
    meta = meta_from_shapes(inp, [_spec(DECODED_OUTPUT, (1, 3549, 85))], Profile.fixed(inp.shape), "nano.engine")
    assert meta.decode_in_graph and meta.input_size == (416, 416) and meta.num_classes == 80


def test_a_sidecar_that_does_not_describe_its_engine_is_refused():
    inp = _spec("images", (1, 3, 416, 416), True)
    decoded, raw = [_spec(DECODED_OUTPUT, (1, 3549, 85))], [_spec("output", (1, 3549, 85))]
    meta = ModelMeta.default(80, (416, 416), batch=1, decode_in_graph=True, format="tensorrt")
    check_sidecar(meta, inp, decoded, "nano.engine")
    check_sidecar(meta, inp, raw, "nano.engine")  # trtexec's plan of the decoding ONNX step keeps its name
    check_sidecar(meta.with_(decode_in_graph=False), inp, raw, "nano.engine")
    with pytest.raises(ArtefactError, match="it says a raw head output \\(the graph decodes it\\); re-export it"):
        check_sidecar(meta.with_(decode_in_graph=False), inp, decoded, "nano.engine")
    with pytest.raises(ArtefactError, match="input size 640x640 \\(the graph's is 416x416\\)"):
        check_sidecar(meta.with_(input_size=(640, 640)), inp, decoded, "nano.engine")
    dynamic = _spec("images", (-1, 3, -1, -1), True)
    check_sidecar(meta.with_(batch=None, input_size=(640, 640), dynamic_hw=True), dynamic, decoded, "nano.engine")


def test_nms_engine_without_sidecar_is_refused():
    inp = _spec("images", (1, 3, 640, 640), True)
    outs = [_spec("num_dets", (1, 1)), _spec("boxes", (1, 100, 4)), _spec("scores", (1, 100)), _spec("labels", (1, 100))]
    with pytest.raises(ArtefactError, match="re-export"):
        meta_from_shapes(inp, outs, Profile.fixed(inp.shape), "m.engine")


# --- sidecar ---------------------------------------------------------------------------------------------------
def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "m.engine"
    assert read_sidecar(engine) is None
    meta = ModelMeta.default(80, (416, 416), batch=None, format="tensorrt", extra={"tensorrt": dict(ENV)})
    sidecar_path(engine).write_text(meta.to_json())
    back = read_sidecar(engine)
    assert back == meta and build_record(back) == ENV
    assert build_record(ModelMeta.default(3, (64, 64))) == {}


def test_malformed_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(ArtefactError, match="not valid JSON"):
        read_sidecar(engine)


@pytest.mark.skipif(HAVE_TRT, reason="checks the message on a machine without TensorRT")
def test_detector_without_tensorrt(tmp_path):
    from yolox_deploy import Detector

    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(BackendUnavailable) as e:
        Detector(engine)
    msg = str(e.value)
    assert "tensorrt" in msg.lower() and "yolox-deploy[trt]" in msg and "\n" not in msg


@pytest.mark.skipif(HAVE_TRT, reason="checks the CLI on a machine without TensorRT")
def test_detect_cli_without_tensorrt(tmp_path, capsys, dog_jpg):
    from yolox_deploy.cli.detect import main

    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\x00" * 64)
    assert main([str(engine), "--source", str(dog_jpg), "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "yolox-deploy[trt]" in err[0]


# --- on a GPU with TensorRT ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_engine(nano_pth, dog_jpg, tmp_path_factory):
    from yolox_deploy.export import export

    out = tmp_path_factory.mktemp("trt-runtime") / "nano.engine"
    export(nano_pth, "tensorrt", out, model="yolox-nano", verify_image=dog_jpg, device="cuda")
    return out


@pytest.mark.tensorrt
@needs_trt
def test_detector_gpu_decode_path(fp32_engine, nano_pth, dog_jpg):
    """Outputs stay on the GPU, decode/NMS run there, and the detections are those of the torch model."""
    from yolox_deploy import Detector
    from yolox_deploy.io.images import read_image
    from yolox_deploy.ops.match import match_detections

    with Detector(fp32_engine, device="cuda") as det, Detector(nano_pth, model="yolox-nano") as ref:
        assert det.backend.output_device.startswith("cuda")
        batch, _ = det.preprocess([read_image(dog_jpg)])
        outs = det.infer(batch)
        assert all(isinstance(o, torch.Tensor) and o.is_cuda for o in outs)
        [got] = det(dog_jpg)
        [want] = ref(dog_jpg)
        assert len(got) == len(want) > 0
        agreement = match_detections(want.xyxy, want.class_ids, got.xyxy, got.class_ids)
        assert agreement.matched == len(want) and agreement.mean_iou > 0.99
        np.testing.assert_allclose(np.sort(got.scores), np.sort(want.scores), atol=2e-3)


@pytest.mark.tensorrt
@needs_trt
def test_cuda_tensor_input_is_used_in_place(fp32_engine):
    from yolox_deploy.runtimes.detector import open_backend

    with open_backend(fp32_engine, device="cuda") as backend:
        x = torch.full((1, 3, 416, 416), 114.0)
        a = backend.infer(x.numpy())[0]
        b = backend.infer(x.cuda())[0]
        torch.testing.assert_close(a, b)
        # a view starting off TensorRT's 256-byte alignment is copied, not refused (or read from the wrong place)
        odd = torch.full((1 * 3 * 416 * 416 + 1,), 114.0, device="cuda")[1:].view(1, 3, 416, 416)
        torch.testing.assert_close(backend.infer(odd)[0], a)
        with pytest.raises(InputError):
            backend.infer(np.zeros((2, 3, 416, 416), np.float32))


@pytest.mark.tensorrt
@needs_trt
def test_mismatched_sidecar_is_refused_before_loading(fp32_engine, tmp_path):
    engine = tmp_path / fp32_engine.name
    shutil.copyfile(fp32_engine, engine)
    meta = json.loads(sidecar_path(fp32_engine).read_text())
    meta["extra"]["tensorrt"]["compute_capability"] = "1.0"
    sidecar_path(engine).write_text(json.dumps(meta))
    from yolox_deploy.runtimes.detector import open_backend

    with pytest.raises(ArtefactError, match="compute capability 1.0"):
        open_backend(engine, device="cuda")


@pytest.mark.tensorrt
@needs_trt
def test_corrupt_engine(tmp_path):
    from yolox_deploy.runtimes.detector import open_backend

    engine = tmp_path / "bad.engine"
    engine.write_bytes(b"definitely not a plan" * 100)
    with pytest.raises(ArtefactError, match="not a TensorRT engine"):
        open_backend(engine, device="cuda")


@pytest.mark.tensorrt
@needs_trt
def test_engine_without_sidecar(fp32_engine, tmp_path):
    """The plan alone (as trtexec writes it) loads; metadata comes from its shapes."""
    from yolox_deploy.runtimes.detector import open_backend

    engine = tmp_path / "bare.plan"
    shutil.copyfile(fp32_engine, engine)
    with open_backend(engine, device="cuda") as backend:
        assert backend.meta.input_size == (416, 416) and backend.meta.num_classes == 80
        assert backend.meta.decode_in_graph  # known by its output's name: not decoded a second time
        out = backend.infer(np.full((1, 3, 416, 416), 114.0, np.float32))[0]
        assert tuple(out.shape) == (1, 3549, 85)


@pytest.mark.parametrize("version", ["11.0.0", "9.0.1"])
def test_a_tensorrt_other_than_10_is_refused_with_the_pin(monkeypatch, version):
    """TensorRT 11 removed the FP16 / INT8 builder flags and calibrators the builder uses."""
    import types

    from yolox_deploy.runtimes.tensorrt import import_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    with pytest.raises(BackendUnavailable, match=rf"drives TensorRT 10.x, and TensorRT {version} is installed; "
                                                 r"pip install 'tensorrt>=10,<11'"):
        import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.26"))
    assert import_tensorrt().__version__ == "10.3.0.26"
