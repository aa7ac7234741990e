"""Canvas batches (what the Detector passes) give every backend the same result as the float model input.

Each backend turns uint8 ``[N, H, W, 3]`` canvases into the model input its own way (in the runtime's graph,
with NCNN's ``from_pixels``, on the device, or in numpy); the raw outputs must match those of the float
input made by :func:`~yolox_deploy.ops.letterbox.to_model_input`.
"""

from __future__ import annotations

import numpy as np
import pytest

from yolox_deploy import Detector
from yolox_deploy.errors import InputError
from yolox_deploy.meta import Preprocess
from yolox_deploy.ops.letterbox import letterbox_batch, to_model_input
from yolox_deploy.runtimes.detector import open_backend

SIZE = (64, 96)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, tiny_random_model):
    """The 3-class random nano as every CPU artefact kind (skipping kinds whose package is missing)."""
    from yolox_deploy.export import export, format_class

    folder = tmp_path_factory.mktemp("canvas")
    out = {"torch": tiny_random_model}
    for fmt, name in (("onnx", "tiny.onnx"), ("openvino", "tiny_openvino"), ("ncnn", "tiny_ncnn")):
        ok, _ = format_class(fmt).info.available()
        if ok:
            export(tiny_random_model, fmt, folder / name, img_size=SIZE, verify=False)
            out[fmt] = folder / name
    return out


def _canvases(rng, n=2):
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (90, 40), (64, 96))[:n]]
    return letterbox_batch(images, SIZE)[0]


@pytest.mark.parametrize("kind", ["torch", "onnx", "openvino", "ncnn"])
def test_canvas_batch_equals_float_input(artefacts, kind, rng):
    if kind not in artefacts:
        pytest.skip(f"{kind} is not installed")
    canvases = _canvases(rng, 1)
    with open_backend(artefacts[kind], img_size=SIZE) as backend:
        got = np.asarray(backend.infer(canvases)[0])
        want = np.asarray(backend.infer(to_model_input(canvases, Preprocess()))[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_onnxruntime_and_openvino_convert_inside_the_runtime(artefacts):
    if "onnx" not in artefacts or "openvino" not in artefacts:
        pytest.skip("needs onnxruntime and openvino")
    with open_backend(artefacts["onnx"]) as ort_backend:
        assert ort_backend._canvas_session is not None
        assert ort_backend._canvas_session.get_inputs()[0].type == "tensor(uint8)"
        assert ort_backend._session is None  # the float-input session opens only when a float batch comes
    with open_backend(artefacts["openvino"]) as ov_backend:
        assert ov_backend._canvas is not None and ov_backend._plain is None
        assert str(ov_backend.compiled.inputs[0].get_element_type()) == "<Type: 'uint8_t'>"
    with open_backend(artefacts["onnx"], canvas_in_graph=False) as plain:
        assert plain._canvas_session is None


def test_legacy_contract_converts_in_numpy(artefacts, tiny_random_model, tmp_path, rng):
    """An artefact with the legacy (RGB, /255, ImageNet) contract gets its canvases normalised in numpy."""
    if "onnx" not in artefacts:
        pytest.skip("needs onnxruntime")
    from yolox_deploy.export import export

    path = tmp_path / "legacy.onnx"
    export(tiny_random_model, "onnx", path, img_size=SIZE, legacy=True, verify=False)
    canvases = _canvases(rng, 1)
    with open_backend(path) as backend:
        assert backend.meta.preprocess == Preprocess.legacy() and backend._canvas_session is None
        got = backend.infer(canvases)[0]
        want = backend.infer(to_model_input(canvases, Preprocess.legacy()))[0]
    np.testing.assert_array_equal(got, want)
    with open_backend(path, legacy=True) as backend:  # says what the artefact records: accepted
        assert backend.meta.preprocess == Preprocess.legacy()
    # an artefact that records the current contract is not made legacy by a flag (it was ignored before)
    with pytest.raises(InputError, match="records its input contract .* legacy \\(--legacy\\) describes"):
        open_backend(artefacts["onnx"], legacy=True)


@pytest.mark.parametrize("kind", ["onnx", "openvino", "ncnn"])
def test_detector_results_do_not_depend_on_where_canvases_are_converted(artefacts, kind, rng):
    if kind not in artefacts:
        pytest.skip(f"{kind} is not installed")
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (90, 40))]
    in_runtime, numpy_input = [], []
    with Detector(artefacts[kind], conf=0.0, nms=0.5) as det:
        for image in images:
            batch, ratios = det.preprocess([image])
            in_runtime += det.postprocess(det.infer(batch), ratios, [image.shape[:2]])
            numpy_input += det.postprocess(det.infer(to_model_input(batch, det.meta.preprocess)), ratios,
                                           [image.shape[:2]])
    for a, b in zip(in_runtime, numpy_input, strict=True):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.xyxy, b.xyxy, rtol=1e-4, atol=1e-2)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_canvas_batch_checks(artefacts, rng):
    if "onnx" not in artefacts:
        pytest.skip("needs onnxruntime")
    from yolox_deploy.errors import InputError

    with open_backend(artefacts["onnx"]) as backend:
        with pytest.raises(InputError, match="64x96"):
            backend.infer(np.zeros((1, 32, 96, 3), np.uint8))
        with pytest.raises(InputError, match="batch 1"):
            backend.infer(np.zeros((2, 64, 96, 3), np.uint8))
