"""Model EMA: the decay ramp, the update rule, buffers, state round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from yolox_deploy.train.ema import ModelEMA, unwrap


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))


def test_decay_ramp():
    ema = ModelEMA(tiny())
    assert ema.decay_at(0) == 0
    assert ema.decay_at(2000) == pytest.approx(0.9998 * (1 - math.exp(-1)))
    assert ema.decay_at(10 ** 6) == pytest.approx(0.9998)


def test_update_rule_on_weights_and_buffers():
    model = tiny()
    ema = ModelEMA(model)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked += 5
    ema.update(model)
    d = 0.9998 * (1 - math.exp(-1 / 2000))
    live = model.state_dict()
    for k, v in ema.model.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, d * start[k] + (1 - d) * live[k])
        else:
            assert torch.equal(v, start[k])  # integer buffers are not averaged
    assert ema.updates == 1
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training


def test_state_round_trip_and_unwrap():
    model = tiny()
    ema = ModelEMA(model)
    for _ in range(3):
        ema.update(model)
    other = ModelEMA(tiny())
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), ema.model.state_dict().values()))
    assert unwrap(nn.DataParallel(model)) is model and unwrap(model) is model
