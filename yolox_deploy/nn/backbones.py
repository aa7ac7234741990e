"""Backbones: CSPDarknet (YOLOX-Nano ... X) and Darknet-53 with SPP (YOLOX-Darknet53)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import BaseConv, CSPLayer, Focus, ResLayer, SPPBottleneck, conv_block

OUT_FEATURES = ("dark3", "dark4", "dark5")


def _staged_forward(self: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both backbones: ``stem`` then ``dark2`` ... ``dark5``; the stages named in ``out_features`` come out."""
    outputs = {}
    x = self.stem(x)
    outputs["stem"] = x
    for name in ("dark2", "dark3", "dark4", "dark5"):
        x = getattr(self, name)(x)
        outputs[name] = x
    return {k: v for k, v in outputs.items() if k in self.out_features}


class CSPDarknet(nn.Module):
    """Focus stem + four CSP stages. Returns ``{"dark3": /8, "dark4": /16, "dark5": /32}``."""

    def __init__(self, dep_mul: float, wid_mul: float, out_features: tuple[str, ...] = OUT_FEATURES,
                 depthwise: bool = False, act: str = "silu") -> None:
        super().__init__()
        self.out_features = out_features
        Conv = conv_block(depthwise)
        base_channels = int(wid_mul * 64)
        base_depth = max(round(dep_mul * 3), 1)

        self.stem = Focus(3, base_channels, ksize=3, act=act)
        self.dark2 = nn.Sequential(
            Conv(base_channels, base_channels * 2, 3, 2, act=act),
            CSPLayer(base_channels * 2, base_channels * 2, n=base_depth, depthwise=depthwise, act=act),
        )
        self.dark3 = nn.Sequential(
            Conv(base_channels * 2, base_channels * 4, 3, 2, act=act),
            CSPLayer(base_channels * 4, base_channels * 4, n=base_depth * 3, depthwise=depthwise, act=act),
        )
        self.dark4 = nn.Sequential(
            Conv(base_channels * 4, base_channels * 8, 3, 2, act=act),
            CSPLayer(base_channels * 8, base_channels * 8, n=base_depth * 3, depthwise=depthwise, act=act),
        )
        self.dark5 = nn.Sequential(
            Conv(base_channels * 8, base_channels * 16, 3, 2, act=act),
            SPPBottleneck(base_channels * 16, base_channels * 16, activation=act),
            CSPLayer(base_channels * 16, base_channels * 16, n=base_depth, shortcut=False,
                     depthwise=depthwise, act=act),
        )

    forward = _staged_forward


class Darknet(nn.Module):
    """Darknet-21/53 (YOLOv3) with an SPP block at the end of ``dark5`` (YOLOv3-SPP)."""

    depth2blocks = {21: [1, 2, 2, 1], 53: [2, 8, 8, 4]}

    def __init__(self, depth: int = 53, in_channels: int = 3, stem_out_channels: int = 32,
                 out_features: tuple[str, ...] = OUT_FEATURES) -> None:
        super().__init__()
        self.out_features = out_features
        self.stem = nn.Sequential(
            BaseConv(in_channels, stem_out_channels, ksize=3, stride=1, act="lrelu"),
            *self.make_group_layer(stem_out_channels, num_blocks=1, stride=2),
        )
        channels = stem_out_channels * 2  # 64
        num_blocks = self.depth2blocks[depth]
        self.dark2 = nn.Sequential(*self.make_group_layer(channels, num_blocks[0], stride=2))
        channels *= 2  # 128
        self.dark3 = nn.Sequential(*self.make_group_layer(channels, num_blocks[1], stride=2))
        channels *= 2  # 256
        self.dark4 = nn.Sequential(*self.make_group_layer(channels, num_blocks[2], stride=2))
        channels *= 2  # 512
        self.dark5 = nn.Sequential(
            *self.make_group_layer(channels, num_blocks[3], stride=2),
            *self.make_spp_block([channels, channels * 2], channels * 2),
        )

    @staticmethod
    def make_group_layer(in_channels: int, num_blocks: int, stride: int = 1) -> list[nn.Module]:
        """A strided 3x3 conv doubling the channels, then ``num_blocks`` residual units."""
        return [BaseConv(in_channels, in_channels * 2, ksize=3, stride=stride, act="lrelu"),
                *(ResLayer(in_channels * 2) for _ in range(num_blocks))]

    @staticmethod
    def make_spp_block(filters_list: list[int], in_filters: int) -> list[nn.Module]:
        return [
            BaseConv(in_filters, filters_list[0], 1, stride=1, act="lrelu"),
            BaseConv(filters_list[0], filters_list[1], 3, stride=1, act="lrelu"),
            SPPBottleneck(filters_list[1], filters_list[0], activation="lrelu"),
            BaseConv(filters_list[0], filters_list[1], 3, stride=1, act="lrelu"),
            BaseConv(filters_list[1], filters_list[0], 1, stride=1, act="lrelu"),
        ]

    forward = _staged_forward
