"""Folded-BatchNorm checkpoints become trainable without changing what the network computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from yolox_deploy import build_model
from yolox_deploy.nn.blocks import BaseConv
from yolox_deploy.train.batchnorm import (
    DEFAULT_INIT_NORM,
    channel_norms,
    conv_bn_pairs,
    equilibrium_norms,
    folded_batchnorms,
    rescale_channels,
    unfold_batchnorms,
)


class SmallNet(nn.Module):
    """Three conv + BatchNorm blocks: the unit these functions work on, at a fraction of nano's cost."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(BaseConv(3, 8, 3, 2), BaseConv(8, 16, 3, 2), BaseConv(16, 8, 3, 1))
        self.out = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.out(self.body(x))


def trained_like_model(nano: bool = False):
    """A network with non-trivial BatchNorm statistics that fit the test images (as after training), in
    evaluation mode: nano, or :class:`SmallNet`."""
    torch.manual_seed(0)
    model = build_model("yolox-nano", 3) if nano else SmallNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    model.eval()
    x = images()
    with torch.no_grad():  # statistics that fit the data, as a trained network has
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
                m.reset_running_stats()
        model(x)
        model.eval()
    return model


def fold(model):
    """What a checkpoint converted from a deployed graph holds: BN scale in the conv, BN an identity."""
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for m in folded.modules():
            if isinstance(m, BaseConv):
                bn = m.bn
                s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                m.conv.weight.mul_(s.reshape(-1, 1, 1, 1))
                bn.bias.copy_(bn.bias - bn.running_mean * s)
                bn.weight.fill_(1)
                bn.running_mean.zero_()
                bn.running_var.fill_(1 - bn.eps)
    return folded


def images(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 64, 64, generator=g) * 255


def close(a, b, rel=2e-4):
    """Equal up to float32 rounding through a deep network: ``max |a - b| <= rel * max |b|``."""
    return float((a - b).abs().max()) <= rel * float(b.abs().max())


def raw_eval(model, x):
    """Evaluation-mode network (running statistics); for YOLOX the raw head logits as in training."""
    model.eval()
    head = getattr(model, "head", None)
    if head is not None:
        head.training = True  # the head's own flag only: logits, no sigmoid or decode; its BNs stay in eval
    try:
        with torch.no_grad():
            return model(x)
    finally:
        if head is not None:
            head.training = False


def raw_train(model, x):
    """Training-mode BatchNorm (batch statistics), without touching the running statistics."""
    m = copy.deepcopy(model).train()
    with torch.no_grad():
        return m(x)


def test_folded_layers_are_recognised_in_yolox():
    model = trained_like_model(nano=True)
    assert folded_batchnorms(model) == []
    folded = fold(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert len(folded_batchnorms(folded)) == n_bn == len(conv_bn_pairs(folded))
    assert close(raw_eval(folded, images()), raw_eval(model, images()))


def test_unfold_keeps_the_evaluated_network_and_makes_training_mode_agree():
    x = images()
    folded = fold(trained_like_model())
    ref = raw_eval(folded, x)
    trained_naively = raw_train(folded, x)
    assert (trained_naively - ref).abs().max() > 1.0  # batch statistics wreck the folded network

    unfolded = copy.deepcopy(folded)
    assert unfold_batchnorms(unfolded, [x]) == len(folded_batchnorms(folded))
    assert folded_batchnorms(unfolded) == []
    assert close(raw_eval(unfolded, x), ref)
    # measured on this very batch, training-mode statistics are the running ones: same function
    assert close(raw_train(unfolded, x), ref, rel=2e-3)
    for conv, _ in conv_bn_pairs(unfolded):
        assert torch.allclose(channel_norms(conv), torch.full((conv.out_channels,), DEFAULT_INIT_NORM,
                                                              dtype=torch.float64), rtol=1e-4)


def test_rescale_channels_is_exact():
    model = trained_like_model()
    x = images()
    ref = raw_eval(model, x)
    g = torch.Generator().manual_seed(0)
    for conv, bn in conv_bn_pairs(model):
        rescale_channels(conv, bn, torch.rand(conv.out_channels, generator=g) * 10 + 0.1)
    assert close(raw_eval(model, x), ref)


def test_equilibrium_norms_follow_the_quarter_power_of_the_learning_rate():
    folded = fold(trained_like_model())
    model = copy.deepcopy(folded)
    unfold_batchnorms(model, [images()])
    pairs = conv_bn_pairs(model)
    ref = raw_eval(model, images())
    x = images(2, seed=5)

    def loss():
        return model(x).float().pow(2).mean()

    low = equilibrium_norms(model, pairs, [loss, loss], lr=1e-3, weight_decay=5e-4, momentum=0.9)
    high = equilibrium_norms(model, pairs, [loss, loss], lr=16e-3, weight_decay=5e-4, momentum=0.9)
    for key in low:
        assert torch.all(torch.isfinite(low[key])) and torch.all(low[key] >= 1e-2)
        free = low[key] > 1e-2  # not at the floor
        assert free.any()
        assert torch.allclose(high[key][free], 2 * low[key][free], rtol=1e-3)
    # the training-mode passes of the measurement did not move the running statistics: same function
    assert close(raw_eval(model, images()), ref)
    assert all(p.grad is None for p in model.parameters())


def test_unfold_with_losses_sets_those_norms_and_keeps_the_function():
    folded = fold(trained_like_model())
    x = images()
    ref = raw_eval(folded, x)
    model = copy.deepcopy(folded)

    def loss():
        return model(images(2, seed=5)).float().pow(2).mean()

    unfold_batchnorms(model, [x], loss_fns=[loss], lr=0.01)
    assert close(raw_eval(model, x), ref)
    norms = torch.cat([channel_norms(c) for c, _ in conv_bn_pairs(model)])
    assert norms.min() >= 1e-2 - 1e-9 and not torch.allclose(norms, torch.full_like(norms, DEFAULT_INIT_NORM))


def test_nothing_to_do_for_a_model_with_real_statistics():
    model = trained_like_model()
    before = copy.deepcopy(model.state_dict())
    assert unfold_batchnorms(model, [images()]) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_needs_images():
    with pytest.raises(ValueError, match="at least one batch"):
        unfold_batchnorms(fold(trained_like_model()), [])
