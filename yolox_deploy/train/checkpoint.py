"""Training checkpoints: the authors' layout, plus what an exact resume needs.

Written with :func:`yolox_deploy.nn.checkpoint.save_checkpoint` (atomically), so every tool that reads a
YOLOX checkpoint reads these::

    {"model": EMA weights (what Detector, yolox-export and the authors' tools load),
     "model_name": "yolox-nano", "class_names": [...],
     "start_epoch": next epoch to run, "optimizer": SGD state, "best_ap": ..., "curr_ap": ...,
     "train_state": {"model": the raw (non-EMA) weights, "ema": {"updates", "model"}, "iteration": completed
                     iterations, "scaler": AMP scaler state, "config": the training configuration}}

There is no random-generator state to save: every random draw of the data pipeline and the multi-scale
schedule is a function of ``(seed, epoch, index)`` or ``(seed, iteration)`` (see ``dataset.py``).
Everything is tensors and plain Python types, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..nn.checkpoint import read_checkpoint, save_checkpoint
from ..nn.yolox import YOLOX

LATEST = "latest_ckpt.pth"
BEST = "best_ckpt.pth"
LAST_MOSAIC = "last_mosaic_epoch_ckpt.pth"
CHECKPOINTS = "*_ckpt.pth"  # every checkpoint a run writes (the three above, epoch_<n>_ckpt.pth)
TRAIN_STATE_KEY = "train_state"
FORMAT_VERSION = 1


@dataclass
class TrainState:
    """What :func:`load_training_state` returns."""

    model: dict[str, torch.Tensor]
    ema: dict[str, Any] | None
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    iteration: int
    start_epoch: int
    best_ap: float
    curr_ap: float
    config: dict[str, Any]
    model_name: str | None
    class_names: tuple[str, ...] | None


def save_training_checkpoint(path: str | os.PathLike, *, weights: YOLOX, model: nn.Module,
                             optimizer: torch.optim.Optimizer, ema_state: dict[str, Any] | None,
                             scaler_state: dict[str, Any], iteration: int, start_epoch: int, best_ap: float,
                             curr_ap: float, config: dict[str, Any]) -> Path:
    """Write a resumable checkpoint whose ``"model"`` is ``weights`` (the EMA copy, or the model without EMA)."""
    train_state = {"version": FORMAT_VERSION, "model": model.state_dict(), "ema": ema_state,
                   "iteration": int(iteration), "scaler": scaler_state, "config": config}
    return save_checkpoint(weights, path, start_epoch=int(start_epoch), optimizer=optimizer.state_dict(),
                           best_ap=float(best_ap), curr_ap=float(curr_ap), **{TRAIN_STATE_KEY: train_state})


def load_training_state(path: str | os.PathLike) -> TrainState:
    """Read a checkpoint written by :func:`save_training_checkpoint` (raises :class:`CheckpointError` otherwise)."""
    ckpt = read_checkpoint(path)
    state = ckpt.extra.get(TRAIN_STATE_KEY)
    if not isinstance(state, dict) or "iteration" not in state or "optimizer" not in ckpt.extra:
        raise CheckpointError(f"{Path(path).name} cannot be resumed: it holds weights but no training state "
                              "(only checkpoints written by yolox-train can); to start from its weights use --weights")
    if int(state.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{Path(path).name} was written by a newer yolox-deploy (training state version "
                              f"{state['version']}); upgrade to resume it")
    return TrainState(model=state["model"], ema=state.get("ema"), optimizer=ckpt.extra["optimizer"],
                      scaler=state.get("scaler") or {}, iteration=int(state["iteration"]),
                      start_epoch=int(ckpt.extra.get("start_epoch", 0)), best_ap=float(ckpt.extra.get("best_ap", 0.0)),
                      curr_ap=float(ckpt.extra.get("curr_ap", 0.0)), config=dict(state.get("config") or {}),
                      model_name=ckpt.model_name, class_names=ckpt.class_names)
