"""The recorded benchmark scripts pass the caller's paths through as given (relative to where they run) and
default to the checkout's folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")


def _run(script: str, tmp_path: Path, *args: str) -> list[str]:
    """Run ``benchmarks/<script>`` from ``tmp_path`` with a stand-in yolox-bench that records its folder and
    arguments; returns [folder, arguments...]."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "yolox-bench"
    fake.write_text('#!/usr/bin/env bash\n{ pwd; printf "%s\\n" "$@"; } > "$RECORD"\n')
    fake.chmod(0o755)
    record = tmp_path / "record.txt"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record)}
    for name in ("WEIGHTS_DIR", "CACHE_DIR", "COCO_DIR"):
        env.pop(name, None)
    subprocess.run(["bash", str(ROOT / "benchmarks" / script), *args], cwd=tmp_path, env=env, check=True)
    return record.read_text().splitlines()


@pytest.mark.parametrize("script", ["run_cpu.sh", "run_gpu.sh"])
def test_a_relative_output_folder_is_the_callers(tmp_path, script):
    """The scripts changed into the checkout first, so `run_cpu.sh results` from elsewhere wrote into the checkout."""
    where, *args = _run(script, tmp_path, "results", "--images", "frames")
    assert Path(where) == tmp_path
    assert args[args.index("--output") + 1] == "results" and args[-2:] == ["--images", "frames"]
    where, *args = _run(script, tmp_path)
    assert args[args.index("--output") + 1] == str(ROOT / "benchmarks" / "results" / script[4:7])
