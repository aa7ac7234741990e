"""Shared fixtures. Tests that need the real assets in ../shared/assets skip with a reason when it is absent."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
NANO_PTH = ASSETS / "weights" / "yolox_nano.pth"
NANO_ONNX = ASSETS / "weights" / "yolox_nano.onnx"
DOG = ASSETS / "images" / "dog.jpg"
COCO_TINY = ASSETS / "coco-tiny"
UNLABELLED = ASSETS / "images" / "coco-val-unlabeled"
REFERENCE_AP, REFERENCE_AP50 = 0.3052, 0.4777


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs the shared test assets ({path} not found; they live in ../shared/assets)")
    return path


@pytest.fixture(scope="session")
def nano_pth() -> Path:
    return _need(NANO_PTH)


@pytest.fixture(scope="session")
def nano_onnx() -> Path:
    return _need(NANO_ONNX)


@pytest.fixture(scope="session")
def dog_jpg() -> Path:
    return _need(DOG)


@pytest.fixture(scope="session")
def coco_tiny() -> Path:
    return _need(COCO_TINY)


@pytest.fixture(scope="session")
def unlabelled_images() -> Path:
    return _need(UNLABELLED)


@pytest.fixture(scope="session")
def nano_model(nano_pth):
    """The shared YOLOX-Nano weights loaded (eval mode, not fused). Treat as read-only."""
    from yolox_deploy import load_model

    return load_model(nano_pth, "yolox-nano")


@pytest.fixture(scope="session")
def tiny_random_model():
    """A YOLOX-Nano with random weights and 3 classes: for tests that need no real weights."""
    import torch

    from yolox_deploy import build_model

    torch.manual_seed(0)
    return build_model("yolox-nano", num_classes=3, class_names=("a", "b", "c")).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def nano_onnx_dynamic(nano_pth, tmp_path_factory) -> Path:
    """The shared nano weights as our ONNX: dynamic batch and size, decode in graph (for fast pipeline tests)."""
    pytest.importorskip("onnx")
    from yolox_deploy.export.base import ExportOptions
    from yolox_deploy.export.onnx import write_onnx
    from yolox_deploy.export.source import load_source

    path = tmp_path_factory.mktemp("nano-onnx") / "yolox_nano_dynamic.onnx"
    write_onnx(load_source(nano_pth), ExportOptions(img_size=(416, 416), dynamic=True, dynamic_hw=True,
                                                    simplify=False), path)
    return path


def run_in_fork(fn, seconds: int = 30) -> tuple[int, str]:
    """Run ``fn()`` in a forked child; returns its exit code (0: returned, 1: raised, -14: still running after
    ``seconds``, killed by SIGALRM) and what it returned or raised, as text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child leaves with its own status, never through pytest
        code = 1
        try:
            os.close(read)
            signal.alarm(seconds)
            try:
                text, code = repr(fn()), 0
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                text = f"{type(exc).__name__}: {exc}"
            os.write(write, text.encode()[:60000])
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def run_in_fork_while_held(lock, fn, seconds: int = 20) -> tuple[int, str]:
    """:func:`run_in_fork` while another thread of this process holds ``lock`` (as it does for a moment while
    a runtime opens something): the child, where that thread does not exist, must not wait for it."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        return run_in_fork(fn, seconds)
    finally:
        release.set()
        holder.join()
