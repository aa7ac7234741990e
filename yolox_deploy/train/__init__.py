"""Training YOLOX with the paper's recipe: SimOTA, the YOLOX loss, Mosaic/MixUp data, SGD + warm-up cosine,
EMA, AMP and torchrun DDP; checkpoints every part of the SDK (and the authors' code) loads.

    from yolox_deploy.train import TrainConfig, Trainer, simota_assign
"""

from __future__ import annotations

from .checkpoint import BEST, LAST_MOSAIC, LATEST, TrainState, load_training_state, save_training_checkpoint
from .config import TrainConfig
from .data import AnnotationReport, DetectionSet, ImageRecord, load_detection_set
from .dataset import AugmentConfig, TrainBatchSampler, TrainDataset, collate
from .ema import ModelEMA
from .losses import LossOutput, YOLOXLoss, iou_loss
from .schedule import LRSchedule, multiscale_size
from .simota import simota_assign
from .trainer import NonFiniteLossError, Trainer, TrainResult, transfer_class_head


def train(config: TrainConfig, max_iterations: int | None = None) -> TrainResult:
    """Build a :class:`Trainer` from ``config`` and run it (see :meth:`Trainer.train`)."""
    with Trainer(config) as trainer:
        return trainer.train(max_iterations)


__all__ = [
    "AnnotationReport", "AugmentConfig", "BEST", "DetectionSet", "ImageRecord", "LAST_MOSAIC", "LATEST", "LRSchedule",
    "LossOutput", "ModelEMA", "NonFiniteLossError", "TrainBatchSampler", "TrainConfig", "TrainDataset", "TrainResult",
    "TrainState", "Trainer", "YOLOXLoss", "collate", "iou_loss", "load_detection_set", "load_training_state",
    "multiscale_size", "save_training_checkpoint", "simota_assign", "train", "transfer_class_head",
]
