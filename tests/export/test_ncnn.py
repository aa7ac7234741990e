"""NCNN export through pnnx: the traced graph, the written folder, parity with torch / the authors' ONNX, AP."""


import hashlib

import numpy as np
import pytest

pytest.importorskip("pnnx", reason="the ncnn export needs pnnx (pip install 'yolox-deploy[ncnn]')")
pytest.importorskip("ncnn", reason="running NCNN artefacts needs ncnn (pip install 'yolox-deploy[ncnn]')")

from tests.conftest import REFERENCE_AP  # noqa: E402
from yolox_deploy import Detector  # noqa: E402
from yolox_deploy.errors import InputError  # noqa: E402
from yolox_deploy.eval.coco import AUTHORS_PROTOCOL, evaluate  # noqa: E402
from yolox_deploy.export import export  # noqa: E402
from yolox_deploy.export.ncnn import (  # noqa: E402
    BIN_NAME,
    PARAM_NAME,
    prepare_onnx,
    sidecar_for,
)
from yolox_deploy.export.verify import normalised_diff  # noqa: E402
from yolox_deploy.io.images import read_image  # noqa: E402
from yolox_deploy.meta import ModelMeta, Preprocess  # noqa: E402
from yolox_deploy.ops.letterbox import preprocess_batch  # noqa: E402
from yolox_deploy.runtimes.detector import open_backend  # noqa: E402
from yolox_deploy.runtimes.ncnn import read_param  # noqa: E402


def _dog_batch(dog_jpg, size=(416, 416)):
    batch, _ = preprocess_batch([read_image(dog_jpg)], size, Preprocess())
    return batch


# --- ONNX sources ------------------------------------------------------------------------------------
def test_prepare_onnx_removes_the_focus_slices(tmp_path, nano_onnx, dog_jpg):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "ready.onnx"
    notes = prepare_onnx(nano_onnx, out, half=True)
    assert len(notes) == 2
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Slice" not in ops and ops[0] == "Mul"
    batch = _dog_batch(dog_jpg)
    ref = ort.InferenceSession(str(nano_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    np.testing.assert_allclose(got, ref, atol=2e-3)


# --- exported artefacts ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_fp32(tmp_path_factory, nano_pth, dog_jpg):
    out = tmp_path_factory.mktemp("ncnn") / "nano_raw_ncnn"
    return export(nano_pth, "ncnn", out, decode_in_graph=False, dynamic=True, dynamic_hw=True, verify_image=dog_jpg)


@pytest.fixture(scope="module")
def decoded_fp32(tmp_path_factory, nano_pth):
    """Made by the CLI, as a user would: default options (decode in the graph)."""
    from yolox_deploy.cli.export import main

    folder = tmp_path_factory.mktemp("ncnn-cli")
    weights = folder / "yolox_nano.pth"
    weights.symlink_to(nano_pth)
    assert main(["--weights", str(weights), "--format", "ncnn"]) == 0
    return folder / "yolox_nano_ncnn"


def test_folder_holds_only_what_the_runtime_needs(raw_fp32):
    folder = raw_fp32.path
    assert sorted(p.name for p in folder.iterdir()) == sorted([PARAM_NAME, BIN_NAME, sidecar_for(folder).name])
    meta = ModelMeta.from_json(sidecar_for(folder).read_text())
    assert meta.extra["ncnn_bin_bytes"] == (folder / BIN_NAME).stat().st_size > 0  # the runtime checks it
    assert meta.extra["ncnn_bin_sha256"] == hashlib.sha256((folder / BIN_NAME).read_bytes()).hexdigest()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    graph = read_param(folder / PARAM_NAME)
    assert graph.input_blobs == ["in0"] and graph.output_blobs == ["out0"]
    assert not any(layer.type in ("Tensor.slice", "Crop") for layer in graph.layers)  # Focus is one conv
    assert graph.layers[1].type == "Convolution" and graph.layers[1].params[1] == "6"


def test_raw_fp32_matches_torch_on_dog(raw_fp32, nano_model, dog_jpg):
    meta = raw_fp32.meta
    assert (meta.format, meta.precision, meta.decode_in_graph, meta.batch) == ("ncnn", "fp32", False, None)
    assert meta.dynamic_hw
    assert raw_fp32.verification.passed and raw_fp32.verification.max_abs_diff <= 1e-3
    batch = _dog_batch(dog_jpg)
    with open_backend(raw_fp32.path) as backend:
        out = backend.infer(batch)[0]
    assert np.abs(out - nano_model.head_output(batch, decode=False)).max() <= 1e-3


def test_detector_batch_equals_single_calls(raw_fp32, coco_tiny):
    from yolox_deploy.io.images import list_images

    images = [read_image(p) for p in list_images(coco_tiny / "val2017")[:3]]
    with Detector(raw_fp32.path, batch_size=3) as det:
        together = det(images)
        alone = [det(im)[0] for im in images]
    assert all(len(d) for d in together)
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.names.tolist() == b.names.tolist()


def test_dynamic_raw_graph_runs_other_input_sizes(raw_fp32, nano_model, dog_jpg):
    """No size is baked into a raw-head graph made with --dynamic-hw: it holds at 320x480."""
    assert raw_fp32.meta.dynamic_hw
    batch = _dog_batch(dog_jpg, (320, 480))
    with open_backend(raw_fp32.path) as backend:
        out = backend.infer(batch)[0]
    assert out.shape == (1, 40 * 60 + 20 * 30 + 10 * 15, 85)
    assert np.abs(out - nano_model.head_output(batch, decode=False)).max() <= 1e-3


def test_decoded_fp32_matches_torch_and_is_static(decoded_fp32, nano_model, dog_jpg):
    meta = ModelMeta.from_json(sidecar_for(decoded_fp32).read_text())
    assert meta.decode_in_graph and not meta.dynamic_hw and meta.input_size == (416, 416)
    batch = _dog_batch(dog_jpg)
    with open_backend(decoded_fp32) as backend:
        out = backend.infer(batch)[0]
        with pytest.raises(InputError, match="416x416"):
            backend.infer(_dog_batch(dog_jpg, (320, 320)))
    assert normalised_diff(out, nano_model.head_output(batch, decode=True), meta) <= 1e-3


def test_decoded_fp32_reproduces_the_authors_ap(decoded_fp32, coco_tiny, tmp_path):
    """yolox-eval on the folder (the authors' protocol is its default)."""
    import json

    from yolox_deploy.cli.eval import main

    assert main([str(decoded_fp32), "--data", str(coco_tiny), "--json", str(tmp_path / "ap.json")]) == 0
    ap = json.loads((tmp_path / "ap.json").read_text())["AP"]
    assert abs(ap - REFERENCE_AP) <= 0.003


def test_detect_cli_on_the_folder(decoded_fp32, dog_jpg, tmp_path):
    import json

    from yolox_deploy.cli.detect import main

    assert main([str(decoded_fp32), "--source", str(dog_jpg), "--output", str(tmp_path), "--no-images"]) == 0
    names = {d["name"] for d in json.loads((tmp_path / "dog.json").read_text())["detections"]}
    assert {"dog", "bicycle"} <= names


def test_authors_onnx_as_input(tmp_path, nano_onnx, dog_jpg):
    import onnxruntime as ort

    from yolox_deploy.ops.decode import decode

    result = export(nano_onnx, "ncnn", tmp_path / "authors_ncnn", verify_image=dog_jpg, decode_in_graph=False)
    assert result.verification.passed and result.verification.max_abs_diff <= 1e-3
    assert result.meta.input_size == (416, 416) and not result.meta.decode_in_graph and not result.meta.dynamic_hw
    batch = _dog_batch(dog_jpg)
    ref = ort.InferenceSession(str(nano_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    with open_backend(result.path) as backend:
        assert np.abs(backend.infer(batch)[0] - ref).max() <= 1e-3

    # by default the raw graph gets the decode step, like a checkpoint's
    decoded = export(nano_onnx, "ncnn", tmp_path / "decoded_ncnn", verify_image=dog_jpg)
    assert decoded.meta.decode_in_graph and decoded.verification.max_abs_diff <= 1e-3
    with open_backend(decoded.path) as backend:
        out = backend.infer(batch)[0]
    assert normalised_diff(out, np.asarray(decode(ref, (416, 416), (8, 16, 32))), decoded.meta) <= 1e-3


def test_fp16_storage(tmp_path, nano_pth, nano_model, dog_jpg, raw_fp32):
    """FP16 weights: half the size, outputs close to torch (the rounding of the weights alone moves the raw
    output by ~0.15 on this image), the same detections."""
    from yolox_deploy.ops.match import match_detections
    from yolox_deploy.ops.postprocess import postprocess

    result = export(nano_pth, "ncnn", tmp_path / "fp16_ncnn", decode_in_graph=False, half=True, verify=False)
    assert result.meta.precision == "fp16" and not result.meta.dynamic_hw  # static unless --dynamic-hw
    assert not any(v.startswith('"') for layer in read_param(result.path / PARAM_NAME).layers
                   for v in layer.params.values())  # plain layers, no shape expressions
    assert (result.path / BIN_NAME).stat().st_size < 0.6 * (raw_fp32.path / BIN_NAME).stat().st_size
    batch = _dog_batch(dog_jpg)
    with open_backend(result.path) as backend:
        out = backend.infer(batch)[0]
    ref = nano_model.head_output(batch, decode=False)
    assert np.abs(out - ref).max() <= 0.3
    assert np.abs(out[..., 4:] - ref[..., 4:]).max() <= 0.05
    [a] = postprocess(ref, 0.25, 0.45, input_hw=(416, 416))
    [b] = postprocess(out, 0.25, 0.45, input_hw=(416, 416))
    agreement = match_detections(np.asarray(a.boxes), np.asarray(a.class_ids), np.asarray(b.boxes),
                                 np.asarray(b.class_ids))
    assert agreement.matched == len(a.boxes) == len(b.boxes) >= 4


@pytest.mark.slow
def test_fp16_ap(tmp_path, nano_pth, coco_tiny):
    result = export(nano_pth, "ncnn", tmp_path / "fp16_ncnn", half=True, verify=False)
    with Detector(result.path, **AUTHORS_PROTOCOL) as det:
        ap = evaluate(det, coco_tiny).stats["AP"]
    assert abs(ap - REFERENCE_AP) <= 0.01


def test_rejected_options(tmp_path, nano_pth):
    with pytest.raises(InputError, match="does not support --nms"):
        export(nano_pth, "ncnn", tmp_path / "a_ncnn", nms=True)
    with pytest.raises(InputError, match="no-decode-in-graph"):
        export(nano_pth, "ncnn", tmp_path / "b_ncnn", dynamic=True, dynamic_hw=True)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kw,message", [
    ({"batch": 2}, "has a fixed batch of 2 and NCNN runs one image at a time"),
    ({"dynamic": True, "dynamic_hw": True}, "has a dynamic input size, which NCNN cannot take from an ONNX file"),
])
def test_onnx_sources_pnnx_cannot_take_are_refused(tmp_path, tiny_random_model, kw, message):
    source = export(tiny_random_model, "onnx", tmp_path / "src.onnx", img_size=64, decode_in_graph=False, verify=False,
                    **kw).path
    with pytest.raises(InputError, match=message):
        export(source, "ncnn", tmp_path / "m_ncnn", decode_in_graph=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.onnx"]
