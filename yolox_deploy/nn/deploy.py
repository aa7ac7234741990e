"""The model as it is deployed: the same function in operators every runtime handles well.

:func:`deploy_model` returns a copy with

- every BatchNorm folded into its convolution (:meth:`YOLOX.fuse`);
- the Focus stem (space-to-depth by four step-2 slices, then a k x k conv) as the equivalent single
  convolution: a 2k x 2k kernel with stride 2 on the image whose weights are the Focus conv's rearranged
  (exact; YOLOv5 made the same change). NCNN has no strided slice, and ONNX Runtime saves its SpaceToDepth
  pass (about 5 % of YOLOX-Nano's CPU latency);
- with ``half=True``, the first convolution computing ``conv(x * 2**-k, w * 2**k)``: it sees pixels 0-255,
  so its weights are tiny, and FP16 weight storage (NCNN fp16, OpenVINO compressed weights, TensorRT FP16)
  flushes a sixth of YOLOX-Nano's to zero (raw output off by ~4 instead of ~0.14). Power-of-two scaling
  is exact, so FP32 computes the same function.

Exporters trace this model; verification compares it with the untouched one. :func:`model_meta` is the
metadata a model is deployed with (exports record it, the torch runtime runs by it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..meta import ModelMeta, Preprocess
from .blocks import Focus
from .yolox import YOLOX

# Offsets (dy, dx) of the four step-2 slices in the order Focus concatenates them (top-left, bottom-left,
# top-right, bottom-right; see blocks.Focus).
FOCUS_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))


def space_to_depth_conv_weight(weight: np.ndarray, offsets: tuple[tuple[int, int], ...] = FOCUS_OFFSETS,
                               ) -> np.ndarray:
    """Weights of the conv on the image equal to a conv on the space-to-depth map.

    ``weight [O, 4C, kh, kw]`` acts on ``cat(x[..., dy::2, dx::2] for (dy, dx) in offsets)``; the result
    ``[O, C, 2kh, 2kw]`` acts on ``x`` with stride ``2 * stride`` and padding ``2 * padding``: input channel
    ``b*C + c`` tap ``(i, j)`` becomes channel ``c`` tap ``(2i + dy_b, 2j + dx_b)``.
    """
    o, c4, kh, kw = weight.shape
    if c4 % len(offsets):
        raise ValueError(f"a space-to-depth conv with {c4} input channels does not split into {len(offsets)} slices")
    c = c4 // len(offsets)
    out = np.zeros((o, c, 2 * kh, 2 * kw), dtype=weight.dtype)
    for b, (dy, dx) in enumerate(offsets):
        out[:, :, dy::2, dx::2] = weight[:, b * c:(b + 1) * c]
    return out


def input_scale_exponent(weight: np.ndarray) -> int:
    """``k`` such that ``weight * 2**k`` keeps every weight out of FP16's subnormal range (0 when already so).

    The largest weight is brought to [16, 32), far from FP16's maximum.
    """
    a = np.abs(weight[weight != 0])
    if a.size == 0 or a.min() >= 2.0 ** -14:
        return 0
    return int(np.clip(np.floor(np.log2(32.0 / a.max())), 0, 24))


class FocusAsConv(nn.Module):
    """``act(conv(x))`` with the (fused) Focus conv's weights rearranged for the full-resolution input."""

    def __init__(self, focus: Focus) -> None:
        super().__init__()
        conv = focus.conv.conv
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("the Focus conv is grouped or dilated; it has no single-conv equivalent here")
        weight = space_to_depth_conv_weight(conv.weight.detach().cpu().numpy())
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], tuple(2 * s for s in conv.stride),
                              tuple(2 * p for p in conv.padding), bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(weight))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach())
        self.act = focus.conv.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class InputScaledConv(nn.Module):
    """``conv(x * 2**-k)`` with the conv's weights times ``2**k``: the same function, FP16-friendly weights."""

    def __init__(self, conv: nn.Conv2d, k: int) -> None:
        super().__init__()
        self.conv = copy.deepcopy(conv)
        with torch.no_grad():
            self.conv.weight.mul_(2.0 ** k)
        self.scale = 2.0 ** -k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x * self.scale)


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def deploy_model(model: YOLOX, *, half: bool = False) -> YOLOX:
    """A fused, FP32, eval-mode copy of ``model`` computing the same function in deployment operators.

    See the module docstring. The input model is not modified. Applying it twice changes nothing more.
    """
    net = copy.deepcopy(model).cpu().float().eval()
    if not net.is_fused:
        net.fuse()
    for name, module in list(net.named_modules()):
        if isinstance(module, Focus):
            _replace(net, name, FocusAsConv(module))
    if half:
        name, first = next((n, m) for n, m in net.named_modules() if isinstance(m, (InputScaledConv, nn.Conv2d)))
        if isinstance(first, nn.Conv2d):
            k = input_scale_exponent(first.weight.detach().numpy())
            if k:
                _replace(net, name, InputScaledConv(first, k))
    return net


def model_meta(model: YOLOX, *, legacy: bool = False, class_names: Sequence[str] | None = None) -> ModelMeta:
    """Metadata of a torch model before export (labels and their dataset ids, test size, preprocessing contract)."""
    spec = model.spec
    names = tuple(class_names or model.class_names or ()) or None
    meta = ModelMeta.default(model.num_classes, model.default_input_size,
                             model=spec.name if spec else None, strides=tuple(model.head.strides),
                             preprocess=Preprocess.legacy() if legacy else Preprocess(),
                             category_ids=model.category_ids)
    return meta.with_(class_names=names) if names else meta
