"""Optimiser groups: decay on conv weights only; every parameter in exactly one group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yolox_deploy import build_model
from yolox_deploy.train.optim import BASE_LR_PER_IMAGE, build_optimizer, param_groups, set_lr


def test_groups_of_yolox():
    model = build_model("yolox-nano", 3)
    norm_w, weights, biases = param_groups(model)
    ids = [id(p) for p in (*norm_w, *weights, *biases)]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    bn = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    conv = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert {id(p) for p in norm_w} == bn and {id(p) for p in weights} == conv
    assert all(p.ndim == 1 for p in biases)


def test_sgd_settings():
    model = build_model("yolox-nano", 3)
    opt = build_optimizer(model, lr=0.02)
    assert [g["weight_decay"] for g in opt.param_groups] == [0, 5e-4, 0]
    assert all(g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)
    set_lr(opt, 0.005)
    assert all(g["lr"] == 0.005 for g in opt.param_groups)
    assert BASE_LR_PER_IMAGE * 64 == pytest.approx(0.01)


def test_unknown_weighted_module_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="LayerNorm"):
        param_groups(model)
    frozen = nn.Conv2d(1, 1, 1)
    frozen.weight.requires_grad_(False)
    assert len(param_groups(frozen)[1]) == 0 and torch.is_tensor(frozen.bias)
