"""Fine-tuning from checkpoints whose BatchNorm was folded into the convolutions.

Checkpoints converted from deployed graphs (such as the shared ``yolox_nano.pth``, converted from the
authors' ONNX) hold every BatchNorm as an identity: weight 1, running mean 0, running variance
``1 - eps``, the folded bias as its bias, and the BatchNorm scale folded into the convolution weights.
Evaluated, that is exact. Trained, it is not, for two reasons:

1. In training mode BatchNorm normalises each channel by its batch statistics, so every layer's output
   would suddenly be standardised: the pretrained network is gone on the first forward pass.
2. Behind a BatchNorm, the scale of a convolution's weights does not change its output, but it sets its
   effective learning rate (a step moves ``W`` by an angle ``~ lr |g~| / |W|^2``, ``g~`` the gradient at unit
   norm). Folded weights carry the arbitrary scale ``gamma / sigma`` (tiny in the stem, which sees 0-255
   pixels), so SGD at the recipe's learning rate would scramble some layers in a few steps.

:func:`unfold_batchnorms` fixes both without changing what the network computes, in two exact steps:

- **Statistics.** For every convolution + folded BatchNorm pair it measures, per channel, the mean ``m`` and
  variance ``v`` of the convolution's output on some training images and sets ``running_mean = m``,
  ``running_var = v``, ``eps = 1e-3``, ``weight = sqrt(v + eps)``, ``bias += m``: evaluated,
  ``(x - m) / sqrt(v + eps) * sqrt(v + eps) + b + m = x + b`` as before; trained, batch statistics are close
  to ``m, v``.
- **Weight scale.** Each output channel is rescaled (:func:`rescale_channels`: ``W *= c``, the running
  statistics and the BatchNorm weight compensate, so the evaluated output is unchanged) to the norm SGD with
  weight decay settles at under the authors' recipe (the trainer passes the recipe's learning rate for the
  batch, not the run's own, so a lower ``--lr`` stays a gentler fine-tune), which is where the network the
  checkpoint came from sat. With momentum ``mu``, decay ``lambda``, learning rate ``eta`` and per-step gradients
  ``g~`` (measured on training batches at unit norm), growth by the orthogonal updates
  ``eta^2 E|g~|^2 / ((1 - mu^2) |W|^2)`` balances the decay ``2 eta lambda |W|^2 / (1 - mu)`` at
  ``|W|^4 = eta E|g~|^2 / (2 lambda (1 + mu))``. Under the linear scaling rule (lr proportional to the batch)
  this norm does not depend on the batch size. Without a gradient function the channels get the norm of
  PyTorch's default initialisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..nn.blocks import BN_EPS

log = logging.getLogger(__name__)

DEFAULT_INIT_NORM = 3 ** -0.5  # expected per-channel weight norm of PyTorch's default conv initialisation
MIN_NORM = 1e-2


def folded_batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """BatchNorm layers holding the folded (identity) signature: weight 1, mean 0, ``running_var + eps = 1``."""
    found = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_var is not None and m.weight is not None:
            if (torch.all(m.weight == 1) and torch.all(m.running_mean == 0)
                    and torch.allclose(m.running_var + m.eps, torch.ones_like(m.running_var), atol=1e-6)):
                found.append(m)
    return found


def conv_bn_pairs(model: nn.Module, only: list[nn.BatchNorm2d] | None = None,
                  ) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """``(conv, bn)`` of every module with a ``conv`` Conv2d followed by a ``bn`` BatchNorm2d (``BaseConv``)."""
    ids = None if only is None else {id(bn) for bn in only}
    pairs = []
    for m in model.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and (ids is None or id(bn) in ids):
            pairs.append((conv, bn))
    if ids is not None and len(pairs) != len(ids):
        raise ValueError(f"{len(ids)} folded BatchNorm layers but only {len(pairs)} follow a convolution as "
                         "'conv' + 'bn' of one module")
    return pairs


@torch.no_grad()
def rescale_channels(conv: nn.Conv2d, bn: nn.BatchNorm2d, scale: torch.Tensor) -> None:
    """Multiply the output channels of ``conv`` by ``scale [C]`` (> 0) and compensate in ``bn`` so that the pair
    computes the same function in evaluation mode (and, but for ``eps``, in training mode)."""
    c = scale.double()
    rv = bn.running_var.double()
    conv.weight.mul_(c.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    if conv.bias is not None:
        conv.bias.mul_(c.to(conv.bias.dtype))
    factor = torch.sqrt(c * c * rv + bn.eps) / (c * torch.sqrt(rv + bn.eps))
    bn.weight.mul_(factor.to(bn.weight.dtype))
    bn.running_mean.mul_(c.to(bn.running_mean.dtype))
    bn.running_var.copy_((c * c * rv).to(bn.running_var.dtype))


def channel_norms(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().double().flatten(1).norm(dim=1)


@torch.no_grad()
def _measure_statistics(model: nn.Module, pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]],
                        batches: Iterable[torch.Tensor]) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], int]:
    sums: dict[int, list] = {id(bn): [0, 0.0, 0.0] for _, bn in pairs}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double()
        s = sums[id(module)]
        s[0] += x.numel() // x.shape[1]
        s[1] = s[1] + x.sum(dim=(0, 2, 3))
        s[2] = s[2] + (x * x).sum(dim=(0, 2, 3))

    handles = [bn.register_forward_pre_hook(hook) for _, bn in pairs]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for key, (n, total, total_sq) in sums.items():
        if n:
            mean = total / n
            out[key] = (mean, (total_sq / n - mean * mean).clamp(min=0.0))
    return out, seen


def equilibrium_norms(model: nn.Module, pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]],
                      loss_fns: Iterable[Callable[[], torch.Tensor]], lr: float, weight_decay: float,
                      momentum: float) -> dict[int, torch.Tensor]:
    """Per-channel weight norms at which SGD + weight decay is in equilibrium (see the module notes), from
    the gradients of ``loss_fns`` (each returns a scalar loss of one training batch, model in training mode)
    measured with every channel at unit norm. Leaves the channels at unit norm and gradients cleared."""
    for conv, bn in pairs:
        norms = channel_norms(conv)
        rescale_channels(conv, bn, torch.where(norms > 0, 1.0 / norms.clamp(min=1e-30), torch.ones_like(norms)))
    sq: dict[int, torch.Tensor] = {id(conv): torch.zeros(conv.out_channels, dtype=torch.float64) for conv, _ in pairs}
    count = 0
    was_training = model.training
    saved = {id(bn): (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for bn in [m] if bn.running_mean is not None}
    model.train()
    try:
        for fn in loss_fns:
            model.zero_grad(set_to_none=True)
            fn().backward()
            for conv, _ in pairs:
                if conv.weight.grad is not None:
                    sq[id(conv)] += conv.weight.grad.detach().double().flatten(1).pow(2).sum(dim=1).cpu()
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        with torch.no_grad():  # training-mode forwards moved the running statistics: put them back
            for m in model.modules():
                if id(m) in saved:
                    mean, var, tracked = saved[id(m)]
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
                    m.num_batches_tracked.copy_(tracked)
    if count == 0:
        raise ValueError("equilibrium_norms needs at least one loss function")
    const = lr / (2.0 * weight_decay * (1.0 + momentum))
    return {key: (const * v / count).pow(0.25).clamp(min=MIN_NORM) for key, v in sq.items()}


def unfold_batchnorms(model: nn.Module, batches: Iterable[torch.Tensor], *, eps: float = BN_EPS,
                      loss_fns: Iterable[Callable[[], torch.Tensor]] | None = None, lr: float = 0.01,
                      weight_decay: float = 5e-4, momentum: float = 0.9) -> int:
    """Make folded BatchNorms trainable without changing the evaluated network (see the module notes).

    ``batches``: model inputs ``[B, 3, H, W]`` (float, what the network sees) for the statistics.
    ``loss_fns``: callables returning the training loss of one batch, for the equilibrium weight norms at
    learning rate ``lr`` (default: PyTorch's initial norm). Returns the number of layers changed (0: none
    was folded). Statistics are measured with the model's BatchNorms in evaluation mode; the model comes
    back in the mode it was in.
    """
    pairs = conv_bn_pairs(model, folded_batchnorms(model))
    if not pairs:
        return 0
    stats, seen = _measure_statistics(model, pairs, batches)
    if seen == 0:
        raise ValueError("unfold_batchnorms needs at least one batch of images")
    with torch.no_grad():
        for _, bn in pairs:
            mean, var = stats[id(bn)]
            dtype = bn.running_mean.dtype
            bn.running_mean.copy_(mean.to(dtype))
            bn.running_var.copy_(var.to(dtype))
            bn.eps = eps
            bn.weight.copy_(torch.sqrt(var + eps).to(dtype))
            bn.bias.add_(mean.to(dtype))
    if loss_fns is None:
        targets = {id(conv): torch.full((conv.out_channels,), DEFAULT_INIT_NORM, dtype=torch.float64)
                   for conv, _ in pairs}
        how = "the default initial norm"
    else:
        targets = equilibrium_norms(model, pairs, loss_fns, lr, weight_decay, momentum)
        how = f"their SGD equilibrium norm at lr {lr:.3g}"
    for conv, bn in pairs:
        norms = channel_norms(conv)
        scale = torch.where(norms > 0, targets[id(conv)] / norms.clamp(min=1e-30), torch.ones_like(norms))
        rescale_channels(conv, bn, scale)
    log.info("the weights had BatchNorm folded into the convolutions: gave %d BatchNorm layers statistics measured "
             "on %d training images and their convolutions %s, so they can be fine-tuned", len(pairs), seen, how)
    return len(pairs)
