"""The optimiser of the paper: SGD, momentum 0.9, Nesterov, weight decay 5e-4 on conv/linear weights only.

Three parameter groups in the authors' order: BatchNorm weights (no decay), conv/linear weights (decay),
biases (no decay). The learning rate is set on every group each iteration by the trainer's schedule.
"""

from __future__ import annotations

import torch
from torch import nn

BASE_LR_PER_IMAGE = 0.01 / 64  # lr 0.01 at batch 64, scaled linearly with the batch


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """``(norm_weights, weights, biases)``; raises ``ValueError`` if some trainable parameter fits no group."""
    norm_w: list[nn.Parameter] = []
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter) and bias.requires_grad and id(bias) not in seen:
            biases.append(bias)
            seen.add(id(bias))
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or not weight.requires_grad or id(weight) in seen:
            continue
        if isinstance(module, nn.modules.batchnorm._NormBase):
            norm_w.append(weight)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            weights.append(weight)
        else:
            raise ValueError(f"no optimiser group for the weight of {type(module).__name__}")
        seen.add(id(weight))
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if left:
        raise ValueError(f"parameters in no optimiser group: {left[:3]}")
    return norm_w, weights, biases


def build_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                    nesterov: bool = True) -> torch.optim.SGD:
    """SGD over :func:`param_groups` with decay on the conv/linear weights only."""
    norm_w, weights, biases = param_groups(model)
    opt = torch.optim.SGD(norm_w, lr=lr, momentum=momentum, nesterov=nesterov)
    opt.add_param_group({"params": weights, "weight_decay": weight_decay})
    opt.add_param_group({"params": biases})
    return opt


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
