"""Ctrl-C while a heavy package loads: acted on once the load ends, never inside it."""

import signal
import sys

import pytest


def _interrupted_load(real):
    """An import that Ctrl-C reaches halfway, as torch's or a runtime's native start-up: the load either goes
    on (the signal held) or, interrupted, turns the KeyboardInterrupt into its own ImportError."""
    def load(name):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e
        return real(name)
    return load


def test_ctrl_c_while_a_runtime_imports_stops_the_run_instead_of_blaming_the_install(monkeypatch):
    """onnxruntime / openvino turned it into ImportError('initialization failed'): 'installed but does not
    import; reinstall it', exit 2."""
    from yolox_deploy.utils import packages

    monkeypatch.setattr(packages.importlib, "import_module", _interrupted_load(packages.importlib.import_module))
    with pytest.raises(KeyboardInterrupt):
        packages.import_reason("json", "the json backend", None)


def test_ctrl_c_while_a_command_loads_lets_the_load_finish_then_exits_130(monkeypatch, capsys):
    from yolox_deploy.cli import launch

    monkeypatch.delitem(sys.modules, "yolox_deploy.cli.compare", raising=False)
    monkeypatch.setattr(launch.importlib, "import_module", _interrupted_load(launch.importlib.import_module))
    assert launch.compare() == launch.INTERRUPTED
    assert "yolox_deploy.cli.compare" in sys.modules  # loaded whole, not cut inside
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_while_a_benchmark_worker_loads_exits_130_quietly(monkeypatch, capsys):
    """The worker started as `python -m yolox_deploy.bench.worker`, which imported torch before its handler:
    Ctrl-C there printed a 25-50 line traceback under the parent's "stopping the benchmark's worker"."""
    from yolox_deploy.cli import launch

    monkeypatch.delitem(sys.modules, "yolox_deploy.bench.worker", raising=False)
    monkeypatch.setattr(launch.importlib, "import_module", _interrupted_load(launch.importlib.import_module))
    assert launch.bench_worker(["row", "spec.json", "out.json"]) == launch.INTERRUPTED
    assert "yolox_deploy.bench.worker" in sys.modules and capsys.readouterr().err == ""
