"""Building blocks of YOLOX, named and shaped as in the paper and the authors' module tree.

Attribute names (``conv``, ``bn``, ``dconv``, ``pconv``, ``conv1``...) are those of the authors' modules so
their state dicts load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

# The authors train with BatchNorm eps 1e-3 / momentum 0.03 (their ``init_yolo``).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class SiLU(nn.Module):
    """x * sigmoid(x), written out so every exporter (old ONNX opsets, pnnx, OpenVINO) sees plain ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def get_activation(name: str = "silu") -> nn.Module:
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"unsupported activation {name!r}")


class BaseConv(nn.Module):
    """Conv2d -> BatchNorm -> activation, 'same' padding. After :func:`fuse_conv_bn` ``bn`` is gone."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int, stride: int, groups: int = 1,
                 bias: bool = False, act: str = "silu") -> None:
        super().__init__()
        pad = (ksize - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, ksize, stride, pad, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise 'ksize' conv then pointwise 1x1 conv, each a :class:`BaseConv`."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int, stride: int = 1,
                 act: str = "silu") -> None:
        super().__init__()
        self.dconv = BaseConv(in_channels, in_channels, ksize, stride, groups=in_channels, act=act)
        self.pconv = BaseConv(in_channels, out_channels, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


def conv_block(depthwise: bool) -> type[nn.Module]:
    """The 3x3 convolution the variant uses: :class:`DWConv` (nano) or :class:`BaseConv`."""
    return DWConv if depthwise else BaseConv


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 conv, optional residual (only when the channel counts agree)."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True, expansion: float = 0.5,
                 depthwise: bool = False, act: str = "silu") -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1, act=act)
        self.conv2 = conv_block(depthwise)(hidden, out_channels, 3, 1, act=act)
        self.use_add = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class ResLayer(nn.Module):
    """Darknet-53 residual unit: 1x1 halve, 3x3 restore, add (LeakyReLU 0.1)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        mid = in_channels // 2
        self.layer1 = BaseConv(in_channels, mid, 1, 1, act="lrelu")
        self.layer2 = BaseConv(mid, in_channels, 3, 1, act="lrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer2(self.layer1(x))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (YOLOv3-SPP): 1x1 halve, max-pool 5/9/13 concatenated, 1x1 out."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...] = (5, 9, 13),
                 activation: str = "silu") -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = BaseConv(in_channels, hidden, 1, 1, act=activation)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), out_channels, 1, 1, act=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = torch.cat([x] + [pool(x) for pool in self.m], dim=1)
        return self.conv2(x)


class CSPLayer(nn.Module):
    """Cross-stage-partial block (C3): two 1x1 branches, n bottlenecks on one, concat, 1x1 out."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, shortcut: bool = True,
                 expansion: float = 0.5, depthwise: bool = False, act: str = "silu") -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1, act=act)
        self.conv2 = BaseConv(in_channels, hidden, 1, 1, act=act)
        self.conv3 = BaseConv(2 * hidden, out_channels, 1, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, 1.0, depthwise, act=act) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.m(self.conv1(x))
        x2 = self.conv2(x)
        return self.conv3(torch.cat((x1, x2), dim=1))


class Focus(nn.Module):
    """Space-to-depth: [B, C, H, W] -> [B, 4C, H/2, W/2] (pixel order tl, bl, tr, br), then a conv."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int = 1, stride: int = 1,
                 act: str = "silu") -> None:
        super().__init__()
        self.conv = BaseConv(in_channels * 4, out_channels, ksize, stride, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top_left = x[..., ::2, ::2]
        top_right = x[..., ::2, 1::2]
        bot_left = x[..., 1::2, ::2]
        bot_right = x[..., 1::2, 1::2]
        return self.conv(torch.cat((top_left, bot_left, top_right, bot_right), dim=1))


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A single Conv2d (with bias) computing ``bn(conv(x))`` in inference mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)
    return fused
