"""ONNX export: parity with torch (raw and decoded), dynamic shapes, in-graph NMS equal to the Python path,
the TensorRT NMS plugin node, metadata, the simplifier fallback, ONNX sources, and COCO AP of the result."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from yolox_deploy import Detector  # noqa: E402
from yolox_deploy.eval.coco import AUTHORS_PROTOCOL, evaluate, open_coco  # noqa: E402
from yolox_deploy.export import onnx as onnx_export  # noqa: E402
from yolox_deploy.export.base import ExportOptions  # noqa: E402
from yolox_deploy.export.onnx import append_nms, simplify, write_onnx  # noqa: E402
from yolox_deploy.export.source import load_source, read_onnx_meta  # noqa: E402
from yolox_deploy.export.verify import normalised_diff  # noqa: E402
from yolox_deploy.io.images import list_images, read_image  # noqa: E402
from yolox_deploy.meta import META_KEY, NMS_OUTPUTS, ModelMeta  # noqa: E402
from yolox_deploy.ops.decode import decode  # noqa: E402
from yolox_deploy.ops.letterbox import preprocess_batch  # noqa: E402
from yolox_deploy.ops.postprocess import postprocess, split_nms_outputs  # noqa: E402
from yolox_deploy.runtimes.detector import open_backend  # noqa: E402

from ..conftest import REFERENCE_AP  # noqa: E402

SIZE = (416, 416)
NMS_CONF, NMS_IOU, NMS_MAX_DET = 0.05, 0.45, 100


# --- artefacts, exported once per module ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-export")


@pytest.fixture(scope="module")
def nano_source(nano_pth):
    return load_source(nano_pth, model="yolox-nano")


@pytest.fixture(scope="module")
def cli_export(nano_pth, dog_jpg, out_dir):
    """``yolox-export`` end to end: static 416, decode in the graph, simplified, verified on dog.jpg."""
    from yolox_deploy.cli.export import main

    path = out_dir / "nano.onnx"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["--weights", str(nano_pth), "--format", "onnx", "--output", str(path),
                   "--verify-image", str(dog_jpg)])
    return rc, path, stdout.getvalue()


@pytest.fixture(scope="module")
def raw_onnx(nano_source, out_dir):
    path = out_dir / "nano_raw.onnx"
    meta = write_onnx(nano_source, ExportOptions(img_size=SIZE, decode_in_graph=False, simplify=False), path)
    return path, meta


@pytest.fixture(scope="module")
def dynamic_onnx(nano_source, out_dir):
    path = out_dir / "nano_dynamic.onnx"
    meta = write_onnx(nano_source, ExportOptions(img_size=SIZE, dynamic=True, dynamic_hw=True), path)
    return path, meta


@pytest.fixture(scope="module")
def nms_onnx(nano_source, out_dir):
    path = out_dir / "nano_nms.onnx"
    opts = ExportOptions(img_size=SIZE, dynamic=True, nms=True, conf=NMS_CONF, iou=NMS_IOU, max_det=NMS_MAX_DET,
                         simplify=False)
    return path, write_onnx(nano_source, opts, path)


@pytest.fixture(scope="module")
def dog_batch(dog_jpg):
    return preprocess_batch([read_image(dog_jpg)], SIZE)[0]



def _ort(path, batch, **kw):
    with open_backend(path, **kw) as backend:
        return [np.asarray(o) for o in backend.infer(batch)]


def _op_types(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _io(path):
    model = onnx.load(str(path))

    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]

    return ([(i.name, dims(i)) for i in model.graph.input],
            [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output])


# --- the CLI -------------------------------------------------------------------------------------------------
def test_cli_export_end_to_end(cli_export):
    rc, path, out = cli_export
    assert rc == 0 and path.is_file()
    assert "max abs diff" in out and "detections 5/5 agree" in out  # dog, bicycle, car, truck, cat at 0.25
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging left
    inputs, outputs = _io(path)
    assert inputs == [("images", [1, 3, 416, 416])]
    assert outputs == [("output", onnx.TensorProto.FLOAT, [1, 3549, 85])]
    assert "ScatterND" not in _op_types(path)


# --- parity --------------------------------------------------------------------------------------------------
def test_raw_output_matches_torch_and_the_authors_onnx(raw_onnx, nano_source, nano_onnx, dog_batch):
    path, meta = raw_onnx
    assert not meta.decode_in_graph and not meta.nms_in_graph and meta.batch == 1
    [ours] = _ort(path, dog_batch)
    ref = nano_source.model.head_output(dog_batch, decode=False)
    assert ours.shape == ref.shape == (1, 3549, 85)
    assert np.abs(ours - ref).max() < 1e-3
    [authors] = _ort(nano_onnx, dog_batch)
    assert np.abs(ours - authors).max() < 1e-3


def test_decoded_output_matches_torch(cli_export, nano_source, dog_batch):
    _, path, _ = cli_export
    with open_backend(path) as backend:
        meta = backend.meta
        [ours] = backend.infer(dog_batch)
    assert meta.decode_in_graph and meta.input_size == SIZE
    ref = nano_source.model.head_output(dog_batch, decode=True)
    assert normalised_diff(ours, ref, meta) < 1e-3  # offsets / stride, sizes relative: the raw units
    np.testing.assert_allclose(ours[..., :4], ref[..., :4], rtol=1e-4, atol=2e-2)  # pixels
    np.testing.assert_allclose(ours[..., 4:], ref[..., 4:], atol=1e-4)


def test_dynamic_batch_gives_the_same_per_image_results(dynamic_onnx, coco_tiny):
    path, meta = dynamic_onnx
    assert meta.batch is None and meta.dynamic_hw
    inputs, outputs = _io(path)
    assert inputs == [("images", ["batch", 3, "height", "width"])]
    assert outputs == [("output", onnx.TensorProto.FLOAT, ["batch", "anchors", 85])]
    assert "ScatterND" not in _op_types(path)
    images = [read_image(p) for p in list_images(coco_tiny / "val2017")[:8]]
    results = {}
    for n in (1, 3, 8):
        with Detector(path, batch_size=n, conf=0.1) as det:
            results[n] = det(images)
    for a, b, c in zip(results[1], results[3], results[8], strict=True):
        assert len(a) == len(b) == len(c)
        assert (a.class_ids == b.class_ids).all() and (a.class_ids == c.class_ids).all()
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.xyxy, c.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.scores, c.scores, atol=1e-5)


@pytest.mark.parametrize("size", [(320, 512), (480, 384)])
def test_dynamic_hw_follows_the_real_input_size(dynamic_onnx, nano_source, dog_jpg, size):
    path, meta = dynamic_onnx
    batch = preprocess_batch([read_image(dog_jpg)] * 2, size)[0]
    with open_backend(path, img_size=size) as backend:
        assert backend.meta.input_size == size
        [ours] = backend.infer(batch)
    ref = nano_source.model.head_output(batch, decode=True)
    assert ours.shape == ref.shape
    assert normalised_diff(ours, ref, meta.with_(input_size=size)) < 1e-3
    with Detector(path, img_size=size) as det:
        names = set(det(dog_jpg)[0].names)
    assert {"dog", "bicycle"} <= names


# --- in-graph NMS --------------------------------------------------------------------------------------------
def test_nms_graph_structure(nms_onnx):
    path, meta = nms_onnx
    assert meta.nms_in_graph and meta.decode_in_graph and meta.max_det == NMS_MAX_DET and meta.batch is None
    assert meta.extra["nms_conf"] == NMS_CONF and meta.extra["nms_iou"] == NMS_IOU
    _, outputs = _io(path)
    i32, f32 = onnx.TensorProto.INT32, onnx.TensorProto.FLOAT
    assert outputs == [("num_dets", i32, ["batch", 1]), ("boxes", f32, ["batch", 100, 4]),
                       ("scores", f32, ["batch", 100]), ("labels", i32, ["batch", 100])]
    ops = _op_types(path)
    assert "NonMaxSuppression" in ops and "ScatterND" not in ops
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_nms_graph_equals_the_python_nms(nms_onnx, dynamic_onnx, coco_tiny, dog_jpg):
    """Same detections, same order as decode + ops.postprocess (class-aware NMS), several images per batch."""
    nms_path, _ = nms_onnx
    images = [read_image(dog_jpg)] + [read_image(p) for p in list_images(coco_tiny / "val2017")[:7]]
    batch = preprocess_batch(images, SIZE)[0]
    num_dets, boxes, scores, labels = _ort(nms_path, batch)
    assert num_dets.dtype == np.int32 and labels.dtype == np.int32 and boxes.dtype == np.float32
    assert num_dets.shape == (8, 1) and boxes.shape == (8, NMS_MAX_DET, 4)
    [decoded] = _ort(dynamic_onnx[0], batch)
    expected = postprocess(decoded, NMS_CONF, NMS_IOU, max_det=NMS_MAX_DET)
    got = split_nms_outputs(num_dets, boxes, scores, labels)
    total = 0
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert len(g.boxes) == len(e.boxes), f"image {i}"
        assert (g.class_ids == e.class_ids).all(), f"image {i}"
        np.testing.assert_allclose(g.boxes, e.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, e.scores, atol=1e-5)
        assert (np.diff(g.scores) <= 0).all()
        k = int(num_dets[i, 0])
        assert not boxes[i, k:].any() and not scores[i, k:].any()  # padding is zero
        total += len(g.boxes)
    assert total > 50


def test_nms_graph_runs_in_openvino(nms_onnx, coco_tiny, dog_jpg):
    """Standard ops only: OpenVINO reads the same graph and finds the same detections (FP32 inference)."""
    ov = pytest.importorskip("openvino")
    images = [read_image(dog_jpg)] + [read_image(p) for p in list_images(coco_tiny / "val2017")[:3]]
    batch = preprocess_batch(images, SIZE)[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(nms_onnx[0])), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(batch)
    got = split_nms_outputs(*[result[o] for o in compiled.outputs])
    expected = split_nms_outputs(*_ort(nms_onnx[0], batch))
    for g, e in zip(got, expected, strict=True):
        assert len(g.boxes) == len(e.boxes) and (g.class_ids == e.class_ids).all()
        np.testing.assert_allclose(g.boxes, e.boxes, atol=1e-2)


def test_nms_graph_through_the_detector_matches_the_checkpoint(nms_onnx, nano_pth, dog_jpg):
    with Detector(nms_onnx[0]) as det:
        [got] = det(dog_jpg)
    with Detector(nano_pth, model="yolox-nano", conf=NMS_CONF, nms=NMS_IOU, max_det=NMS_MAX_DET) as ref_det:
        [ref] = ref_det(dog_jpg)
    assert len(got) == len(ref)
    assert (got.class_ids == ref.class_ids).all()
    np.testing.assert_allclose(got.xyxy, ref.xyxy, atol=2e-2)


def test_nms_keeps_scores_equal_to_the_threshold(tmp_path):
    """score >= conf as in ops.postprocess (NonMaxSuppression alone keeps score > threshold)."""
    model = _decoded_stub(np.array([[[10, 10, 4, 4, 0.5, 0.5, 0.25], [50, 50, 4, 4, 0.5, 0.2, 0.1]]], np.float32))
    append_nms(model, conf=0.25, iou=0.5, max_det=5)
    path = tmp_path / "stub.onnx"
    onnx.save(model, str(path))
    import onnxruntime as ort

    num, boxes, scores, labels = ort.InferenceSession(str(path)).run(None, {"x": np.zeros(1, np.float32)})
    assert num.tolist() == [[1]] and labels[0, 0] == 0 and scores[0, 0] == np.float32(0.25)
    np.testing.assert_allclose(boxes[0, 0], [8, 8, 12, 12])


def _decoded_stub(pred: np.ndarray):
    """A graph whose output ``output`` is the constant decoded head ``pred`` (input ``x`` is ignored)."""
    h = onnx.helper
    const = h.make_node("Constant", [], ["pred"], value=onnx.numpy_helper.from_array(pred))
    ident = h.make_node("Identity", ["pred"], ["output"])
    shape = list(pred.shape)
    graph = h.make_graph([const, ident], "stub", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                         [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, shape)])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_tensorrt_nms_plugin_node(dynamic_onnx, tmp_path):
    """EfficientNMS_TRT (cannot run here): node, attributes, inputs and the declared outputs."""
    source = load_source(dynamic_onnx[0])  # an ONNX source: its graph plus the NMS tail
    opts = ExportOptions(img_size=SIZE, dynamic=True, nms=True, conf=0.3, iou=0.6, max_det=50)
    path = tmp_path / "trt.onnx"
    meta = write_onnx(source, opts, path, nms_plugin="tensorrt")
    assert meta.nms_in_graph and meta.max_det == 50 and meta.extra["nms_plugin"] == "tensorrt"
    model = onnx.load(str(path))
    [node] = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert node.domain == ""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"background_class": -1, "box_coding": 0, "class_agnostic": 0, "iou_threshold": pytest.approx(0.6),
                     "max_output_boxes": 50, "plugin_version": b"1", "score_activation": 0,
                     "score_threshold": pytest.approx(0.3)}
    assert list(node.output) == list(NMS_OUTPUTS)
    assert "NonMaxSuppression" not in _op_types(path)
    # the plugin's inputs: boxes [B, A, 4] and scores [B, A, C] (-1, below any threshold, except at the arg-max
    # class: the plugin keeps scores >= its threshold, so 0 passed --conf 0 for every class of every anchor)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in inferred.graph.value_info}
    assert shapes[node.input[0]] == ["batch", "anchors", 4] and shapes[node.input[1]] == ["batch", "anchors", 80]
    _, outputs = _io(path)
    i32, f32 = onnx.TensorProto.INT32, onnx.TensorProto.FLOAT
    assert outputs == [("num_dets", i32, ["batch", 1]), ("boxes", f32, ["batch", 50, 4]),
                       ("scores", f32, ["batch", 50]), ("labels", i32, ["batch", 50])]
    # everything before the plugin is standard ONNX and computes the plugin's inputs correctly
    trimmed = onnx.load(str(path))
    del trimmed.graph.node[-1]
    del trimmed.graph.output[:]
    declared = {v.name: v for v in trimmed.graph.value_info}
    trimmed.graph.output.extend([declared[n] for n in node.input])
    onnx.checker.check_model(trimmed)
    import onnxruntime as ort

    batch = np.random.default_rng(0).uniform(0, 255, (2, 3, 416, 416)).astype(np.float32)
    plugin_boxes, plugin_scores = ort.InferenceSession(trimmed.SerializeToString()).run(None, {"images": batch})
    [decoded] = _ort(dynamic_onnx[0], batch)
    cls = decoded[..., 5:]
    best = cls.argmax(-1)
    expected_scores = np.full_like(cls, -1.0)
    np.put_along_axis(expected_scores, best[..., None], decoded[..., 4:5] * cls.max(-1, keepdims=True), axis=-1)
    np.testing.assert_allclose(plugin_scores, expected_scores, atol=1e-6)
    half = decoded[..., 2:4] / 2
    np.testing.assert_allclose(plugin_boxes, np.concatenate([decoded[..., :2] - half, decoded[..., :2] + half], -1),
                               atol=1e-3)


def test_nms_options_are_checked(nano_source, tmp_path):
    from yolox_deploy.errors import InputError

    for bad in ({"conf": 1.5}, {"iou": -0.1}, {"max_det": 0}):
        with pytest.raises(InputError):
            write_onnx(nano_source, ExportOptions(img_size=SIZE, nms=True, **bad), tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


# --- metadata ------------------------------------------------------------------------------------------------
def test_metadata_round_trip(cli_export, nano_pth):
    _, path, _ = cli_export
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_json(props[META_KEY])
    assert meta.model == "yolox-nano" and meta.input_size == SIZE and meta.batch == 1 and meta.format == "onnx"
    assert meta.decode_in_graph and not meta.nms_in_graph and meta.precision == "fp32"
    assert meta.class_names[:3] == ("person", "bicycle", "car") and meta.num_classes == 80
    assert meta.strides == (8, 16, 32) and meta.preprocess.is_identity
    assert json.loads(props["names"]) == list(meta.class_names)
    assert json.loads(props["imgsz"]) == [416, 416] and props["stride"] == "32"
    assert props["decode_in_graph"] == "true" and props["nms_in_graph"] == "false"
    assert props["color"] == "bgr" and props["pad_value"] == "114" and props["producer"].startswith("yolox-deploy")
    assert read_onnx_meta(path) == meta
    with open_backend(path) as backend:  # the runtime reads the same thing through ONNX Runtime alone
        assert backend.meta == meta


# --- simplification ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx_model(tiny_random_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    write_onnx(load_source(tiny_random_model), ExportOptions(img_size=(64, 96), dynamic=True, dynamic_hw=True,
                                                             simplify=False), path)
    return onnx.load(str(path))


@pytest.mark.parametrize("error", [RuntimeError("simplifier bug"), ImportError("no onnxslim")])
def test_simplifier_failure_keeps_the_graph(tiny_onnx_model, monkeypatch, caplog, error):
    def broken(model):
        raise error

    monkeypatch.setattr(onnx_export, "_run_simplifier", broken)
    with caplog.at_level(logging.WARNING, logger="yolox_deploy.export.onnx"):
        result = simplify(tiny_onnx_model)
    assert result is tiny_onnx_model
    assert any(r.levelno == logging.WARNING and "keeping the graph as exported" in r.message for r in caplog.records)


def test_simplifier_that_changes_the_inputs_is_rejected(tiny_onnx_model, monkeypatch, caplog):
    def fixes_the_batch(model):
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        changed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        return changed, "test"

    monkeypatch.setattr(onnx_export, "_run_simplifier", fixes_the_batch)
    with caplog.at_level(logging.WARNING, logger="yolox_deploy.export.onnx"):
        assert simplify(tiny_onnx_model) is tiny_onnx_model
    assert "changed its inputs/outputs" in caplog.text


def test_simplified_graph_is_equivalent(tiny_onnx_model):
    import onnxruntime as ort

    simplified = simplify(tiny_onnx_model)
    assert simplified is not tiny_onnx_model
    assert len(simplified.graph.node) < len(tiny_onnx_model.graph.node)
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 96, 64)).astype(np.float32)
    a = ort.InferenceSession(tiny_onnx_model.SerializeToString()).run(None, {"images": x})[0]
    b = ort.InferenceSession(simplified.SerializeToString()).run(None, {"images": x})[0]
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_export_at_opset_11_goes_on_when_the_simplifier_fails(tiny_random_model, tmp_path, monkeypatch, caplog):
    def broken(model):
        raise RuntimeError("simplifier bug")

    monkeypatch.setattr(onnx_export, "_run_simplifier", broken)
    path = tmp_path / "t.onnx"
    opts = ExportOptions(img_size=(64, 64), dynamic=True, nms=True, conf=0.0, max_det=5, opset=11)
    with caplog.at_level(logging.WARNING, logger="yolox_deploy.export.onnx"):
        meta = write_onnx(load_source(tiny_random_model), opts, path)
    assert "simplification failed" in caplog.text
    assert meta.class_names == ("a", "b", "c") and onnx_export.opset_of(onnx.load(str(path))) == 11
    num_dets, boxes, _, labels = _ort(path, np.zeros((3, 3, 64, 64), np.float32))
    assert num_dets.tolist() == [[5]] * 3 and boxes.shape == (3, 5, 4) and set(labels.ravel()) <= {0, 1, 2}


def test_unsupported_opset_is_refused(tiny_random_model, tmp_path):
    from yolox_deploy.errors import InputError

    with pytest.raises(InputError, match="opset 9"):
        write_onnx(load_source(tiny_random_model), ExportOptions(img_size=(64, 64), opset=9), tmp_path / "t.onnx")


def _identity_head(num_classes: int, opset: int):
    """A graph whose output is its input ``pred [B, A, 5 + C]``: the NMS tail alone, any batch."""
    h = onnx.helper
    shape = ["batch", "anchors", 5 + num_classes]
    graph = h.make_graph([h.make_node("Identity", ["pred"], ["output"])], "head",
                         [h.make_tensor_value_info("pred", onnx.TensorProto.FLOAT, shape)],
                         [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, shape)])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], ir_version=7)


def _random_predictions(rng, batch=3, anchors=400, num_classes=4):
    """Decoded predictions with clustered boxes (so NMS has work to do) and distinct scores."""
    centres = rng.uniform(20, 300, (batch, 12, 2))
    pick = rng.integers(0, 12, (batch, anchors))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 6, (batch, anchors, 2))
    wh = rng.uniform(20, 60, (batch, anchors, 2))
    obj = rng.uniform(0, 1, (batch, anchors, 1))
    cls = rng.uniform(0, 1, (batch, anchors, num_classes))
    return np.concatenate([xy, wh, obj, cls], -1).astype(np.float32)


@pytest.mark.parametrize("opset", [11, 13, 17, 20])
@pytest.mark.parametrize("conf,iou,max_det", [(0.3, 0.45, 100), (0.05, 0.65, 20), (0.0, 0.3, 1000)])
def test_nms_tail_equals_postprocess_on_random_predictions(opset, conf, iou, max_det):
    import onnxruntime as ort

    model = _identity_head(4, opset)
    append_nms(model, conf=conf, iou=iou, max_det=max_det)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString())
    pred = _random_predictions(np.random.default_rng(opset))
    got = split_nms_outputs(*session.run(None, {"pred": pred}))
    expected = postprocess(pred, conf, iou, max_det=max_det)
    for e, g in zip(expected, got, strict=True):
        assert 0 < len(e.boxes) <= max_det
        assert len(g.boxes) == len(e.boxes)
        assert (g.class_ids == e.class_ids).all()
        np.testing.assert_allclose(g.boxes, e.boxes, atol=1e-4)
        np.testing.assert_allclose(g.scores, e.scores, atol=1e-6)
    nothing = pred.copy()
    nothing[..., 4] = 0.0 if conf > 0 else -1.0  # no anchor reaches the threshold
    num_dets, boxes, scores, labels = session.run(None, {"pred": nothing})
    assert num_dets.tolist() == [[0]] * 3 and boxes.shape == (3, max_det, 4)
    assert not boxes.any() and not scores.any() and not labels.any()


# --- ONNX sources (the authors' released file) ---------------------------------------------------------------
def test_onnx_source_gets_our_metadata(nano_onnx, dog_batch, tmp_path):
    source = load_source(nano_onnx)
    path = tmp_path / "authors.onnx"
    meta = write_onnx(source, ExportOptions(img_size=SIZE, decode_in_graph=False), path)
    assert not meta.decode_in_graph and meta.batch == 1 and meta.format == "onnx" and meta.num_classes == 80
    assert read_onnx_meta(path) == meta
    original, copy = onnx.load(str(nano_onnx)), onnx.load(str(path))
    assert [n.op_type for n in copy.graph.node] == [n.op_type for n in original.graph.node]
    assert [o.name for o in copy.graph.output] == ["output"]
    np.testing.assert_array_equal(_ort(path, dog_batch)[0], _ort(nano_onnx, dog_batch)[0])


def test_onnx_source_decode_and_nms_tails(nano_onnx, dog_batch, tmp_path):
    """A raw fixed-size ONNX (the authors') gets a decode tail and an NMS tail from write_onnx."""
    source = load_source(nano_onnx)
    [raw] = _ort(nano_onnx, dog_batch)
    decoded_path = tmp_path / "decoded.onnx"
    meta = write_onnx(source, ExportOptions(img_size=SIZE), decoded_path)
    assert meta.decode_in_graph and not meta.nms_in_graph
    np.testing.assert_allclose(_ort(decoded_path, dog_batch)[0], decode(raw, SIZE), rtol=1e-5, atol=1e-3)

    nms_path = tmp_path / "nms.onnx"
    meta = write_onnx(source, ExportOptions(img_size=SIZE, nms=True, conf=0.25, iou=0.45), nms_path)
    assert meta.nms_in_graph and meta.max_det == 100
    [got] = split_nms_outputs(*_ort(nms_path, dog_batch))
    [expected] = postprocess(raw, 0.25, 0.45, input_hw=SIZE, max_det=100)
    assert (got.class_ids == expected.class_ids).all() and len(got.boxes) == 5
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-2)


def test_an_fp16_raw_source_gets_float32_tails(nano_onnx, dog_batch, tmp_path):
    """The decode and NMS steps compute in float32 on an FP16 graph's head (their float32 constants met its
    float16 tensors: a file no runtime loads, written without a word under --no-verify)."""
    float16 = pytest.importorskip("onnxruntime.transformers.float16")
    half = tmp_path / "half.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(nano_onnx)), keep_io_types=False), str(half))
    source = load_source(half)
    [raw] = _ort(half, dog_batch.astype(np.float16))
    for options in (ExportOptions(img_size=SIZE), ExportOptions(img_size=SIZE, nms=True, conf=0.25, iou=0.45)):
        path = tmp_path / "out.onnx"
        meta = write_onnx(source, options, path)
        assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        outputs = _ort(path, dog_batch.astype(np.float16))
        if not meta.nms_in_graph:
            np.testing.assert_allclose(outputs[0], decode(raw.astype(np.float32), SIZE), rtol=1e-5, atol=1e-3)
        else:
            [got] = split_nms_outputs(*outputs)
            [expected] = postprocess(raw.astype(np.float32), 0.25, 0.45, input_hw=SIZE, max_det=100)
            assert (got.class_ids == expected.class_ids).all() and len(got.boxes) == len(expected.boxes) > 0


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
                            "ignore:You are trying to export the model with onnx")
def test_a_source_the_tails_cannot_be_added_to_is_one_message(tiny_random_model, tmp_path):
    """Opset 10 has no Clip with bounds as inputs; a graph the ONNX checker refuses is named (both were
    tracebacks, after the work)."""
    import torch

    from yolox_deploy.errors import InputError

    old = tmp_path / "opset10.onnx"
    with tiny_random_model.decoding(False):
        torch.onnx.export(tiny_random_model, torch.zeros(1, 3, 64, 64), str(old), opset_version=10,
                          input_names=["images"], output_names=["output"], dynamo=False)
    source = load_source(old)
    with pytest.raises(InputError, match=r"the decode step needs ONNX opset >= 11; this graph has opset 10"):
        write_onnx(source, ExportOptions(img_size=(64, 64)), tmp_path / "out.onnx")
    write_onnx(source, ExportOptions(img_size=(64, 64), decode_in_graph=False), tmp_path / "raw.onnx")  # as it is

    unsorted = onnx.load(str(old))
    nodes = list(unsorted.graph.node)
    del unsorted.graph.node[:]
    unsorted.graph.node.extend(reversed(nodes))
    bad = tmp_path / "unsorted.onnx"
    onnx.save(unsorted, str(bad))
    with pytest.raises(InputError, match=r"unsorted.onnx does not pass the ONNX checker \(.*topologically sorted"):
        write_onnx(load_source(bad), ExportOptions(img_size=(64, 64), decode_in_graph=False), tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "out.onnx").exists()


def test_a_dynamic_size_onnx_without_metadata_takes_the_size_given(nano_onnx_dynamic, dog_jpg, tmp_path):
    """Its size came from the graph alone: "pass img_size" was the message, and --img-size did not reach it."""
    from yolox_deploy import Detector
    from yolox_deploy.errors import ArtefactError
    from yolox_deploy.export import export

    model = onnx.load(str(nano_onnx_dynamic))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(ArtefactError, match="input height/width are dynamic and there is no metadata; pass img_size"):
        export(foreign, "onnx", tmp_path / "a.onnx", verify=False)
    result = export(foreign, "onnx", tmp_path / "b.onnx", img_size=320, verify_image=dog_jpg)
    assert result.meta.dynamic_hw and result.meta.decode_in_graph and result.meta.input_size == (320, 320)
    with Detector(result.path) as det:
        assert det.meta.input_size == (320, 320) and {"dog", "bicycle"} <= set(det(dog_jpg)[0].names)


def test_a_source_whose_head_width_is_symbolic_exports(tiny_random_model, tmp_path):
    """torch.onnx.export with a dynamic batch (not simplified) leaves the head's width symbolic: an export from
    it was refused ("cannot read the class count"); ONNX's shape inference follows the graph's own shapes."""
    import warnings

    import torch

    from yolox_deploy.export import export

    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings(), torch.no_grad(), tiny_random_model.decoding(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_random_model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["output"],
                          dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}})
    assert not onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim[2].HasField("dim_value")
    assert read_onnx_meta(path).num_classes == 3
    result = export(path, "onnx", tmp_path / "out.onnx")  # verified against the source in ONNX Runtime
    assert result.meta.num_classes == 3 and result.meta.input_size == (64, 64)


# --- COCO AP -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_val(coco_tiny):
    return open_coco(coco_tiny, "val2017")


def test_ap_of_our_onnx(cli_export, coco_val):
    with Detector(cli_export[1], **AUTHORS_PROTOCOL) as det:
        ap = evaluate(det, coco_val).stats["AP"]
    assert abs(ap - REFERENCE_AP) <= 0.003, ap


def test_ap_of_the_authors_onnx_through_the_cli(nano_onnx, coco_tiny, capsys):
    from yolox_deploy.cli.eval import main

    assert main([str(nano_onnx), "--data", str(coco_tiny)]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("AP ")][-1]
    ap = float(line.split()[1])
    assert abs(ap - REFERENCE_AP) <= 0.003, line
