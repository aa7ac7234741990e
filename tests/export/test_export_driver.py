"""The export driver and ``yolox-export``: bad requests give one ``error:`` line and exit 2, and nothing (no file,
no staging folder) is left behind by a refused, failed, interrupted or unverified export."""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from yolox_deploy.cli.export import main as export_main  # noqa: E402
from yolox_deploy.errors import InputError  # noqa: E402
from yolox_deploy.export import base, export  # noqa: E402
from yolox_deploy.export import onnx as onnx_export  # noqa: E402
from yolox_deploy.export.base import Exporter, register_format  # noqa: E402


@pytest.fixture(scope="module")
def tiny_pth(tiny_random_model, tmp_path_factory):
    from yolox_deploy import save_checkpoint

    return save_checkpoint(tiny_random_model, tmp_path_factory.mktemp("weights") / "tiny.pth")


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _run(args, capsys):
    rc = export_main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def _assert_empty(folder):
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.fixture
def throwaway_format(monkeypatch):
    """A format that supports INT8, registered for one test only (the registry is restored afterwards)."""
    monkeypatch.setattr(base, "_FORMATS", dict(base._FORMATS))

    @register_format("testfmt", suffix=".testfmt", supports=("int8", "half"))
    class _TestFormat(Exporter):
        """Writes the source name (for driver tests)."""

        def export(self, source, dest):
            dest.write_text(source.name)
            return self.artefact_meta(source)

    return _TestFormat


# --- refused before any work ---------------------------------------------------------------------------------
def test_unknown_format(tiny_pth, out, capsys):
    rc, _, err = _run(["--weights", tiny_pth, "--format", "pickle", "--output", out / "m.x"], capsys)
    assert rc == 2
    line = _one_error(err)
    assert "unknown export format 'pickle'" in line and "onnx" in line
    _assert_empty(out)


@pytest.mark.parametrize("size", [["100"], ["416", "100"], ["0"], ["-32"]])
def test_img_size_not_a_multiple_of_32(tiny_pth, out, capsys, size):
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", "--img-size", *size],
                      capsys)
    assert rc == 2 and "multiple of 32" in _one_error(err)
    _assert_empty(out)


def test_int8_without_calibration_images(tiny_pth, out, capsys, throwaway_format, tmp_path):
    rc, _, err = _run(["--weights", tiny_pth, "--format", "testfmt", "--output", out / "m.testfmt", "--int8"], capsys)
    assert rc == 2 and "--calib-images" in _one_error(err)
    empty = tmp_path / "no-images"
    empty.mkdir()
    for folder, message in ((tmp_path / "missing", "not found"), (empty, "no images")):
        rc, _, err = _run(["--weights", tiny_pth, "--format", "testfmt", "--output", out / "m.testfmt", "--int8",
                           "--calib-images", folder], capsys)
        assert rc == 2 and message in _one_error(err)
    _assert_empty(out)
    # the same format works once the request is complete
    rc, _, _ = _run(["--weights", tiny_pth, "--format", "testfmt", "--output", out / "m.testfmt", "--no-verify",
                     "--img-size", "64"], capsys)
    assert rc == 0 and (out / "m.testfmt").read_text() == "tiny"


@pytest.mark.parametrize("flag,shown", [(["--half"], "--half"), (["--int8", "--calib-images", "."], "--int8"),
                                        (["--workspace", "2"], "--workspace")])
def test_option_the_format_does_not_support(tiny_pth, out, capsys, flag, shown):
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", *flag], capsys)
    line = _one_error(err)
    assert rc == 2 and "onnx format does not support" in line and shown in line
    _assert_empty(out)


def test_other_bad_requests(tiny_pth, out, capsys, tmp_path):
    cases = [
        (["--dynamic-hw"], "needs a dynamic batch"),
        (["--opset", "30"], "opset 30"),
        (["--batch", "0"], "batch must be >= 1"),
        (["--verify-image", tmp_path / "nope.jpg"], "verification image not found"),
    ]
    for extra, message in cases:
        rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", *extra], capsys)
        assert rc == 2 and message in _one_error(err), extra
    rc, _, err = _run(["--weights", tmp_path / "nope.pth", "--format", "onnx", "--output", out / "m.onnx"], capsys)
    assert rc == 2 and "weights not found" in _one_error(err)
    _assert_empty(out)


def test_missing_package(tiny_pth, out, capsys, monkeypatch):
    real = importlib.util.find_spec

    def no_onnx(name, *args, **kwargs):
        return None if name == "onnx" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_onnx)
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx"], capsys)
    line = _one_error(err)
    assert rc == 2 and "'onnx' package" in line and "pip install 'yolox-deploy[onnx]'" in line
    _assert_empty(out)


def test_existing_output_is_kept_without_force(tiny_pth, out, capsys):
    target = out / "m.onnx"
    target.write_bytes(b"precious")
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", target, "--img-size", "64"], capsys)
    line = _one_error(err)
    assert rc == 2 and "already exists" in line and "--force" in line
    assert target.read_bytes() == b"precious" and sorted(p.name for p in out.iterdir()) == ["m.onnx"]
    rc, stdout, _ = _run(["--weights", tiny_pth, "--format", "onnx", "--output", target, "--img-size", "64",
                          "--force"], capsys)
    assert rc == 0 and target.read_bytes()[:8] != b"precious" and "max abs diff" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not the 0600 of a temporary file


def test_output_never_replaces_the_input_onnx(nano_onnx, tmp_path):
    src = tmp_path / "authors.onnx"
    src.write_bytes(nano_onnx.read_bytes())
    with pytest.raises(InputError, match="overwrite the input"):
        export(src, "onnx", src, force=True)


def test_default_output_next_to_the_weights_or_in_the_current_folder(tiny_pth, tmp_path, monkeypatch):
    from yolox_deploy.export import default_output, format_class
    from yolox_deploy.export.base import ExportOptions
    from yolox_deploy.export.source import load_source

    info, opts = format_class("onnx").info, ExportOptions()
    source = load_source(tiny_pth)
    assert default_output(source, info, opts) == tiny_pth.parent / "tiny.onnx"
    monkeypatch.chdir(tmp_path)
    read_only = tmp_path / "store"
    read_only.mkdir()
    (read_only / "tiny.pth").write_bytes(tiny_pth.read_bytes())
    read_only.chmod(0o555)
    try:
        assert default_output(load_source(read_only / "tiny.pth"), info, opts) == tmp_path / "tiny.onnx"
    finally:
        read_only.chmod(0o755)


# --- failures in the middle leave nothing ------------------------------------------------------------------
@pytest.mark.parametrize("error,rc", [(RuntimeError("tracer exploded"), 2), (KeyboardInterrupt(), 130)])
def test_failure_during_export_leaves_nothing(tiny_pth, out, capsys, monkeypatch, error, rc):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.onnx, "export", broken)
    code, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", "--img-size", "64"],
                        capsys)
    assert code == rc and "Traceback" not in err
    if rc == 2:
        assert "torch.onnx.export failed" in _one_error(err) and "tracer exploded" in err
    _assert_empty(out)


def test_failed_verification_leaves_nothing(tiny_pth, out, capsys, monkeypatch):
    """An artefact that really differs from its source (perturbed weights) is refused and not written."""
    real = onnx_export._from_torch

    def perturbed(source, options):
        wrong = copy.copy(source)
        wrong.model = copy.deepcopy(source.model)
        with torch.no_grad():
            for conv in wrong.model.head.reg_preds:
                conv.bias += 0.5
        return real(wrong, options)

    monkeypatch.setattr(onnx_export, "_from_torch", perturbed)
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", "--img-size", "64",
                       "--no-simplify"], capsys)
    line = _one_error(err)
    assert rc == 2 and "verification failed, nothing written" in line and "--no-verify" in line
    _assert_empty(out)
    rc, _, _ = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", "--img-size", "64",
                     "--no-simplify", "--no-verify"], capsys)
    assert rc == 0 and sorted(p.name for p in out.iterdir()) == ["m.onnx"]

