"""yolox-deploy: YOLOX from a PyTorch checkpoint to a deployed engine, and one Detector to run them all.

Public API::

    from yolox_deploy import build_model, load_checkpoint, Detector, Detections
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import ArtefactError, BackendUnavailable, CheckpointError, ExportError, InputError, YoloxError
from .zoo import VARIANTS

# Imported on first use (PEP 562): ``import yolox_deploy`` stays light (no torch, numpy or OpenCV), so a command
# line tool has its Ctrl-C handling in place before those load.
_LAZY = {"ModelMeta": ".meta", "Preprocess": ".meta", "load_checkpoint": ".nn.checkpoint",
         "load_model": ".nn.checkpoint", "save_checkpoint": ".nn.checkpoint", "YOLOX": ".nn.yolox",
         "build_model": ".nn.yolox", "Detector": ".runtimes", "Detections": ".structures"}

if TYPE_CHECKING:
    from .meta import ModelMeta, Preprocess
    from .nn.checkpoint import load_checkpoint, load_model, save_checkpoint
    from .nn.yolox import YOLOX, build_model
    from .runtimes import Detector
    from .structures import Detections


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "ArtefactError", "BackendUnavailable", "CheckpointError", "Detections", "Detector", "ExportError",
    "InputError", "ModelMeta", "Preprocess", "VARIANTS", "YOLOX", "YoloxError", "build_model",
    "load_checkpoint", "load_model", "save_checkpoint",
]
