"""The export driver and ``yolox-export``: bad requests give one ``error:`` line and exit 2, and nothing (no file,
no staging folder) is left behind by a refused, failed, interrupted or unverified export."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from yolox_deploy.cli.export import main as export_main  # noqa: E402
from yolox_deploy.errors import InputError  # noqa: E402
from yolox_deploy.export import base, export, format_class  # noqa: E402
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
@pytest.mark.parametrize("weights", [None, 3, torch.nn.Conv2d(3, 3, 1)])
def test_weights_of_the_wrong_type(out, weights):
    with pytest.raises(InputError, match="weights are a checkpoint or artefact path"):
        export(weights, "onnx", out / "m.onnx")
    _assert_empty(out)


@pytest.mark.parametrize("option,value,kind", [("dynamic", "no", "true or false"), ("batch", "2", "an integer"),
                                               ("batch", 2.5, "an integer"), ("iou", "0.5", "a number"),
                                               ("opset", "13", "an integer"), ("max_det", 2.5, "an integer"),
                                               ("verify", 1, "true or false")])
def test_options_of_the_wrong_type(tiny_pth, out, option, value, kind):
    """The Python API takes any value: a string where a switch goes would be truthy, a float batch crash."""
    with pytest.raises(InputError, match=f"export option {option} must be {kind}, not {value!r}"):
        export(tiny_pth, "onnx", out / "m.onnx", **{option: value})
    _assert_empty(out)


def test_numpy_scalars_are_taken_as_numbers(tiny_pth, out):
    """They passed the type check, then failed the metadata's JSON after the export was done."""
    result = export(tiny_pth, "onnx", out / "m.onnx", img_size=64, dynamic=np.bool_(True), batch=np.int64(2),
                    nms=True, conf=np.float32(0.5), max_det=np.int64(50), verify=False)
    assert result.meta.batch is None and result.meta.max_det == 50 and result.meta.extra["nms_conf"] == 0.5
    assert type(result.meta.max_det) is int and type(result.meta.extra["nms_conf"]) is float


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
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), np.full((32, 32, 3), 90, np.uint8))
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for name in ("a.jpg", "b.png"):
        (unreadable / name).write_bytes(b"not an image")
    for folder, message in ((tmp_path / "missing", "not found"), (empty, "no images"),
                            (photo, "photo.jpg is a file; calibration takes a folder of images (--calib-images)"),
                            (unreadable, "none of the 2 images in")):  # was found after the model was converted
        rc, _, err = _run(["--weights", tiny_pth, "--format", "testfmt", "--output", out / "m.testfmt", "--int8",
                           "--calib-images", folder], capsys)
        assert rc == 2 and message in _one_error(err)
    _assert_empty(out)
    folder = tmp_path / "calib"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.full((32, 32, 3), 90, np.uint8))
    for extra, message in ((["--half"], "the testfmt format takes --half or --int8, not both"),
                           (["--calib-count", "0"], "calibration image count must be >= 1, got 0")):
        rc, _, err = _run(["--weights", tiny_pth, "--format", "testfmt", "--output", out / "m.testfmt", "--int8",
                           "--calib-images", folder, *extra], capsys)
        assert rc == 2 and message in _one_error(err)
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
        (["--opset", "21"], "ONNX opset 21 is not supported for export; use 11..20"),
        (["--opset", "10"], "ONNX opset 10 is not supported for export; use 11..20"),
        (["--no-verify", "--verify-image", tmp_path / "nope.jpg"], "it cannot go with --no-verify"),
        (["--batch", "0"], "batch must be >= 1"),
        (["--verify-image", tmp_path / "nope.jpg"], "verification image not found"),
        (["--verify-image", tmp_path], f"{tmp_path} is a folder; --verify-image takes one image"),
    ]
    for extra, message in cases:
        rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", *extra], capsys)
        assert rc == 2 and message in _one_error(err), extra
    rc, _, err = _run(["--weights", tmp_path / "nope.pth", "--format", "onnx", "--output", out / "m.onnx"], capsys)
    assert rc == 2 and "weights not found" in _one_error(err)
    _assert_empty(out)
    (tmp_path / "taken.onnx").write_bytes(b"x")  # the missing weights are said first, not the output's --force
    rc, _, err = _run(["--weights", tmp_path / "nope.pth", "--format", "onnx", "--output", tmp_path / "taken.onnx"],
                      capsys)
    assert rc == 2 and "weights not found" in _one_error(err)


def test_missing_package(tiny_pth, out, capsys, monkeypatch):
    real = importlib.util.find_spec

    def no_onnx(name, *args, **kwargs):
        return None if name == "onnx" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_onnx)
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx"], capsys)
    line = _one_error(err)
    assert rc == 2 and "'onnx' package" in line and "pip install 'yolox-deploy[onnx]'" in line
    _assert_empty(out)


def test_tensorrt_without_onnx_is_refused_before_any_work(tiny_pth, out, capsys, monkeypatch):
    """The TensorRT format writes an ONNX step first: without ``onnx`` it is refused before the checkpoint is
    read (or fetched by name), not after the model was traced."""
    import yolox_deploy.export as export_module

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "onnx" else real(name, *a, **k))
    monkeypatch.setattr(export_module, "load_source", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    rc, _, err = _run(["--weights", tiny_pth, "--format", "trt", "--output", out / "m.engine"], capsys)
    line = _one_error(err)
    assert rc == 2 and "'onnx' package" in line and "pip install 'yolox-deploy[onnx]'" in line
    _assert_empty(out)


@pytest.mark.parametrize("missing", [set(), {"tensorrt"}, {"tensorrt", "onnx"}])
def test_help_says_what_tensorrt_does_here(missing, monkeypatch):
    """The formats list under --help: TensorRT without its package still runs its ONNX step (it is not
    listed as unavailable then); without onnx too it is."""
    from yolox_deploy.cli.export import build_parser

    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):  # tensorrt is installed unless missing (not on this CI)
        if name in missing:
            return None
        return importlib.machinery.ModuleSpec(name, None) if name == "tensorrt" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    line = next(ln for ln in build_parser().epilog.splitlines() if ln.strip().startswith("tensorrt"))
    if not missing:
        assert "[" not in line
    elif "onnx" in missing:
        assert "[unavailable:" in line and "'onnx' package" in line
    else:
        assert "unavailable" not in line and "'tensorrt' package" in line and "the ONNX step runs" in line


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


def test_an_output_made_while_the_export_ran_is_kept_without_force(tiny_pth, out, capsys, monkeypatch):
    """The output was checked only before the export: a file another process (or export) made there meanwhile
    was replaced without --force."""
    from yolox_deploy.export import onnx as onnx_export

    target = out / "m.onnx"
    real = onnx_export._from_torch

    def meanwhile(*args, **kwargs):
        target.write_bytes(b"precious")
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "_from_torch", meanwhile)
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", target, "--img-size", "64",
                       "--no-verify"], capsys)
    line = _one_error(err)
    assert rc == 2 and "already exists" in line and "--force" in line
    assert target.read_bytes() == b"precious" and sorted(p.name for p in out.iterdir()) == ["m.onnx"]
    rc, _, _ = _run(["--weights", tiny_pth, "--format", "onnx", "--output", target, "--img-size", "64",
                     "--no-verify", "--force"], capsys)
    assert rc == 0 and target.read_bytes()[:8] != b"precious" and sorted(p.name for p in out.iterdir()) == ["m.onnx"]


def test_an_output_too_long_to_replace_is_refused_before_any_work(tiny_pth, out, capsys, no_loading):
    """It failed when the new artefact moved in, after the export and its verification."""
    target = out / ("a" * 245 + ".onnx")
    target.write_bytes(b"precious")
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", target, "--force"], capsys)
    line = _one_error(err)
    assert rc == 2 and "cannot be replaced: its name is longer than" in line and target.read_bytes() == b"precious"


def test_a_linked_output_stays_a_link_to_the_replaced_artefact(tiny_pth, out, capsys):
    """A deploy layout (current.onnx -> v1.onnx): --force replaced the link by a file and left v1 as it was."""
    (out / "v1.onnx").write_bytes(b"old")
    (out / "current.onnx").symlink_to("v1.onnx")
    rc, _, _ = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "current.onnx", "--img-size", "64",
                     "--force", "--no-verify"], capsys)
    assert rc == 0 and (out / "current.onnx").is_symlink() and (out / "v1.onnx").read_bytes()[:3] != b"old"
    assert sorted(p.name for p in out.iterdir()) == ["current.onnx", "v1.onnx"]


def test_output_never_replaces_the_input_onnx(nano_onnx, tmp_path):
    src = tmp_path / "authors.onnx"
    src.write_bytes(nano_onnx.read_bytes())
    for force in (True, False):  # the reason, not "pass --force"
        with pytest.raises(InputError, match="would overwrite the input model; give another output"):
            export(src, "onnx", src, force=force)
    result = export(src, "onnx", verify=False)  # the default output is beside it, under another name
    assert result.path == tmp_path / "authors_deploy.onnx" and src.read_bytes() == nano_onnx.read_bytes()


def test_an_onnx_made_from_an_onnx_is_named_deploy_wherever_it_goes(nano_onnx, tmp_path, monkeypatch):
    """In the current folder (the source's read-only) it took the source's own name."""
    import yolox_deploy.export as driver
    from yolox_deploy.export.base import ExportOptions
    from yolox_deploy.export.source import load_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(driver, "_writable", lambda folder: False)
    source = load_source(nano_onnx)
    assert driver.default_output(source, driver.format_class("onnx").info, ExportOptions()) == (
        tmp_path / "yolox_nano_deploy.onnx")
    assert driver.default_output(source, driver.format_class("openvino").info, ExportOptions()) == (
        tmp_path / "yolox_nano_openvino")


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


def test_a_full_disk_names_the_artefact_and_leaves_nothing(tiny_pth, out, capsys, monkeypatch):
    """A write that fails for lack of space names no file (OSError without filename): the message names the
    artefact, not a temporary file, and nothing is left."""
    import errno
    import os

    import onnx

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save", full)
    code, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", "--img-size", "64"],
                        capsys)
    assert code == 2 and "Traceback" not in err
    assert _one_error(err) == (f"error: could not write {out / 'm.onnx'}: No space left on device (no part of it "
                               "was left)")
    _assert_empty(out)


def test_failed_verification_leaves_nothing(tiny_pth, out, capsys, perturbed_onnx_export):
    """An artefact that really differs from its source (perturbed weights) is refused and not written."""
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", "--img-size", "64",
                       "--no-simplify"], capsys)
    line = _one_error(err)
    assert rc == 2 and "verification failed, nothing written" in line and "--no-verify" in line
    _assert_empty(out)
    rc, _, _ = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", "--img-size", "64",
                     "--no-simplify", "--no-verify"], capsys)
    assert rc == 0 and sorted(p.name for p in out.iterdir()) == ["m.onnx"]



# --- the output location -------------------------------------------------------------------------------------
@pytest.fixture
def throwaway_folder_format(monkeypatch):
    """A folder format (``<stem>_testdir/model.txt``), registered for one test only."""
    monkeypatch.setattr(base, "_FORMATS", dict(base._FORMATS))

    @register_format("testdir", suffix="_testdir", is_dir=True, artefact_files=("model.txt",))
    class _TestFolderFormat(Exporter):
        """Writes the source name into a folder (for driver tests)."""

        def export(self, source, dest):
            (dest / "model.txt").write_text(source.name)
            return self.artefact_meta(source)

    return _TestFolderFormat


def test_a_file_artefact_is_named_by_its_format_and_replaces_nothing_else(tiny_pth, out, capsys):
    """An ONNX export to photo.jpg or to the checkpoint itself, even with --force, is refused before any work."""
    (out / "photo.jpg").write_bytes(b"a picture")
    own = out / "tiny.pth"
    own.write_bytes(tiny_pth.read_bytes())
    for target in (out / "photo.jpg", own, out / "model.txt"):
        rc, _, err = _run(["--weights", own, "--format", "onnx", "--output", target, "--img-size", "64", "--force",
                           "--no-verify"], capsys)
        assert rc == 2 and f"onnx artefacts are named NAME.onnx (the runtimes recognise them by that), not {target.name}" \
            in _one_error(err)
    assert (out / "photo.jpg").read_bytes() == b"a picture" and own.read_bytes() == tiny_pth.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["photo.jpg", "tiny.pth"]


@pytest.mark.parametrize("fmt,name", [("openvino", "m.xml"), ("openvino", "m.ONNX"), ("ncnn", "m.param"),
                                      ("ncnn", "m.bin"), ("ncnn", "m.json"), ("openvino", "m.pth")])
def test_a_folder_artefact_is_not_named_like_a_model_file(tiny_pth, out, capsys, fmt, name):
    """An OpenVINO export to m.xml made a folder m.xml holding m.xml.xml and m.xml.bin."""
    rc, _, err = _run(["--weights", tiny_pth, "--format", fmt, "--output", out / name, "--img-size", "64",
                       "--no-verify"], capsys)
    assert rc == 2 and f"{fmt} artefacts are folders (e.g. {out / ('m_' + fmt)}), and {name} would be a folder " \
        "named like a model file" in _one_error(err)
    assert list(out.iterdir()) == []


def test_a_folder_is_never_replaced_by_a_file(tiny_pth, out, capsys, monkeypatch):
    models = out / "models"
    models.mkdir()
    (models / "keep.txt").write_text("precious")
    for output in (models, f"{models}/"):
        rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", output, "--img-size", "64",
                           "--force"], capsys)
        line = _one_error(err)
        assert rc == 2 and "is a folder and the onnx format writes a file" in line and "models/model.onnx" in line
    assert (models / "keep.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["models"]
    monkeypatch.chdir(models)
    for output in (".", "..", models / ".."):
        rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", output, "--img-size", "64",
                           "--force"], capsys)
        assert rc == 2 and "does not name the artefact" in _one_error(err), output
    assert sorted(p.name for p in models.iterdir()) == ["keep.txt"] and sorted(p.name for p in out.iterdir()) == ["models"]


def test_a_folder_format_replaces_only_its_own_folder(tiny_pth, out, capsys, throwaway_folder_format):
    target = out / "m_testdir"
    args = ["--weights", tiny_pth, "--format", "testdir", "--output", target, "--img-size", "64", "--no-verify",
            "--force"]
    target.write_text("a file")
    rc, _, err = _run(args, capsys)
    assert rc == 2 and "is a file and the testdir format writes a folder" in _one_error(err)
    assert target.read_text() == "a file"
    target.unlink()
    target.mkdir()
    (target / "model.txt").write_text("old")
    (target / "notes.md").write_text("mine")
    rc, _, err = _run(args, capsys)
    line = _one_error(err)
    assert rc == 2 and "holds files the testdir format does not write (notes.md)" in line
    assert (target / "notes.md").read_text() == "mine" and (target / "model.txt").read_text() == "old"
    (target / "notes.md").unlink()
    rc, _, _ = _run(args, capsys)  # a previous artefact of the format is what --force replaces
    assert rc == 0 and (target / "model.txt").read_text() == "tiny"
    assert sorted(p.name for p in out.iterdir()) == ["m_testdir"]


def test_an_output_that_cannot_be_written(tiny_pth, out, capsys):
    (out / "afile").write_text("x")
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "afile" / "m.onnx",
                       "--img-size", "64"], capsys)
    line = _one_error(err)
    assert rc == 2 and f"cannot write to {out / 'afile'}" in line and "is a file, not a folder" in line
    if os.path.isdir("/proc"):  # a folder that takes no new files, even from root
        rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", "/proc/m.onnx", "--img-size", "64"],
                          capsys)
        assert rc == 2 and "cannot write to /proc" in _one_error(err)
    assert sorted(p.name for p in out.iterdir()) == ["afile"]


def test_a_failed_export_removes_the_folders_it_made(tiny_pth, out, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "new" / "sub" / "m.onnx",
                       "--img-size", "64"], capsys)
    assert rc == 2 and "tracer exploded" in _one_error(err)
    _assert_empty(out)


# --- options that do not apply -------------------------------------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch):
    """Make loading the source fail loudly: a request refused before any work never gets there."""
    import yolox_deploy.export as driver

    def load_source(*args, **kwargs):
        raise AssertionError("the source was loaded")

    monkeypatch.setattr(driver, "load_source", load_source)


@pytest.mark.parametrize("flags,message", [
    (["--nms", "--conf", "1.5"], "thresholds must be numbers in [0, 1]: conf=1.5"),
    (["--nms", "--iou", "-0.1"], "thresholds must be numbers in [0, 1]: iou=-0.1"),
    (["--nms", "--max-det", "0"], "max_det must be an integer >= 1, got 0"),
    (["--max-batch", "16"], "does not support --max-batch"),
    (["--conf", "0.3"], "--conf is for the NMS inside the graph; add --nms"),
    (["--conf", "0.25", "--max-det", "100"], "--conf, --max-det are for the NMS inside the graph"),  # defaults, given
    (["--iou", "0.5"], "--iou is for the NMS inside the graph"),
    (["--nms", "--no-decode-in-graph"], "cannot be combined with --no-decode-in-graph"),
])
def test_nms_and_profile_options_refused_before_any_work(tiny_pth, out, capsys, no_loading, flags, message):
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", *flags], capsys)
    assert rc == 2 and message in _one_error(err)
    _assert_empty(out)


@pytest.mark.parametrize("flags,message", [
    (["--calib-images", "."], "--calib-images is for INT8 calibration; add --int8"),
    (["--calib-count", "100"], "--calib-count is for INT8 calibration; add --int8"),  # the default, given
])
def test_calibration_options_need_int8(tiny_pth, out, capsys, no_loading, throwaway_format, flags, message):
    rc, _, err = _run(["--weights", tiny_pth, "--format", "testfmt", "--output", out / "m.testfmt", *flags], capsys)
    assert rc == 2 and message in _one_error(err)
    _assert_empty(out)


def test_max_batch_needs_a_dynamic_batch(tiny_pth, out, no_loading):
    with pytest.raises(InputError, match="--max-batch is the top of a dynamic batch profile; it needs --dynamic"):
        export(tiny_pth, "tensorrt", out / "m.engine", max_batch=16)


def test_tensorrt_nms_engine_needs_an_image_to_verify_before_the_build(tiny_pth, out, capsys, monkeypatch):
    """Its head is not readable and the synthetic scene shows nothing: refused before the (slow) build."""
    import yolox_deploy.export.tensorrt as trt_export

    def build(*args, **kwargs):
        raise AssertionError("the export started")

    monkeypatch.setattr(trt_export.TensorRTExporter, "export", build)
    rc, _, err = _run(["--weights", tiny_pth, "--format", "trt", "--nms", "--output", out / "m.engine"], capsys)
    assert rc == 2 and "--verify-image IMAGE" in _one_error(err)
    _assert_empty(out)


def test_a_device_the_verification_cannot_use_is_refused_before_the_export(tiny_pth, out, capsys, monkeypatch):
    """Verification opens the artefact on --device after the build: a device this machine lacks (or that
    the format's runtime does not know) is refused first, unless there is no verification."""
    import onnxruntime as ort

    import yolox_deploy.export.onnx as onnx_export
    import yolox_deploy.export.tensorrt as trt_export

    def build(*args, **kwargs):
        raise AssertionError("the export started")

    with monkeypatch.context() as m:
        m.setattr(onnx_export.OnnxExporter, "export", build)
        rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx", "--device", "tpu"],
                          capsys)
        assert rc == 2 and "unknown device 'tpu' for ONNX Runtime" in _one_error(err)
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "m.onnx",
                               "--device", "cuda"], capsys)
            assert rc == 2 and "needs ONNX Runtime with CUDA" in _one_error(err)
        m.setattr(trt_export.TensorRTExporter, "export", build)  # the build checks the GPU; the name is checked first
        rc, _, err = _run(["--weights", tiny_pth, "--format", "trt", "--output", out / "m.engine", "--device", "tpu"],
                          capsys)
        assert rc == 2 and "TensorRT runs on a CUDA GPU" in _one_error(err)
    _assert_empty(out)
    assert export(tiny_pth, "onnx", out / "m.onnx", device="tpu", verify=False).path.is_file()


def test_corrupt_verification_image_refused_before_any_work(tiny_pth, out, capsys, no_loading):
    (out / "bad.jpg").write_bytes(b"not an image")
    rc, _, err = _run(["--weights", tiny_pth, "--format", "onnx", "--output", out / "new" / "m.onnx",
                       "--verify-image", out / "bad.jpg"], capsys)
    assert rc == 2 and "not a readable image" in _one_error(err)
    assert sorted(p.name for p in out.iterdir()) == ["bad.jpg"]


# --- an ONNX file as the source ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tiny_pth, tmp_path_factory):
    """The tiny model as a raw, fixed-size ONNX (64x64, batch 1): like the authors' released files."""
    path = tmp_path_factory.mktemp("onnx-source") / "tiny_raw.onnx"
    export(tiny_pth, "onnx", path, img_size=64, decode_in_graph=False, verify=False)
    return path


@pytest.mark.parametrize("flags,message", [
    (["--dynamic"], "has a fixed batch of 1, which cannot change"),
    (["--batch", "4"], "has a fixed batch of 1, which cannot change"),
    (["--dynamic", "--dynamic-hw"], "has a fixed batch of 1"),
    (["--img-size", "128"], "is a 64x64 model; its input size cannot change"),
    (["--opset", "13"], "--opset is for the ONNX made from a checkpoint"),
    (["--simplify"], "--simplify is for the ONNX made from a checkpoint"),
    (["--model", "yolox-s"], "is yolox-nano, not yolox-s; --model cannot change an ONNX file's graph"),
    (["--model", "yolox-huge"], "unknown model"),
    (["--num-classes", "20"], "has 3 classes, so --num-classes 20 cannot apply"),
    (["--nms"], "cannot add NMS to an existing ONNX file"),
    (["--conf", "0.3"], "--conf is for the NMS inside a graph; cannot add NMS to an existing ONNX file (tiny_raw.onnx "
                        "has none)"),
])
def test_onnx_source_refuses_options_its_graph_fixes(tiny_onnx, out, capsys, flags, message):
    rc, _, err = _run(["--weights", tiny_onnx, "--format", "onnx", "--output", out / "m.onnx", *flags], capsys)
    assert rc == 2 and message in _one_error(err)
    _assert_empty(out)


def test_onnx_source_options_that_agree_with_it(tiny_onnx, out, capsys):
    rc, _, _ = _run(["--weights", tiny_onnx, "--format", "onnx", "--output", out / "m.onnx", "--batch", "1",
                     "--num-classes", "3", "--model", "nano", "--img-size", "64", "--no-simplify", "--no-decode-in-graph"],
                    capsys)
    assert rc == 0


def test_an_empty_onnx_source_is_named_empty(out, capsys):
    (out / "e.onnx").write_bytes(b"")
    rc, _, err = _run(["--weights", out / "e.onnx", "--format", "onnx", "--output", out / "m.onnx"], capsys)
    assert rc == 2 and "e.onnx is empty (0 bytes)" in _one_error(err)


def test_the_variant_of_an_onnx_that_does_not_say_is_recognised(nano_onnx):
    """The authors' files do not record their variant: their weight count tells it (YOLOX-Nano's 0.9 M, BatchNorms
    folded), and a --model naming another is refused instead of being written into the artefact's metadata."""
    from yolox_deploy.errors import InputError
    from yolox_deploy.export.source import load_source

    assert load_source(nano_onnx).meta.model == "yolox-nano"
    assert load_source(nano_onnx, model="nano").meta.model == "yolox-nano"
    with pytest.raises(InputError, match="yolox_nano.onnx is yolox-nano, not yolox-s"):
        load_source(nano_onnx, model="yolox-s")


def test_an_onnx_source_that_records_its_input_contract_refuses_legacy(tiny_onnx, out):
    """--legacy replaced the recorded BGR 0-255 contract: the artefact detected nothing, and passed."""
    from yolox_deploy.errors import InputError

    with pytest.raises(InputError, match="records its input contract .* --legacy describes checkpoints"):
        export(tiny_onnx, "onnx", out / "legacy.onnx", legacy=True)
    assert list(out.iterdir()) == []


def test_a_dynamic_size_onnx_source_takes_the_size_asked_for(tiny_pth, out):
    """An ONNX made from a dynamic-size ONNX recorded the source's default size, not the one asked for."""
    from yolox_deploy.export.source import read_onnx_meta

    dyn = export(tiny_pth, "onnx", out / "dyn.onnx", img_size=64, dynamic=True, dynamic_hw=True,
                 decode_in_graph=False).path
    made = export(dyn, "onnx", out / "made.onnx", img_size=(64, 96), decode_in_graph=False)
    assert made.meta.input_size == read_onnx_meta(made.path).input_size == (64, 96)
    assert made.meta.dynamic_hw and made.verification.passed


def test_raw_onnx_source_is_decoded_by_default(tiny_onnx, out):
    from yolox_deploy.export.source import read_onnx_meta

    decoded = export(tiny_onnx, "onnx", out / "decoded.onnx")
    assert decoded.meta.decode_in_graph and read_onnx_meta(decoded.path).decode_in_graph
    assert decoded.verification.passed and decoded.verification.max_abs_diff <= 1e-3
    raw = export(tiny_onnx, "onnx", out / "raw.onnx", decode_in_graph=False)
    assert not raw.meta.decode_in_graph and not read_onnx_meta(raw.path).decode_in_graph
    # a graph that decodes cannot be made raw again
    with pytest.raises(InputError, match="decodes the boxes in its graph, which cannot be undone"):
        export(decoded.path, "onnx", out / "again.onnx", decode_in_graph=False)
    assert sorted(p.name for p in out.iterdir()) == ["decoded.onnx", "raw.onnx"]


@pytest.fixture(scope="module")
def tiny_nms_onnx(tiny_pth, tmp_path_factory):
    """The tiny model with NMS in its graph, at settings other than the CLI's defaults."""
    path = tmp_path_factory.mktemp("nms-source") / "tiny_nms.onnx"
    export(tiny_pth, "onnx", path, img_size=64, nms=True, conf=0.5, iou=0.6, max_det=10, verify=False)
    return path


def test_nms_source_keeps_its_own_nms_settings(tiny_nms_onnx):
    from yolox_deploy.export import format_class
    from yolox_deploy.export.base import ExportOptions
    from yolox_deploy.export.source import load_source

    source = load_source(tiny_nms_onnx)
    for name in ("openvino", "tensorrt", "onnx"):
        meta = format_class(name)(ExportOptions(img_size=(64, 64), nms=True)).artefact_meta(source)
        assert (meta.max_det, meta.extra["nms_conf"], meta.extra["nms_iou"]) == (10, 0.5, 0.6), name


def test_nms_source_refuses_other_nms_settings(tiny_nms_onnx, out):
    with pytest.raises(InputError, match=r"conf 0.5, iou 0.6, max det 10\), which --conf, --max-det cannot change"):
        export(tiny_nms_onnx, "onnx", out / "m.onnx", nms=True, conf=0.25, iou=0.6, max_det=100)
    with pytest.raises(InputError, match=r"max det 10\), which --conf cannot change"):  # not "add --nms"
        export(tiny_nms_onnx, "onnx", out / "m.onnx", conf=0.25)
    with pytest.raises(InputError, match="cannot be undone"):
        export(tiny_nms_onnx, "onnx", out / "m.onnx", decode_in_graph=False)
    result = export(tiny_nms_onnx, "onnx", out / "m.onnx", nms=True, conf=0.5, max_det=10)
    assert result.meta.nms_in_graph and result.meta.max_det == 10 and result.meta.extra["nms_conf"] == 0.5


def test_an_nms_source_only_becomes_a_format_that_holds_its_nms(tiny_pth, tiny_nms_onnx, out, capsys, tmp_path):
    """NCNN from an NMS graph asked for a verification image first, and then refused the NMS it had not been
    asked for; a graph with TensorRT's plugin ran its whole export before failing on the artefact."""
    rc, _, err = _run(["--weights", tiny_nms_onnx, "--format", "ncnn", "--output", out / "m_ncnn"], capsys)
    assert rc == 2 and "tiny_nms.onnx has NMS in its graph, which the ncnn format cannot hold" in _one_error(err)
    from yolox_deploy.export.base import ExportOptions
    from yolox_deploy.export.onnx import write_onnx
    from yolox_deploy.export.source import load_source

    plugin = tmp_path / "plugin.onnx"
    write_onnx(load_source(tiny_pth), ExportOptions(img_size=(64, 64), nms=True, simplify=False), plugin,
               nms_plugin="tensorrt")
    for fmt, target in (("onnx", out / "m.onnx"), ("openvino", out / "m_openvino")):
        rc, _, err = _run(["--weights", plugin, "--format", fmt, "--output", target], capsys)
        assert rc == 2 and "holds TensorRT's NMS plugin (EfficientNMS_TRT)" in _one_error(err), fmt
    _assert_empty(out)


def test_more_requests_refused_before_any_work(tiny_pth, out, capsys):
    rc, _, err = _run(["--weights", tiny_pth, "--format", "trt", "--output", out / "m.engine", "--workspace", "-2"],
                      capsys)
    assert rc == 2 and "--workspace is the TensorRT builder's memory pool in GiB; it must be > 0" in _one_error(err)
    for options, message in (({"calib_images": 123, "int8": True}, "calib_images must be a path"),
                             ({"verify_image": 5}, "verify_image must be a path"),
                             ({"output": 123}, "output is the path of the artefact to write, not 123")):
        with pytest.raises(InputError, match=message):  # a bare TypeError before
            export(tiny_pth, "onnx", **{"output": out / "m.onnx", **options})
    _assert_empty(out)


def test_a_suffix_in_capitals_names_the_format_too(tiny_pth, out):
    """M.ONNX was refused as "not NAME.onnx", though the runtimes open it (the export keeps the name)."""
    result = export(tiny_pth, "onnx", out / "M.ONNX", img_size=64)  # verified: run through the runtime
    assert result.path == out / "M.ONNX" and result.verification is not None
    from yolox_deploy import Detector

    with Detector(result.path) as det:
        assert det.backend.info.name == "onnxruntime"


def test_an_onnx_source_without_onnx_runtime_is_refused_before_the_conversion(tiny_onnx, out, capsys, monkeypatch):
    """The reference outputs come from the ONNX source in ONNX Runtime: without it the conversion ran first."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "onnxruntime" else real(name, *a, **k))
    converted = []
    monkeypatch.setattr(format_class("openvino"), "export", lambda *a: converted.append(a) or pytest.fail("converted"))
    rc, _, err = _run(["--weights", tiny_onnx, "--format", "openvino", "--output", out / "m_openvino"], capsys)
    line = _one_error(err)
    assert rc == 2 and "'onnxruntime' package" in line and "verification runs the ONNX source tiny_raw.onnx" in line
    assert "--no-verify" in line and not converted
    _assert_empty(out)
