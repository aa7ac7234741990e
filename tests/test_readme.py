"""The README's two commands: CI runs exactly the documented test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command_after(readme: str, heading: str) -> str:
    block = readme.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    [line] = [line for line in block.splitlines() if line.strip()]
    return line.strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _command_after(readme, "**Run the tests**") in ci_lines


def test_main_job_sets_up_exports_and_detects():
    cmd = _command_after((ROOT / "README.md").read_text(), "**Run the main job**")
    assert cmd.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0")
    assert "yolox-export " in cmd and "yolox-detect " in cmd
