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
