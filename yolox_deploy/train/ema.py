"""Exponential moving average of the weights (the authors' ``ModelEMA``).

After each optimiser step: ``updates += 1``, ``d = decay * (1 - exp(-updates / ramp))`` and, for every
floating-point entry of the state dict (weights and BatchNorm statistics),
``ema = d * ema + (1 - d) * model``. The ramp lets the average follow the model closely early on.
The EMA copy is what gets evaluated and saved as ``"model"`` in checkpoints.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """An EMA copy of ``model`` (eval mode, no gradients). ``decay`` 0.9998 and ``ramp`` 2000 as the authors."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp: float = 2000.0, updates: int = 0) -> None:
        self.model = copy.deepcopy(unwrap(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.ramp = ramp
        self.updates = updates

    def decay_at(self, updates: int) -> float:
        return self.decay * (1.0 - math.exp(-updates / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        live = unwrap(model).state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(live[name].detach(), alpha=1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
