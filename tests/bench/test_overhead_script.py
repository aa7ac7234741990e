"""``benchmarks/overhead.py``: a user error is one line and exit 2, said before minutes of timing."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("overhead_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_arguments_are_refused_before_any_work(overhead, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for argv, message in ((["--rounds", "0"], "--rounds must be >= 1"),
                          (["--images", str(tmp_path / "nope")], "cannot read folder"),
                          (["--images", str(tmp_path)], f"no images in {tmp_path}"),
                          (["--output", str(tmp_path / "afile")], "is a file, not a folder")):
        assert overhead.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_a_missing_checkpoint_is_refused_before_the_timing(overhead, tmp_path, capsys, monkeypatch):
    """With --artefact, the 640x640 post-processing heads still come from the Nano checkpoint: its absence was
    found only after every artefact had been timed, and the timings were lost."""
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "model.onnx").write_bytes(b"x")
    monkeypatch.setattr(overhead, "measure", lambda *a, **k: pytest.fail("timed before the checkpoint was checked"))
    argv = ["--artefact", str(tmp_path / "model.onnx"), "--images", str(images), "--output", str(tmp_path / "out"),
            "--weights", str(tmp_path / "nope.pth")]
    assert overhead.main(argv) == 2
    err = capsys.readouterr().err
    assert "weights not found" in err and "nope.pth" in err and "Traceback" not in err
