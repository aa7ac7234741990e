"""yolox-deploy: YOLOX from a PyTorch checkpoint to a deployed engine, and one Detector to run them all.

Public API::

    from yolox_deploy import build_model, load_checkpoint, Detector, Detections
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ArtefactError, BackendUnavailable, CheckpointError, ExportError, InputError, YoloxError
from .meta import ModelMeta, Preprocess
from .nn.checkpoint import load_checkpoint, load_model, save_checkpoint
from .nn.yolox import YOLOX, build_model
from .runtimes import Detector
from .structures import Detections
from .zoo import VARIANTS

__all__ = [
    "ArtefactError", "BackendUnavailable", "CheckpointError", "Detections", "Detector", "ExportError",
    "InputError", "ModelMeta", "Preprocess", "VARIANTS", "YOLOX", "YoloxError", "build_model",
    "load_checkpoint", "load_model", "save_checkpoint",
]
