"""Parameters and GFLOPs of a model, counted over its module graph as the authors count them.

The YOLOX authors report ``GFLOPs = 2 x MACs / 1e9`` where the MACs are what ``thop.profile`` counts on the
unfused model in eval mode (their ``get_model_info``). This counter applies the same per-module rules without
depending on thop, through forward hooks on the leaf modules:

- ``Conv1d/2d/3d``: ``out.numel() * in_channels / groups * prod(kernel)`` (bias not counted)
- ``ConvTranspose1d/2d/3d``: ``in.numel() * out_channels / groups * prod(kernel)``
- ``Linear``: ``out.numel() * in_features``
- ``BatchNorm1d/2d/3d`` (eval): ``4 * in.numel()`` when affine (normalise 2 ops + scale/shift 2), else ``2 *``
- ``Upsample`` / ``UpsamplingNearest2d``: ``out.numel()`` (nearest); ``11 *`` (bilinear), ``5 *`` (linear),
  ``259 *`` (bicubic)
- activations, pooling, dropout, identity: 0; functional ops (``torch.cat``, slicing, ``+``): not counted.

``convention="paper"`` applies the thop of 2021 instead (BatchNorm 2 ops per element, convolution bias 1 op
per output element, LeakyReLU 1 op per element), which reproduces the figures printed in the paper's tables
(Nano 1.08, S 26.8, ... Darknet53 185.3).

Counting runs on the ``meta`` device by default: no memory is allocated and no arithmetic is done, so even
YOLOX-X at 640 takes a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

Rule = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], int]


def _conv(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    kernel = math.prod(m.kernel_size)
    return out.numel() * (m.in_channels // m.groups) * kernel


def _conv_transpose(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    kernel = math.prod(m.kernel_size)
    return inputs[0].numel() * (m.out_channels // m.groups) * kernel


def _linear(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return out.numel() * m.in_features


def _batchnorm(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    if m.training and m.track_running_stats:
        return 0  # thop leaves training-mode BatchNorm out; profiling always runs in eval mode
    ops = 2 * inputs[0].numel()
    return 2 * ops if m.affine else ops


_UPSAMPLE_OPS = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 259}


def _upsample(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return out.numel() * _UPSAMPLE_OPS.get(m.mode, 0)


def _zero(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return 0


def _per_element(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return inputs[0].numel()


# Module type -> MAC rule. Subclasses match their nearest registered base class.
RULES: dict[type[nn.Module], Rule] = {
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose, nn.ConvTranspose3d: _conv_transpose,
    nn.Linear: _linear,
    nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm, nn.BatchNorm3d: _batchnorm,
    nn.Upsample: _upsample,
}


def _conv_with_bias(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return _conv(m, inputs, out) + (out.numel() if m.bias is not None else 0)


def _batchnorm_2021(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return 0 if m.training and m.track_running_stats else 2 * inputs[0].numel()


# The thop of 2021 (used for the paper's tables) differs in these rules.
PAPER_RULES: dict[type[nn.Module], Rule] = {
    **RULES,
    nn.Conv1d: _conv_with_bias, nn.Conv2d: _conv_with_bias, nn.Conv3d: _conv_with_bias,
    nn.BatchNorm1d: _batchnorm_2021, nn.BatchNorm2d: _batchnorm_2021, nn.BatchNorm3d: _batchnorm_2021,
    nn.LeakyReLU: _per_element,  # its count_relu (YOLOX-Darknet53's activation)
}
CONVENTIONS = {"thop": RULES, "paper": PAPER_RULES}


def _rule_for(module: nn.Module, rules: dict[type[nn.Module], Rule]) -> Rule:
    for cls in type(module).__mro__:
        if cls in rules:
            return rules[cls]
    return _zero


@dataclass(frozen=True)
class Complexity:
    """Parameters and multiply-accumulates of one forward pass.

    ``macs`` is for the whole input batch; ``gflops`` is ``2 * macs / 1e9`` per image (the papers'
    convention). ``by_type`` splits the MACs by module type name.
    """

    params: int
    macs: int
    input_shape: tuple[int, ...]
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        batch = self.input_shape[0] if self.input_shape else 1
        return 2.0 * self.macs / batch / 1e9


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and are not counted)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def profile(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device = "meta",
            convention: str = "thop") -> Complexity:
    """Count the parameters and MACs of ``model`` on one input of ``input_shape`` (e.g. ``(1, 3, 640, 640)``).

    The model runs in eval mode (restored afterwards) on an all-zero input on ``device``; ``"meta"`` needs
    the model's parameters on the meta device (build it under ``with torch.device("meta")``) or any model
    whose forward is shape-only. Pass ``device="cpu"`` for a model with real CPU weights. ``convention``:
    ``"thop"`` (current thop, the default) or ``"paper"`` (thop of 2021, as printed in the paper).
    """
    try:
        rules = CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f"unknown FLOPs convention {convention!r}; use {', '.join(CONVENTIONS)}") from None
    total = 0
    by_type: dict[str, int] = {}
    handles = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        n = int(_rule_for(module, rules)(module, inputs, output))
        if n:
            total += n
            name = type(module).__name__
            by_type[name] = by_type.get(name, 0) + n

    for m in model.modules():
        if next(m.children(), None) is None:  # leaf modules only, as thop
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(tuple(input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Complexity(count_parameters(model), total, tuple(int(s) for s in input_shape), by_type)


def yolox_complexity(name: str, img_size: tuple[int, int] | None = None, num_classes: int = 80, *,
                     convention: str = "thop") -> Complexity:
    """Parameters and GFLOPs of a zoo variant at ``img_size`` (default: its test size), counted on ``meta``.

    The count is that of the unfused architecture with the head's raw output (decode is not part of the
    graph the authors profile), so it is independent of weights.
    """
    from ..nn.yolox import build_model
    from ..zoo import get_spec

    spec = get_spec(name)
    h, w = img_size or spec.test_size
    with torch.device("meta"):
        model = build_model(spec.name, num_classes)
    model.head.decode_in_inference = False
    return profile(model, (1, 3, h, w), device="meta", convention=convention)
