"""ONNX Runtime backend: metadata (ours, or inferred for the authors' files), sizes, devices, options, corrupt
files, and the CUDA IO-binding path (GPU only)."""

from __future__ import annotations

import os
import re
import sys
import types

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from yolox_deploy import Detector  # noqa: E402
from yolox_deploy.errors import ArtefactError, BackendUnavailable, InputError  # noqa: E402
from yolox_deploy.export.base import ExportOptions  # noqa: E402
from yolox_deploy.export.onnx import write_onnx  # noqa: E402
from yolox_deploy.export.source import load_source  # noqa: E402
from yolox_deploy.io.images import read_image  # noqa: E402
from yolox_deploy.ops.letterbox import preprocess_batch  # noqa: E402
from yolox_deploy.runtimes import find_backend  # noqa: E402
from yolox_deploy.runtimes.detector import open_backend  # noqa: E402
from yolox_deploy.runtimes.onnxruntime import OnnxRuntimeBackend, parse_device  # noqa: E402

from ..conftest import run_in_fork_while_held  # noqa: E402

HAVE_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not (HAVE_ORT_CUDA and _torch_cuda()),
                               reason="needs onnxruntime-gpu (CUDAExecutionProvider) and a CUDA GPU for torch")


@pytest.fixture(scope="module")
def tiny_files(tiny_random_model, tmp_path_factory):
    """A 3-class random nano exported twice: dynamic batch + size (64x96), and fixed 1x64x64 with NMS."""
    folder = tmp_path_factory.mktemp("ort")
    source = load_source(tiny_random_model)
    dynamic = folder / "tiny_dynamic.onnx"
    meta = write_onnx(source, ExportOptions(img_size=(64, 96), dynamic=True, dynamic_hw=True, simplify=False), dynamic)
    nms = folder / "tiny_nms.onnx"
    nms_meta = write_onnx(source, ExportOptions(img_size=(64, 64), nms=True, conf=0.0, max_det=10, simplify=False), nms)
    return {"dynamic": (dynamic, meta), "nms": (nms, nms_meta)}


def _without_metadata(src, dst):
    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.save(model, str(dst))
    return dst


# --- metadata ------------------------------------------------------------------------------------------------
def _with_metadata(src, dst, **change):
    """``src`` with some fields of its yolox-deploy metadata changed (as a hand edit would)."""
    import json

    from yolox_deploy.meta import META_KEY

    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            prop.value = json.dumps({**json.loads(prop.value), **change})
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("which,change,message", [
    ("nms", {"input_size": [32, 32]}, "input size 32x32 (the graph's is 64x64)"),
    ("nms", {"batch": 4}, "batch 4 (the graph's is 1)"),
    ("nms", {"dynamic_hw": True}, "a dynamic input size (the graph's is fixed)"),
    ("nms", {"nms_in_graph": False}, "no NMS in the graph (the graph has it)"),
    ("dynamic", {"nms_in_graph": True}, "says NMS in the graph"),
])
def test_metadata_that_contradicts_the_graph_is_refused_at_load(tiny_files, tmp_path, which, change, message):
    path = _with_metadata(tiny_files[which][0], tmp_path / "edited.onnx", **change)
    with pytest.raises(ArtefactError, match="edited.onnx: its metadata does not describe its graph: .*" + re.escape(message)):
        Detector(path)


@pytest.mark.parametrize("change,message", [
    ({"class_names": ["a", "b"]}, "has shape [1, 126, 8], not the [N, 126, 7]"),
    ({"input_size": [96, 96]}, "has shape [1, 126, 8], not the [N, 189, 8]"),
])
def test_a_head_output_other_than_the_metadata_implies_is_refused(tiny_files, tmp_path, change, message):
    """Sizes and labels a dynamic graph cannot contradict at load show in its output: never wrong boxes or names."""
    path = _with_metadata(tiny_files["dynamic"][0], tmp_path / "edited.onnx", dynamic_hw=False, **change)
    det = Detector(path, img_size=(64, 96) if "input_size" not in change else None)
    with pytest.raises(ArtefactError, match="edited.onnx: .*" + re.escape(message)):  # the graph's: 64x96, 3 classes
        det.postprocess([np.zeros((1, 126, 8), np.float32)], np.ones(1), [(64, 96)])


def test_registered_for_onnx_files(nano_onnx):
    assert find_backend(nano_onnx) is OnnxRuntimeBackend
    info = OnnxRuntimeBackend.info
    assert info.devices == ("cpu", "cuda", "tensorrt") and info.extra == "onnx"


def test_metadata_from_the_session(tiny_files):
    path, meta = tiny_files["dynamic"]
    with open_backend(path) as backend:
        assert backend.meta == meta
        assert backend.input_shape == (None, 3, 64, 96)
        assert backend.providers == ["CPUExecutionProvider"] and backend.output_device == "cpu"


def test_authors_onnx_without_metadata(nano_onnx):
    with open_backend(nano_onnx) as backend:
        m = backend.meta
        assert m.input_size == (416, 416) and m.batch == 1 and m.num_classes == 80
        assert not m.decode_in_graph and not m.nms_in_graph and not m.dynamic_hw and m.format == "onnx"
        assert m.class_names[0] == "person" and m.preprocess.is_identity
        with pytest.raises(InputError, match="batch 1"):
            backend.infer(np.zeros((2, 3, 416, 416), np.float32))
        with pytest.raises(InputError, match="416x416"):
            backend.infer(np.zeros((1, 3, 320, 320), np.float32))
    with open_backend(nano_onnx, legacy=True) as backend:
        assert backend.meta.preprocess.color == "rgb" and backend.meta.preprocess.mean is not None
    assert m.model == "yolox-nano"  # the file does not record it: recognised by its parameter count
    assert Detector(nano_onnx, model="nano").meta.model == "yolox-nano"
    with pytest.raises(InputError, match="is yolox-nano, not yolox-s; drop model .*metadata or weights say"):
        Detector(nano_onnx, model="yolox-s")
    with pytest.raises(InputError, match="unknown model 'yolox-nan0'"):
        Detector(nano_onnx, model="yolox-nan0")



def test_without_the_onnx_package_a_file_still_runs(nano_onnx, dog_jpg, monkeypatch):
    """``onnx`` reads the graph for the canvas session and the variant of a file that does not record it; without
    it the file runs all the same (canvases converted in numpy, the variant unknown) with the same detections."""
    with Detector(nano_onnx) as det:
        assert det.backend._canvas_session is not None and det.meta.model == "yolox-nano"
        [want] = det(dog_jpg)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with Detector(nano_onnx) as det:
        assert det.backend._canvas_session is None and det.meta.model is None
        [got] = det(dog_jpg)
    assert len(got) == len(want) >= 3 and list(got.names) == list(want.names)
    np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.05)

def test_authors_onnx_detections_match_the_checkpoint(nano_onnx, nano_pth, dog_jpg):
    with Detector(nano_onnx) as det:
        [got] = det(dog_jpg)
    with Detector(nano_pth, model="yolox-nano") as ref_det:
        [ref] = ref_det(dog_jpg)
    assert len(got) == len(ref) == 5 and {"dog", "bicycle"} <= set(got.names)
    assert (got.class_ids == ref.class_ids).all()
    np.testing.assert_allclose(got.xyxy, ref.xyxy, atol=1e-2)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)


def test_img_size(nano_onnx, tiny_files, tmp_path):
    with pytest.raises(InputError, match="416x416"):
        open_backend(nano_onnx, img_size=(320, 320))  # a fixed graph refuses another size
    with open_backend(nano_onnx, img_size=416) as backend:  # its own size is fine
        assert backend.meta.input_size == (416, 416)
    path, _ = tiny_files["dynamic"]
    with open_backend(path, img_size=(128, 64)) as backend:  # a dynamic one takes it
        assert backend.meta.input_size == (128, 64)
        [out] = backend.infer(np.zeros((2, 3, 128, 64), np.float32))
        assert out.shape == (2, 16 * 8 + 8 * 4 + 4 * 2, 8)
        [out] = backend.infer(np.zeros((1, 3, 32, 32), np.float32))  # any size per call
        assert out.shape == (1, 16 + 4 + 1, 8)
    bare = _without_metadata(path, tmp_path / "bare.onnx")
    with pytest.raises(ArtefactError, match="dynamic"):
        open_backend(bare)  # no metadata and no size: nothing says what to feed it
    with open_backend(bare, img_size=(96, 64)) as backend:
        assert backend.meta.input_size == (96, 64) and backend.meta.dynamic_hw and backend.meta.batch is None
        assert backend.meta.num_classes == 3 and backend.meta.decode_in_graph  # the graph's Exp: it decodes
    with pytest.raises(InputError, match="the model has 3 classes, not 80"):
        Detector(path, num_classes=80)


def test_a_graph_without_metadata_shows_whether_it_decodes(nano_onnx, tiny_files, tiny_random_model, tmp_path):
    """The decode's Exp is in the graph or not: decode_in_graph=True on the authors' raw graph gave boxes a
    few pixels wide in the corner; on a decoding graph without metadata it is found without the option."""
    with pytest.raises(InputError, match=r"yolox_nano.onnx has a raw output \(its metadata or graph says so\); "
                                         "decode_in_graph=True"):
        open_backend(nano_onnx, decode_in_graph=True)
    bare = _without_metadata(tiny_files["dynamic"][0], tmp_path / "bare.onnx")
    with pytest.raises(InputError, match="bare.onnx decodes its boxes"):
        open_backend(bare, img_size=64, decode_in_graph=False)
    fixed = tmp_path / "fixed.onnx"
    write_onnx(load_source(tiny_random_model), ExportOptions(img_size=(64, 64), simplify=False), fixed)
    assert load_source(_without_metadata(fixed, fixed)).meta.decode_in_graph  # an export from it decodes once


def test_the_file_opened_is_the_one_run(tiny_files, nano_onnx, tmp_path, monkeypatch):
    """Float batches re-open the plain session from the file: from the current folder (a chdir since broke it)
    and only while it is the file opened (a file replaced since ran another model under the first's metadata)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_files["dynamic"][0], "m.onnx")
    x = np.zeros((1, 3, 64, 96), np.float32)
    with open_backend("m.onnx") as backend:
        monkeypatch.chdir("/")
        backend.infer(x)
    monkeypatch.chdir(tmp_path)
    with open_backend("m.onnx") as backend:
        shutil.copy(nano_onnx, "m.onnx")
        with pytest.raises(ArtefactError, match="m.onnx is not the file this backend opened"):
            backend.infer(x)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_child_forked_while_the_session_was_being_opened_opens_it(tiny_files):
    """The session for float batches opens on first use, under a lock: a child forked while another thread of
    its parent held that lock waited for it forever."""
    with Detector(tiny_files["dynamic"][0]) as det:
        backend = det.backend
        assert backend._session is None  # the canvas session serves the pipeline
        x = np.zeros((1, 3, 64, 96), np.float32)
        assert run_in_fork_while_held(backend._session_lock, lambda: backend.infer(x)[0].shape) == \
            (0, str(backend.infer(x)[0].shape))


def test_the_tensorrt_providers_cache_follows_the_cache_folder(tmp_path, monkeypatch, caplog):
    """It was ~/.cache whatever $YOLOX_DEPLOY_CACHE said, and a read-only home stopped the open."""
    from yolox_deploy.runtimes.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend.__new__(OnnxRuntimeBackend)  # the provider list alone: no TensorRT here
    backend._kind, backend._device_id, backend.options = "tensorrt", 0, {}
    monkeypatch.setenv("YOLOX_DEPLOY_CACHE", str(tmp_path / "cache"))
    trt, _, _ = backend._providers()
    assert trt[1]["trt_engine_cache_path"] == str(tmp_path / "cache" / "ort-tensorrt")
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("YOLOX_DEPLOY_CACHE", str(tmp_path / "file" / "cache"))  # cannot be made
    trt, _, _ = backend._providers()
    assert trt[1]["trt_engine_cache_enable"] is False and "cannot be written" in caplog.text


def test_nms_graph_outputs(tiny_files):
    path, meta = tiny_files["nms"]
    with open_backend(path) as backend:
        assert backend.meta.nms_in_graph and backend.meta.max_det == 10
        num_dets, boxes, scores, labels = backend.infer(np.zeros((1, 3, 64, 64), np.float32))
    assert num_dets.tolist() == [[10]] and boxes.shape == (1, 10, 4) and labels.dtype == np.int32
    with Detector(path) as det:
        [dets] = det(np.full((50, 70, 3), 114, np.uint8))
    assert len(dets) == 10 and set(dets.names) <= {"a", "b", "c"}


def test_nms_graph_thresholds_can_only_be_tightened(tiny_files, caplog):
    """The graph's NMS ran with its export settings (conf 0.0, max 10): a Detector's higher conf and lower
    max_det cut its output; settings it cannot apply are named in one warning."""
    path, _ = tiny_files["nms"]
    image = np.full((50, 70, 3), 114, np.uint8)
    with Detector(path) as det:
        assert (det.conf, det.nms, det.max_det) == (0.0, 0.45, 10)  # the graph's own
        [full] = det(image)
    assert len(full) == 10 and not caplog.records
    cut = float(full.scores[3])
    with Detector(path, conf=cut, max_det=8) as det:
        [d] = det(image)
    assert d == full[: min(8, int((full.scores >= cut).sum()))] and not caplog.records
    with Detector(path, max_det=2, nms=0.6, class_agnostic=True) as det:
        assert d.scores.tolist()[:2] == det(image)[0].scores.tolist()
        # the settings in effect, as the Detector shows them (yolox-eval printed the refused ones)
        assert (det.nms, det.class_agnostic) == (0.45, False) and "nms=0.45" in repr(det)
    [warning] = caplog.records
    assert "tiny_nms.onnx runs NMS inside its graph" in warning.message
    assert "NMS IoU 0.6 (the graph's is 0.45)" in warning.message and "class-agnostic" in warning.message
    caplog.clear()
    # more than the graph keeps, no cap, or the default's number given (it was taken for the default): it keeps
    # 10, and says so
    for asked in (50, None, int("300")):
        with Detector(path, max_det=asked) as det:
            assert det.max_det == 10 and len(det(image)[0]) == 10
        [warning] = caplog.records
        said = "None (no cap)" if asked is None else asked
        assert f"max_det {said} (the graph keeps at most 10)" in warning.message
        caplog.clear()


def test_tensorrt_plugin_graph_is_refused_on_the_cpu(tiny_files, tmp_path):
    path = tmp_path / "trt.onnx"
    write_onnx(load_source(tiny_files["dynamic"][0]), ExportOptions(img_size=(64, 96), dynamic=True, nms=True), path,
               nms_plugin="tensorrt")
    with pytest.raises(ArtefactError, match="trt.onnx.*TensorRT"):
        open_backend(path)


# --- devices and options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,expected", [("cpu", ("cpu", 0)), ("cuda", ("cuda", 0)), ("cuda:1", ("cuda", 1)),
                                             ("0", ("cuda", 0)), ("TensorRT:2", ("tensorrt", 2)),
                                             ("trt", ("tensorrt", 0)), ("gpu", ("cuda", 0))])
def test_parse_device(device, expected):
    assert parse_device(device) == expected


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:1", ""])
def test_unknown_device(device, nano_onnx):
    with pytest.raises(InputError, match="device"):
        open_backend(nano_onnx, device=device)


@pytest.mark.skipif(HAVE_ORT_CUDA, reason="checks the message when onnxruntime has no CUDA provider")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tensorrt"])
def test_gpu_device_without_cuda_provider(device, nano_onnx):
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu|CUDA"):
        open_backend(nano_onnx, device=device)
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu|CUDA"):  # told without an artefact too
        OnnxRuntimeBackend.check_device(device)


def test_threads_and_optimisation_level(nano_onnx):
    with open_backend(nano_onnx, threads=1, opt_level="basic") as backend:
        options = backend.session.get_session_options()
        assert options.intra_op_num_threads == 1
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(InputError, match="opt_level"):
        open_backend(nano_onnx, opt_level="max")


def test_concurrent_calls(tiny_files):
    """ONNX Runtime sessions are thread-safe for run(); the backend adds no shared state per call."""
    from concurrent.futures import ThreadPoolExecutor

    path, _ = tiny_files["dynamic"]
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, (1, 3, 64, 96)).astype(np.float32) for _ in range(6)]
    with open_backend(path) as backend:
        expected = [backend.infer(b)[0] for b in batches]
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda b: backend.infer(b)[0], batches))
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e, g)


# --- corrupt files -------------------------------------------------------------------------------------------
def _corruptions(nano_onnx, folder):
    data = nano_onnx.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "truncated-header": data[:100],
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text": b"this is not an onnx model\n" * 10,
    }
    out = {}
    for name, blob in files.items():
        path = folder / f"{name}.onnx"
        path.write_bytes(blob)
        out[name] = path
    return out


def test_corrupt_files_raise_artefact_error(nano_onnx, tmp_path):
    for name, path in _corruptions(nano_onnx, tmp_path).items():
        with pytest.raises(ArtefactError, match=path.name) as info:
            Detector(path)
        assert "\n" not in str(info.value), name


def test_corrupt_files_in_yolox_detect(nano_onnx, dog_jpg, tmp_path, capsys):
    from yolox_deploy.cli.detect import main

    for name, path in _corruptions(nano_onnx, tmp_path).items():
        rc = main([str(path), "--source", str(dog_jpg), "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2, name
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and path.name in lines[0], (name, err)
        assert "Traceback" not in err


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Detector(tmp_path / "nope.onnx")


# --- what the backend adds -----------------------------------------------------------------------------------
def test_outputs_are_handed_over_without_a_copy(nano_onnx):
    """The backend passes the session's output arrays on as they are (its cost is timed in benchmarks/)."""
    batch = np.zeros((1, 3, 416, 416), np.float32)
    with open_backend(nano_onnx) as backend:
        result = [np.zeros((1, 3549, 85), np.float32)]
        backend._session = types.SimpleNamespace(run=lambda names, feed: result)  # a stand-in for the session
        assert backend.infer(batch) is result


def _with_an_extra_output(src, dst):
    """``src`` with a second output (the first node's result), as graphs exported with debug outputs have."""
    model = onnx.load(str(src))
    model.graph.output.append(onnx.helper.make_tensor_value_info(model.graph.node[0].output[0],
                                                                 onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(dst))
    return dst


def test_a_graph_with_an_extra_output_runs(tiny_files, tmp_path, rng):
    path, _ = tiny_files["dynamic"]
    extra = _with_an_extra_output(path, tmp_path / "extra.onnx")
    batch = rng.uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    with open_backend(path) as ours, open_backend(extra) as other:
        assert np.array_equal(other.infer(batch)[0], ours.infer(batch)[0])


# --- GPU -----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gpu
def test_cuda_outputs_stay_on_the_gpu(nano_onnx, dog_jpg):
    import torch

    batch = preprocess_batch([read_image(dog_jpg)], (416, 416))[0]
    with open_backend(nano_onnx) as cpu:
        [expected] = cpu.infer(batch)
    with open_backend(nano_onnx, device="cuda:0") as gpu:
        assert gpu.output_device == "cuda:0" and gpu.providers[0] == "CUDAExecutionProvider"
        [out] = gpu.infer(batch)
        assert isinstance(out, torch.Tensor) and out.device == torch.device("cuda", 0)
        [from_tensor] = gpu.infer(torch.from_numpy(batch).cuda())
    np.testing.assert_allclose(out.cpu().numpy(), expected, atol=1e-3)
    np.testing.assert_allclose(from_tensor.cpu().numpy(), expected, atol=1e-3)


@pytest.mark.gpu
@needs_gpu
def test_cuda_detector_matches_cpu(tiny_files, nano_onnx, dog_jpg):
    with Detector(nano_onnx) as cpu, Detector(nano_onnx, device="cuda") as gpu:
        [a], [b] = cpu(dog_jpg), gpu(dog_jpg)
    assert (a.class_ids == b.class_ids).all()
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-2)
    path, _ = tiny_files["nms"]  # NMS outputs (int32 and float) bound to GPU tensors too
    with open_backend(path, device="cuda") as gpu:
        num_dets, boxes, scores, labels = gpu.infer(np.zeros((1, 3, 64, 64), np.float32))
    assert num_dets.is_cuda and labels.dtype.is_floating_point is False and boxes.shape == (1, 10, 4)
    assert int(num_dets[0, 0]) == 10


@pytest.mark.gpu
@needs_gpu
def test_cuda_runs_a_graph_with_an_extra_output(tiny_files, tmp_path, rng):
    """Only the outputs the pipeline reads are bound to tensors of known shapes (the extra one had none)."""
    path, _ = tiny_files["dynamic"]
    extra = _with_an_extra_output(path, tmp_path / "extra.onnx")
    batch = rng.uniform(0, 255, (2, 3, 64, 96)).astype(np.float32)
    with open_backend(path) as cpu, open_backend(extra, device="cuda") as gpu:
        [expected], [out] = cpu.infer(batch), gpu.infer(batch)
    np.testing.assert_allclose(out.cpu().numpy(), expected, atol=1e-3)


# --- artefacts made by other tools -------------------------------------------------------------------------
def test_a_decoded_output_without_metadata_is_said_by_the_option(tiny_files, tmp_path, rng):
    """The dynamic graph decodes; without metadata it would be read as raw (boxes decoded twice) unless told."""
    path, meta = tiny_files["dynamic"]
    bare = _without_metadata(path, tmp_path / "decoded.onnx")
    batch = rng.uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    with open_backend(path) as ours, open_backend(bare, img_size=(64, 96), decode_in_graph=True) as told:
        assert told.meta.decode_in_graph and np.array_equal(told.infer(batch)[0], ours.infer(batch)[0])
    with pytest.raises(InputError, match="tiny_dynamic.onnx decodes its boxes .*decode_in_graph=False describes"):
        open_backend(path, decode_in_graph=False)


def test_a_half_precision_graph_gets_a_half_precision_input(tiny_files, tmp_path, rng, monkeypatch):
    from onnx import TensorProto, helper, numpy_helper

    path, _ = tiny_files["dynamic"]
    model = onnx.load(str(path))
    for init in model.graph.initializer:  # every float weight to float16, Casts around the graph's float32 ops
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    half = tmp_path / "half.onnx"
    graph_in, graph_out = model.graph.input[0], model.graph.output[0]
    model.graph.node.insert(0, helper.make_node("Cast", ["images_fp16"], [graph_in.name], to=TensorProto.FLOAT))
    for init in list(model.graph.initializer):
        model.graph.node.insert(0, helper.make_node("Cast", [init.name + "_h"], [init.name], to=TensorProto.FLOAT))
        init.name += "_h"
    model.graph.node.append(helper.make_node("Cast", [graph_out.name], ["output_fp16"], to=TensorProto.FLOAT16))
    graph_in.name, graph_out.name = "images_fp16", "output_fp16"
    graph_in.type.tensor_type.elem_type = graph_out.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(model, str(half))
    batch = rng.uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    with open_backend(half) as backend, open_backend(path) as ref:
        out = backend.infer(batch)[0]
        assert out.dtype == np.float16 and np.abs(out.astype(np.float32) - ref.infer(batch)[0]).max() < 1.0
    assert isinstance(Detector(half)(np.full((60, 90, 3), 100, np.uint8))[0].scores, np.ndarray)
    # without metadata the graph's weights (or, without onnx, its input type) say it is FP16 (it was called fp32)
    bare = _without_metadata(half, tmp_path / "half_bare.onnx")
    with open_backend(bare, img_size=(64, 96), decode_in_graph=True) as backend:
        assert backend.meta.precision == backend.compute_precision == "fp16"
    from yolox_deploy.utils.onnxgraph import described_by_graph  # what an export from it records too

    assert described_by_graph(onnx.load(str(bare)).graph)["precision"] == "fp16"
    with open_backend(_without_metadata(path, tmp_path / "bare.onnx"), img_size=(64, 96)) as backend:
        assert backend.meta.precision == "fp32"
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnx", None)
        with open_backend(bare, img_size=(64, 96), decode_in_graph=True) as backend:
            assert backend.meta.precision == "fp16"


def test_external_weights_missing_beside_the_model_are_named(tiny_files, tmp_path):
    path, _ = tiny_files["dynamic"]
    model = onnx.load(str(path))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    assert Detector(tmp_path / "ext.onnx").meta.num_classes == 3
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ArtefactError, match=r"ext.onnx keeps its weights in ext.onnx.data, which is not beside it"):
        Detector(tmp_path / "ext.onnx")


@pytest.mark.parametrize("what,message", [
    ("nhwc", r"input must be \[N, 3, H, W\] \(channels first\), has shape \[1, 64, 96, 3\]"),
    ("labels first", r"cannot read the class count from output 'labels' of shape \[1, 100\]"),
    # another exporter's [N, 5 + C, anchors] head was taken as 79 classes and failed at the first call
    ("transposed", r"output 'output' of shape \[1, 85, 84\] has 85 rows, not the 84 anchors of a 64x64 input "
                   r"\(\[N, 5 \+ classes, anchors\]\)"),
])
def test_graphs_that_are_no_yolox_head_are_refused_at_load(tmp_path, what, message):
    from onnx import TensorProto, helper

    if what == "nhwc":
        inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 64, 96, 3])]
        outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 84, 8])]
        nodes = [helper.make_node("Reshape", ["images", "shape"], ["output"])]
        inits = [helper.make_tensor("shape", TensorProto.INT64, [3], [1, 84, 8])]
    elif what == "transposed":
        inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])]
        outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 85, 84])]
        nodes = [helper.make_node("Flatten", ["images"], ["flat"]),
                 helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["crop"]),
                 helper.make_node("Reshape", ["crop", "shape"], ["output"])]
        inits = [helper.make_tensor("shape", TensorProto.INT64, [3], [1, 85, 84]),
                 helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
                 helper.make_tensor("ends", TensorProto.INT64, [1], [85 * 84]),
                 helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    else:
        inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])]
        outputs = [helper.make_tensor_value_info("labels", TensorProto.FLOAT, [1, 100])]
        nodes = [helper.make_node("Reshape", ["crop", "shape"], ["labels"]),
                 helper.make_node("Slice", ["images", "starts", "ends"], ["crop"])]
        inits = [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 100]),
                 helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
                 helper.make_tensor("ends", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(nodes, "foreign", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    with pytest.raises(ArtefactError, match=message):
        Detector(tmp_path / "m.onnx")


def test_options_that_cannot_apply_say_so(nano_onnx, tmp_path, caplog):
    from yolox_deploy.runtimes.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(nano_onnx, half=True) as backend:  # accepted, and said to do nothing on the CPU
        assert backend.meta.precision == "fp32"
    assert "half applies with the TensorRT execution provider (device tensorrt) only" in caplog.text
    with OnnxRuntimeBackend(nano_onnx, trt_cache=tmp_path / "engines"):  # it was dropped without a word
        pass
    assert "trt_cache is the TensorRT execution provider's engine cache (device tensorrt); on cpu it is not used" \
        in caplog.text and not (tmp_path / "engines").exists()
    (tmp_path / "m_openvino").mkdir()
    with pytest.raises(InputError, match="m_openvino is a folder; the onnxruntime backend opens .onnx files"):
        OnnxRuntimeBackend(tmp_path / "m_openvino")


def test_a_size_off_the_stride_is_one_message_on_a_dynamic_graph(tiny_files):
    """A dynamic-size graph given 300x300 failed inside ONNX Runtime (a Concat of mismatched feature maps)."""
    path, _ = tiny_files["dynamic"]
    with Detector(path) as det:
        for batch in (np.zeros((1, 72, 96, 3), np.uint8), np.zeros((1, 3, 64, 100), np.float32)):
            with pytest.raises(InputError, match="input (72x96|64x100) is not a multiple of 32"):
                det.infer(batch)
        with pytest.raises(InputError, match="expected a batch as a numpy array or a tensor, got list"):
            det.infer([[0]])


def test_a_detector_is_neither_pickled_nor_copied(tiny_files):
    """It failed on an internal lock ("cannot pickle '_thread.lock'"); copy.copy shared the runtime."""
    import copy
    import pickle

    path, _ = tiny_files["dynamic"]
    with Detector(path) as det:
        for attempt in (pickle.dumps, copy.copy, copy.deepcopy, lambda d: pickle.dumps(d.backend)):
            with pytest.raises(TypeError, match="holds a loaded runtime and cannot be pickled or copied; open one"):
                attempt(det)


def test_another_size_for_a_fixed_graph_is_refused_in_one_wording(tiny_files):
    path, _ = tiny_files["nms"]  # fixed 64x64
    with pytest.raises(InputError, match=r"tiny_nms.onnx was exported for 64x64 input, not 96x96; re-export it for "
                                         r"that size, or drop the image size \(--img-size\)"):
        Detector(path, img_size=96)
    with Detector(tiny_files["dynamic"][0], img_size=96) as det:  # a dynamic graph runs at it
        assert det.meta.input_size == (96, 96)


def test_nms_graph_settings_changed_later_are_said_and_not_shown_as_applied(tiny_files, caplog):
    """Setting nms / class_agnostic / a lower conf on a Detector over an NMS graph was silently ignored while the
    attributes (and repr) showed the new values."""
    path, _ = tiny_files["nms"]
    with Detector(path, conf=0.2) as det:
        caplog.clear()
        det.nms, det.class_agnostic, det.conf, det.max_det = 0.3, True, 0.1, None
        assert (det.nms, det.class_agnostic, det.conf, det.max_det) == (0.45, False, 0.1, 10)
        said = " ".join(r.message for r in caplog.records)
        assert "NMS IoU 0.3" in said and "class-agnostic" in said and "max_det None" in said
        det.conf = 0.5  # tightening applies
        assert det.conf == 0.5


def _torch_export(model, path, **axes):
    """``model`` (raw head) as torch.onnx.export writes it with ``axes``, no simplifier: with a dynamic batch the
    output's width stays symbolic (``Transposeoutput_dim_2``)."""
    import warnings

    import torch

    with warnings.catch_warnings(), torch.no_grad(), model.decoding(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["output"], dynamic_axes=axes or None)
    return path


def test_a_head_width_left_symbolic_is_read_from_a_run(tiny_random_model, tmp_path, rng):
    """A plain torch export with a dynamic batch: its output is [batch, dim_1, dim_2]; it was refused ("cannot
    read the class count"), even with num_classes given."""
    path = _torch_export(tiny_random_model, tmp_path / "dyn.onnx", images={0: "batch"}, output={0: "batch"})
    assert not onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim[2].HasField("dim_value")
    with Detector(path, batch_size=2) as det:
        assert det.meta.num_classes == 3 and det.meta.batch is None and det.meta.input_size == (64, 64)
        assert len(det([rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)] * 2)) == 2
    with pytest.raises(InputError, match="the model has 3 classes, not 4"):
        Detector(path, num_classes=4)
    hw = _torch_export(tiny_random_model, tmp_path / "dyn_hw.onnx", images={0: "b", 2: "h", 3: "w"},
                       output={0: "b", 1: "anchors"})
    with pytest.raises(ArtefactError, match="input height/width are dynamic and there is no metadata; pass img_size"):
        Detector(hw)
    with Detector(hw, img_size=(96, 64)) as det:
        assert det.meta.num_classes == 3 and det.meta.input_size == (96, 64) and det.meta.dynamic_hw


def test_an_nhwc_input_with_symbolic_sides_is_refused_as_one(tiny_files, tmp_path):
    """[N, H, W, 3] with N, H, W symbolic (as tf2onnx writes them): the channels were taken for a symbolic 3 and
    "pass img_size" said, then img_size=416 made a 416x3 input."""
    from onnx import TensorProto, helper

    path, _ = tiny_files["dynamic"]
    model = onnx.load(str(_without_metadata(path, tmp_path / "bare.onnx")))
    image = model.graph.input[0]
    model.graph.node.insert(0, helper.make_node("Transpose", ["nhwc"], [image.name], perm=[0, 3, 1, 2]))
    model.graph.input.remove(image)
    model.graph.input.append(helper.make_tensor_value_info("nhwc", TensorProto.FLOAT, ["N", "H", "W", 3]))
    onnx.save(model, str(tmp_path / "nhwc.onnx"))
    for size in (None, 64):
        with pytest.raises(ArtefactError, match=r"input must be \[N, 3, H, W\] \(channels first\), has shape "
                                                r"\['N', 'H', 'W', 3\]"):
            Detector(tmp_path / "nhwc.onnx", img_size=size)


@pytest.mark.parametrize("elem_type", ["UINT8", "DOUBLE"])
def test_an_image_input_of_another_type_gets_that_type(tiny_files, tmp_path, rng, elem_type):
    """A graph that casts its uint8 (or double) image input itself: the float batch reached ONNX Runtime, which
    raised INVALID_ARGUMENT from inside at the first call."""
    from onnx import TensorProto, helper

    path, _ = tiny_files["dynamic"]
    model = onnx.load(str(_without_metadata(path, tmp_path / "bare.onnx")))
    image = model.graph.input[0]
    model.graph.node.insert(0, helper.make_node("Cast", ["pixels"], [image.name], to=TensorProto.FLOAT))
    model.graph.input.remove(image)
    model.graph.input.append(helper.make_tensor_value_info("pixels", getattr(TensorProto, elem_type),
                                                           ["batch", 3, "height", "width"]))
    onnx.save(model, str(tmp_path / "cast.onnx"))
    picture = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    with Detector(path, conf=0.0) as ours, Detector(tmp_path / "cast.onnx", img_size=(64, 96), conf=0.0) as cast:
        [a], [b] = ours(picture), cast(picture)
        np.testing.assert_allclose(b.xyxy, a.xyxy, atol=1e-3)
    if elem_type == "UINT8":
        with pytest.raises(InputError, match="takes uint8 pixels, which the legacy input .* cannot be"):
            Detector(tmp_path / "cast.onnx", img_size=(64, 96), legacy=True)


def test_an_input_named_canvas_runs(tiny_files, tmp_path, rng):
    """The canvas session's own input is named "canvas": a graph whose input has that name was refused as "not a
    valid ONNX model" (the name defined twice)."""
    path, _ = tiny_files["dynamic"]
    model = onnx.load(str(path))
    old = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = ["canvas" if name == old else name for name in node.input]
    model.graph.input[0].name = "canvas"
    onnx.save(model, str(tmp_path / "canvas.onnx"))
    picture = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    with Detector(path, conf=0.0) as ours, Detector(tmp_path / "canvas.onnx", conf=0.0) as renamed:
        np.testing.assert_allclose(renamed(picture)[0].xyxy, ours(picture)[0].xyxy, atol=1e-3)
