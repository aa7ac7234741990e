"""OpenVINO backend: opening folders and .xml files, metadata (ours, or inferred), devices, options, corrupt
artefacts, and concurrent calls."""

from __future__ import annotations

import logging
import os
import shutil
import threading

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from yolox_deploy import Detector  # noqa: E402
from yolox_deploy.cli.detect import main as detect_main  # noqa: E402
from yolox_deploy.errors import ArtefactError, BackendUnavailable, InputError  # noqa: E402
from yolox_deploy.export.openvino import attach_meta, convert_torch  # noqa: E402
from yolox_deploy.export.source import load_source  # noqa: E402
from yolox_deploy.meta import ModelMeta, Preprocess  # noqa: E402
from yolox_deploy.runtimes import find_backend  # noqa: E402
from yolox_deploy.runtimes import openvino as openvino_backend  # noqa: E402
from yolox_deploy.runtimes.detector import open_backend  # noqa: E402
from yolox_deploy.runtimes.openvino import OpenVINOBackend, ov_device  # noqa: E402

from ..conftest import run_in_fork, run_in_fork_while_held  # noqa: E402


@pytest.fixture(scope="module")
def authors_ir(tmp_path_factory, nano_onnx):
    """The authors' released ONNX converted by plain OpenVINO: an IR that carries no metadata."""
    folder = tmp_path_factory.mktemp("ov-authors") / "authors_openvino"
    folder.mkdir()
    ov.save_model(ov.convert_model(str(nano_onnx)), str(folder / "yolox_nano.xml"), compress_to_fp16=False)
    return folder


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory, tiny_random_model):
    """A 3-class random nano, dynamic batch and size (64x96 nominal): decode in graph with metadata, and a raw
    IR without metadata."""
    folder = tmp_path_factory.mktemp("ov-tiny")
    source = load_source(tiny_random_model)
    meta = source.meta.with_(input_size=(64, 96), batch=None, dynamic_hw=True, decode_in_graph=True,
                             format="openvino")
    bare = folder / "bare.xml"
    ov.save_model(convert_torch(source.model, meta.with_(decode_in_graph=False)), str(bare), compress_to_fp16=False)
    model = convert_torch(source.model, meta)
    attach_meta(model, meta)
    (folder / "tiny_openvino").mkdir()
    ov.save_model(model, str(folder / "tiny_openvino" / "tiny.xml"), compress_to_fp16=False)
    return {"folder": folder / "tiny_openvino", "bare": bare, "meta": meta, "source": source}



# --- finding and describing the artefact ----------------------------------------------------------------------
def test_registered_for_folders_and_xml_files(tiny_ir):
    assert find_backend(tiny_ir["folder"]) is OpenVINOBackend
    assert find_backend(tiny_ir["folder"] / "tiny.xml") is OpenVINOBackend
    info = OpenVINOBackend.info
    assert info.devices == ("cpu", "gpu", "npu", "auto") and info.extra == "openvino" and info.suffixes == (".xml",)


def test_metadata_from_rt_info(tiny_ir):
    with open_backend(tiny_ir["folder"]) as backend:
        assert backend.meta == tiny_ir["meta"]
        assert backend.input_shape == (None, 3, 64, 96) and backend.output_device == "cpu"
        x = np.random.default_rng(0).uniform(0, 255, (2, 3, 96, 128)).astype(np.float32)
        [out] = backend.infer(x)
    np.testing.assert_allclose(out, tiny_ir["source"].model.head_output(x, decode=True), atol=1e-3)


def test_metadata_inferred_for_an_ir_without_it(authors_ir, nano_pth, dog_jpg):
    with open_backend(authors_ir) as backend:
        m = backend.meta
        assert (m.input_size, m.batch, m.num_classes, m.dynamic_hw) == ((416, 416), 1, 80, False)
        assert not m.decode_in_graph and not m.nms_in_graph and m.format == "openvino"
        assert m.class_names[0] == "person" and m.preprocess.is_identity
        with pytest.raises(InputError, match="batch 1"):
            backend.infer(np.zeros((2, 3, 416, 416), np.float32))
    with open_backend(authors_ir, legacy=True) as backend:  # what an IR without metadata cannot say
        assert backend.meta.preprocess == Preprocess.legacy()
    with Detector(authors_ir) as det, Detector(nano_pth) as ref:
        [a], [b] = det(dog_jpg), ref(dog_jpg)
    assert len(a) == len(b) >= 4
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.05)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    assert a.names.tolist() == b.names.tolist()


def test_dynamic_size_without_metadata_needs_img_size(tiny_ir):
    with pytest.raises(ArtefactError, match="img_size"):
        open_backend(tiny_ir["bare"])
    with Detector(tiny_ir["bare"], img_size=(64, 96)) as det:
        m = det.meta
        assert m.input_size == (64, 96) and m.dynamic_hw and m.batch is None and m.num_classes == 3
        assert not m.decode_in_graph and m.class_names == ("class0", "class1", "class2")
        x = np.random.default_rng(2).uniform(0, 255, (3, 3, 64, 96)).astype(np.float32)
        np.testing.assert_allclose(det.infer(x)[0], tiny_ir["source"].model.head_output(x, decode=False), atol=1e-3)


def test_an_ir_without_metadata_shows_whether_it_decodes(tiny_ir, tmp_path):
    """The decode's Exp is among the IR's ops or not: a decoding IR from elsewhere is taken as one, and
    decode_in_graph=True on a raw one is refused (its boxes would be logits read as pixels)."""
    with pytest.raises(InputError, match="bare.xml has a raw output"):
        open_backend(tiny_ir["bare"], img_size=(64, 96), decode_in_graph=True)
    decoding = tmp_path / "decoding.xml"
    ov.save_model(convert_torch(tiny_ir["source"].model, tiny_ir["meta"]), str(decoding), compress_to_fp16=False)
    with open_backend(decoding, img_size=(64, 96)) as backend:
        assert backend.meta.decode_in_graph


# --- devices and options --------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, want", [("cpu", "CPU"), ("CPU", "CPU"), ("gpu", "GPU"), ("GPU.1", "GPU.1"),
                                         ("npu", "NPU"), ("auto", "AUTO"), ("auto:gpu,cpu", "AUTO:GPU,CPU")])
def test_device_names(given, want):
    assert ov_device(given) == want


def test_spaces_in_a_device_list_do_not_reach_openvino(tiny_ir):
    """``auto: cpu`` passes the device check, so it must compile too (not fail as the artefact's fault)."""
    assert ov_device(" auto: gpu , cpu ") == "AUTO:GPU,CPU"
    with open_backend(tiny_ir["folder"], device="auto: cpu") as backend:
        assert backend.infer(np.zeros((1, 64, 96, 3), np.uint8))[0].shape[0] == 1


@pytest.mark.parametrize("bad", ["cuda", "cuda:0", "0", "tpu", ""])
def test_bad_device_names(bad, tiny_ir):
    with pytest.raises(InputError, match="cpu, gpu"):
        open_backend(tiny_ir["folder"], device=bad)


def test_missing_device_is_reported(tiny_ir):
    if "GPU" in {d.split(".")[0] for d in ov.Core().available_devices}:
        pytest.skip("this machine has an OpenVINO GPU")
    with pytest.raises(BackendUnavailable, match="GPU is not available"):
        open_backend(tiny_ir["folder"], device="gpu")
    with pytest.raises(BackendUnavailable, match="GPU.1 is not available"):
        OpenVINOBackend.check_device("gpu.1")
    with open_backend(tiny_ir["folder"], device="auto") as backend:  # AUTO falls back to the CPU
        assert backend.infer(np.zeros((1, 3, 64, 96), np.float32))[0].shape[0] == 1
    # a device listed after AUTO / MULTI / HETERO is checked as one given alone: these compiled the model first,
    # then blamed the artefact ("could not compile ... (;)", a missing libOpenCL)
    for device in ("auto:gpu,cpu", "AUTO:NPU", "multi:gpu", "hetero:npu,cpu", "auto:foo"):
        with pytest.raises(BackendUnavailable, match=r"OpenVINO device (GPU|NPU|FOO) is not available here"):
            OpenVINOBackend.check_device(device)
    for device, message in (("multi", "MULTI runs on the devices it lists"), ("cpu:0", "CPU takes no ':' part")):
        with pytest.raises(InputError, match=message):
            OpenVINOBackend.check_device(device)
    for device in ("auto:cpu", "MULTI:CPU", "HETERO:CPU"):
        OpenVINOBackend.check_device(device)


def test_a_cache_dir_is_a_folder(tiny_ir, tmp_path):
    """cache_dir=True made a folder named True; a file was taken without a word."""
    (tmp_path / "afile").write_text("x")
    for value in (True, "", tmp_path / "afile"):
        with pytest.raises(InputError, match="cache_dir option is a folder, not"):
            open_backend(tiny_ir["folder"], cache_dir=value)
    with pytest.raises(InputError, match="cache_dir .*sub cannot be made"):  # was "could not compile the IR"
        open_backend(tiny_ir["folder"], cache_dir=tmp_path / "afile" / "sub")


def test_options_reach_the_compiled_model(tiny_ir):
    with open_backend(tiny_ir["folder"], hint="throughput", threads=1) as backend:
        assert str(backend.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
        assert backend.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    with open_backend(tiny_ir["folder"]) as backend:
        assert str(backend.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
        assert backend.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    for kw, msg in ((dict(hint="fast"), "hint"), (dict(threads=-1), "threads"),
                    (dict(inference_precision="int4"), "inference_precision")):
        with pytest.raises(InputError, match=msg):
            open_backend(tiny_ir["folder"], **kw)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_child_forked_while_a_model_was_being_compiled_compiles_it(tiny_ir):
    """The IR for float batches is compiled on first use, and OpenVINO's Core made once, each under a lock: a
    child forked while another thread of its parent held one waited for it forever."""
    x = np.zeros((1, 3, 64, 96), np.float32)
    with Detector(tiny_ir["folder"]) as det:
        backend = det.backend
        assert backend._plain is None  # the canvas model serves the pipeline
        assert run_in_fork_while_held(backend._compile_lock, lambda: backend.infer(x)[0].shape) == \
            (0, str(backend.infer(x)[0].shape))
    assert run_in_fork_while_held(openvino_backend._CORE_LOCK, lambda: type(openvino_backend._core()).__name__) == \
        (0, "'Core'")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_child_forked_after_a_model_was_released_compiles_models(tiny_ir):
    """The CPU plugin keeps a released model's executor idle and hands it to the next compile with the same
    settings: in a forked child, where its threads do not exist, that compile never returned."""
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    with open_backend(tiny_ir["folder"]) as released:
        expected = released.infer(x)[0]

    def compile_and_compare():
        said = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())
        logging.getLogger(openvino_backend.__name__).addHandler(handler)
        with open_backend(tiny_ir["folder"], threads=1) as backend:  # the canvas model, then the IR as it is
            same = bool(np.array_equal(backend.infer(x)[0], expected))
        return same, any(m.startswith("threads=1 is not applied to tiny.xml") for m in said)

    assert run_in_fork(compile_and_compare, 60) == (0, "(True, True)")

    def compile_in_a_grandchild():
        with open_backend(tiny_ir["folder"]) as backend:
            backend.infer(x)
        return run_in_fork(lambda: open_backend(tiny_ir["folder"]), 60)

    code, text = run_in_fork(compile_in_a_grandchild, 120)
    # that child's own CPU executor has no threads in its child either: refused, not hung
    assert code == 0 and text.startswith("(1, ") and "BackendUnavailable: OpenVINO cannot compile tiny.xml" in text


def test_fp32_is_computed_in_fp32_even_where_bf16_exists(authors_ir, nano_onnx, dog_jpg):
    """OpenVINO's CPU default on bf16-capable CPUs is bf16, which moves raw offsets by ~2.5 on dog.jpg."""
    ort = pytest.importorskip("onnxruntime")
    from yolox_deploy.io.images import read_image
    from yolox_deploy.ops.letterbox import preprocess_batch

    batch = preprocess_batch([read_image(dog_jpg)], (416, 416))[0]
    ref = ort.InferenceSession(str(nano_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    with open_backend(authors_ir) as backend:
        assert np.abs(backend.infer(batch)[0] - ref).max() <= 1e-3
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return
    with open_backend(authors_ir, inference_precision="bf16") as bf16:
        assert np.abs(bf16.infer(batch)[0] - ref).max() > 1e-2  # the option reaches the device


# --- bad artefacts ---------------------------------------------------------------------------------------------
@pytest.fixture
def broken(tmp_path, tiny_ir):
    src = tiny_ir["folder"]

    def copy(name):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    cases = {}
    d = copy("corrupt_xml")
    xml = d / "tiny.xml"
    xml.write_bytes(xml.read_bytes()[:3000])
    cases["corrupt_xml"] = (d, "not a readable OpenVINO IR")
    d = copy("truncated_bin")
    (d / "tiny.bin").write_bytes((d / "tiny.bin").read_bytes()[:1000])
    cases["truncated_bin"] = (d, "not a readable OpenVINO IR")
    d = copy("missing_bin")
    (d / "tiny.bin").unlink()
    cases["missing_bin"] = (d, "no weights file tiny.bin")
    d = copy("two_models")
    shutil.copy(d / "tiny.xml", d / "other.xml")
    cases["two_models"] = (d, "several OpenVINO models")
    d = tmp_path / "not_ir"
    d.mkdir()
    (d / "m.xml").write_text("<?xml version='1.0'?><svg></svg>")
    (d / "m.bin").write_bytes(b"\0" * 8)
    cases["not_ir"] = (d, "not an OpenVINO IR")
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "m.xml").write_text("hello")
    (d / "m.bin").write_bytes(b"\0")
    cases["garbage"] = (d, "not an OpenVINO IR")
    d = tmp_path / "empty"
    d.mkdir()
    cases["empty"] = (d, "no OpenVINO IR")
    return cases


def test_bad_artefacts_raise_artefact_error(broken):
    for name, (folder, msg) in broken.items():
        with pytest.raises(ArtefactError, match=msg) as e:
            OpenVINOBackend(folder)
        assert str(folder) in str(e.value), name
    with pytest.raises(ArtefactError, match="not an OpenVINO IR"):
        OpenVINOBackend(broken["garbage"][0] / "m.bin")


def test_cli_exits_2_on_bad_artefacts(broken, tmp_path, capsys):
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), np.full((32, 32, 3), 114, np.uint8))
    for name in ("corrupt_xml", "missing_bin", "empty", "truncated_bin"):
        folder, _ = broken[name]
        rc = detect_main([str(folder), "--source", str(image), "--output", str(tmp_path / "out"), "--no-images"])
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# --- concurrency -------------------------------------------------------------------------------------------------
def test_concurrent_calls_never_mix(tiny_ir):
    rng = np.random.default_rng(1)
    inputs = [rng.uniform(0, 255, (1 + i % 3, 3, 64, 96)).astype(np.float32) for i in range(24)]
    with open_backend(tiny_ir["folder"], hint="throughput") as backend:
        expected = [backend.infer(x)[0] for x in inputs]
        got: list = [None] * len(inputs)
        errors: list = []
        start = threading.Barrier(6)

        def work(k):
            try:
                start.wait()
                for i in range(k, len(inputs), 6):
                    got[i] = backend.infer(inputs[i])[0]
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_array_equal(e, g)
        outputs = backend.infer(inputs[0])
        outputs[0][:] = -1  # callers own their outputs: writing to one does not touch the next call's
        np.testing.assert_array_equal(backend.infer(inputs[0])[0], expected[0])
    with pytest.raises(InputError, match="was closed"):
        backend.infer(inputs[0])


def test_meta_roundtrip_through_rt_info(tmp_path, tiny_ir):
    meta = ModelMeta(("cat", "dog", "a b c"), (64, 96), batch=None, dynamic_hw=True, decode_in_graph=True,
                     format="openvino", extra={"note": "ünïcode & <xml>\n\"quoted\""})
    model = ov.Core().read_model(str(tiny_ir["bare"]))
    attach_meta(model, meta)
    (tmp_path / "m").mkdir()
    ov.save_model(model, str(tmp_path / "m" / "m.xml"), compress_to_fp16=False)
    with open_backend(tmp_path / "m") as backend:
        assert backend.meta == meta


def test_the_precision_computed_is_said(tmp_path, tiny_random_model, authors_ir):
    """An FP16 IR runs in FP32 on the CPU: its compute precision says so (yolox-bench times no FP16 row then).
    An f16 hint computes in FP16 only on CPUs with FP16 arithmetic, in BF16 on those with BF16 but not FP16,
    else in FP32: the compiled model's own answer is said, and where a plugin does not say, the same."""
    import openvino as ov

    from yolox_deploy.export import export

    half = export(tiny_random_model, "openvino", tmp_path / "half_openvino", img_size=64, half=True, verify=False)
    with open_backend(half.path) as backend:
        assert backend.meta.precision == "fp16" and backend.compute_precision == "fp32"
    arithmetic = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    expected = "fp16" if "FP16" in arithmetic else "bf16" if "BF16" in arithmetic else "fp32"
    with open_backend(half.path, inference_precision="f16") as backend:
        assert backend.compute_precision == expected
    for device in ("AUTO", "MULTI:CPU", "HETERO:CPU"):  # plugins that do not report it: where they run says
        with open_backend(half.path, device=device, inference_precision="f16") as backend:
            assert backend.compute_precision == expected, device
    with open_backend(authors_ir) as backend:
        assert backend.compute_precision == "fp32"


def test_an_fp16_ir_on_auto_is_computed_in_fp32_on_the_cpu(tmp_path, tiny_random_model):
    """AUTO / MULTI / HETERO take no top-level f32 hint for an FP16 IR (GPUs keep f16), but the CPU they run on
    must not fall to its bf16 default: the outputs equal the CPU's, and the precision said is fp32."""
    from yolox_deploy.export import export

    half = export(tiny_random_model, "openvino", tmp_path / "half_openvino", img_size=64, half=True, verify=False)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)
    with open_backend(half.path) as cpu:
        ref = cpu.infer(x)[0]
    for device in ("AUTO", "AUTO:CPU", "MULTI:CPU", "HETERO:CPU"):
        with open_backend(half.path, device=device) as backend:
            assert np.abs(backend.infer(x)[0] - ref).max() <= 1e-4, device
            assert backend.compute_precision == "fp32", device
