"""Backend -> artefact resolution through the registries, devices, weights and the export cache."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from yolox_deploy.bench.artefacts import (
    ArtefactRequest,
    ModelSource,
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


def test_auto_picks_the_gpu_only_for_a_backend_that_runs_there(monkeypatch):
    """On a GPU host, the CPU-only onnxruntime package was given rows on cuda (then 'not available'): auto
    asks the backend, as installed, whether it runs there."""
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert pick_device("onnxruntime", "auto") == "cpu"
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert pick_device("onnxruntime", "auto") == "cuda"


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
    assert export_options(ArtefactRequest("yolox-nano", "onnx", "fp32", 1, (416, 416)), None, verify=False)["verify"] is False


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


@pytest.fixture
def fake_export(monkeypatch):
    """``export`` replaced by one that writes a marker file (or fails), recording its calls."""
    import yolox_deploy.export as export_module

    calls = []

    def fake(model, fmt, path, **opts):
        calls.append(opts)
        if opts.get("img_size") == (96, 96):
            raise InputError("refused")
        path.write_text("artefact")

    monkeypatch.setattr(export_module, "export", fake)
    return calls


def _calibration_folder(path, shade):
    import cv2
    import numpy as np

    path.mkdir()
    for i in range(2):
        cv2.imwrite(str(path / f"{i}.png"), np.full((32, 32, 3), shade + i, np.uint8))
    return path


def test_an_int8_entry_belongs_to_its_calibration_images(tmp_path, fake_export):
    src = model_source("nano", None)
    req = ArtefactRequest("yolox-nano", "onnx", "int8", 1, (160, 160))
    a, b = _calibration_folder(tmp_path / "a", 10), _calibration_folder(tmp_path / "b", 200)
    path_a, reused = cached_artefact(src, req, tmp_path / "cache", a)
    assert not reused and cached_artefact(src, req, tmp_path / "cache", a) == (path_a, True)
    path_b, reused = cached_artefact(src, req, tmp_path / "cache", b)
    assert not reused and path_b != path_a and len(fake_export) == 2
    (b / "0.png").write_bytes((a / "0.png").read_bytes())  # an image of the set changed
    assert cached_artefact(src, req, tmp_path / "cache", b)[1] is False


def test_random_weights_are_verified_in_fp32_only(tmp_path, fake_export):
    """Reduced-precision verification compares the anchors that score; random weights have none, so such an
    export would be refused as comparing nothing: it is made unverified instead (FP32 compares the head)."""
    src = model_source("nano", None)
    assert src.verifiable("fp32") and not src.verifiable("fp16") and not src.verifiable("int8")
    assert ModelSource(src.spec, tmp_path / "yolox_nano.pth").verifiable("int8")
    calib = _calibration_folder(tmp_path / "calib", 10)
    for precision in ("int8", "fp16", "fp32"):
        cached_artefact(src, ArtefactRequest("yolox-nano", "openvino", precision, 1, (160, 160)), tmp_path / "cache",
                        calib if precision == "int8" else None)
    assert [c["verify"] for c in fake_export] == [False, False, True]


def test_an_export_killed_outright_leaves_no_staging_behind_the_next(tmp_path, fake_export):
    src = model_source("nano", None)
    req = ArtefactRequest("yolox-nano", "onnx", "fp32", 1, (160, 160))
    entry = tmp_path / "cache" / req.folder_name(src.fingerprint())
    (entry / ".yolox_nano.onnx.k1ll3d.part").mkdir(parents=True)
    (entry / ".yolox_nano.onnx.data.x2.part").write_text("half")
    path, _ = cached_artefact(src, req, tmp_path / "cache")
    assert sorted(p.name for p in entry.iterdir()) == ["request.json", path.name]


def test_a_photo_to_verify_on_goes_to_verified_exports_only(tmp_path, fake_export):
    photo = tmp_path / "dog.jpg"
    src = model_source("nano", None)
    for precision in ("fp32", "fp16"):
        cached_artefact(src, ArtefactRequest("yolox-nano", "openvino", precision, 1, (160, 160)), tmp_path / "c",
                        verify_image=photo)
    assert [c.get("verify_image") for c in fake_export] == [photo, None]


def test_a_failed_export_leaves_no_cache_entry(tmp_path, fake_export):
    src = model_source("nano", None)
    with pytest.raises(InputError, match="refused"):
        cached_artefact(src, ArtefactRequest("yolox-nano", "onnx", "fp32", 1, (96, 96)), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_calibration_pngs_of_a_longer_earlier_run_are_removed(tmp_path):
    import numpy as np

    from yolox_deploy.bench.artefacts import write_calibration_images

    images = [np.full((16, 16, 3), v, np.uint8) for v in range(4)]
    folder = write_calibration_images(images, tmp_path / "calibration")
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    write_calibration_images(images[:2], folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == {k: mtimes[k] for k in ("calib_000.png",
                                                                                             "calib_001.png")}


def test_a_calibration_link_whose_image_is_gone_is_left_out_of_the_cache_key(tmp_path):
    """The folder lists such a link now (reading it says so); the cache key stat()ed it and failed."""
    from yolox_deploy.bench.artefacts import calibration_fingerprint

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    before = calibration_fingerprint(tmp_path)
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "moved.jpg")
    assert calibration_fingerprint(tmp_path) == before
