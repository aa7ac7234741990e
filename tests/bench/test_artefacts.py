"""Backend -> artefact resolution through the registries, devices, weights and the export cache."""

from __future__ import annotations

import pytest
import torch

from yolox_deploy.bench.artefacts import (
    ArtefactRequest,
    backend_status,
    cached_artefact,
    canonical_backend,
    export_options,
    format_for_backend,
    model_source,
    pick_device,
)
from yolox_deploy.errors import BackendUnavailable, InputError
from yolox_deploy.export import registered_formats
from yolox_deploy.runtimes import registered_backends


def test_aliases():
    assert canonical_backend("TRT") == "tensorrt"
    assert canonical_backend("ort") == "onnxruntime"
    assert canonical_backend("openvino") == "openvino"


def test_every_registered_backend_resolves_to_a_format_or_runs_checkpoints():
    formats = registered_formats()
    for name in registered_backends():
        fmt = format_for_backend(name)
        assert fmt is None or fmt in formats
    assert format_for_backend("torch") is None


def test_onnxruntime_is_fed_by_the_onnx_format():
    if "onnxruntime" not in registered_backends() or "onnx" not in registered_formats():
        pytest.skip("onnxruntime backend or onnx format not registered")
    assert format_for_backend("onnxruntime") == "onnx"


def test_backend_status():
    ok, why = backend_status("torch")
    assert ok and why == ""
    ok, why = backend_status("no-such-runtime")
    assert not ok and "no backend named 'no-such-runtime'" in why


def test_pick_device():
    assert pick_device("torch", "cpu") == "cpu"
    assert pick_device("torch", "auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if "openvino" in registered_backends():
        assert pick_device("openvino", "cuda") == "cpu"     # CPU-only backend on a GPU request
    if "tensorrt" in registered_backends():
        with pytest.raises(BackendUnavailable):
            pick_device("tensorrt", "cpu")


def test_model_source_random_is_deterministic_and_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = model_source("nano", None)
    b = model_source("nano", tmp_path)   # empty folder: random too
    assert not a.real and a.label == "random (seed 0)" and a.fingerprint() == "random0"
    wa, wb = (next(s.model().parameters()) for s in (a, b))
    assert torch.equal(wa, wb)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_model_source_real_weights(nano_pth):
    src = model_source("yolox-nano", nano_pth.parent)
    assert src.real and src.checkpoint == nano_pth
    assert len(src.fingerprint()) == 12


def test_export_options():
    req = ArtefactRequest("yolox-nano", "openvino", "int8", 4, (416, 416))
    with pytest.raises(InputError):
        export_options(req, None)
    opts = export_options(req, tmp := __import__("pathlib").Path("/calib"))
    assert opts["int8"] and opts["calib_images"] == tmp and opts["batch"] == 4 and opts["verify"]
    assert export_options(ArtefactRequest("yolox-nano", "onnx", "fp16", 1, (416, 416)), None)["half"]
    raw = export_options(ArtefactRequest("yolox-nano", "onnx", "fp32", 1, (416, 416), decode_in_graph=False), None)
    assert raw["decode_in_graph"] is False


def test_cache_exports_once_and_reuses(tmp_path):
    if "onnx" not in registered_formats() or not registered_formats()["onnx"].info.available()[0]:
        pytest.skip("onnx format not available")
    src = model_source("nano", None)
    req = ArtefactRequest("yolox-nano", "onnx", "fp32", 1, (160, 160))
    path, reused = cached_artefact(src, req, tmp_path)
    assert path.is_file() and not reused
    mtime = path.stat().st_mtime_ns
    again, reused = cached_artefact(src, req, tmp_path)
    assert again == path and reused and path.stat().st_mtime_ns == mtime
    assert (path.parent / "request.json").is_file()
    other = ArtefactRequest("yolox-nano", "onnx", "fp32", 2, (160, 160))
    assert other.folder_name(src.fingerprint()) != path.parent.name
    assert ArtefactRequest("yolox-nano", "openvino", "fp32", 1, (160, 160)).folder_name("x") != req.folder_name("x")
