"""Necks: PAFPN over CSPDarknet, and the YOLOv3 FPN over Darknet-53.

Both own their backbone as ``self.backbone`` (the authors' layout: ``backbone.backbone.stem...``) and return
the three pyramid levels ``(P3 /8, P4 /16, P5 /32)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import OUT_FEATURES, CSPDarknet, Darknet
from .blocks import BaseConv, CSPLayer, conv_block


class YOLOPAFPN(nn.Module):
    """Top-down then bottom-up path aggregation over the CSPDarknet features."""

    def __init__(self, depth: float = 1.0, width: float = 1.0, in_features: tuple[str, ...] = OUT_FEATURES,
                 in_channels: tuple[int, int, int] = (256, 512, 1024), depthwise: bool = False,
                 act: str = "silu") -> None:
        super().__init__()
        self.backbone = CSPDarknet(depth, width, depthwise=depthwise, act=act)
        self.in_features = in_features
        Conv = conv_block(depthwise)
        c0, c1, c2 = (int(c * width) for c in in_channels)
        n = round(3 * depth)

        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c2, c1, 1, 1, act=act)
        self.C3_p4 = CSPLayer(2 * c1, c1, n, False, depthwise=depthwise, act=act)
        self.reduce_conv1 = BaseConv(c1, c0, 1, 1, act=act)
        self.C3_p3 = CSPLayer(2 * c0, c0, n, False, depthwise=depthwise, act=act)
        self.bu_conv2 = Conv(c0, c0, 3, 2, act=act)
        self.C3_n3 = CSPLayer(2 * c0, c1, n, False, depthwise=depthwise, act=act)
        self.bu_conv1 = Conv(c1, c1, 3, 2, act=act)
        self.C3_n4 = CSPLayer(2 * c1, c2, n, False, depthwise=depthwise, act=act)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        x2, x1, x0 = (features[f] for f in self.in_features)

        fpn_out0 = self.lateral_conv0(x0)                       # /32
        f_out0 = torch.cat([self.upsample(fpn_out0), x1], 1)    # /16
        f_out0 = self.C3_p4(f_out0)

        fpn_out1 = self.reduce_conv1(f_out0)                    # /16
        f_out1 = torch.cat([self.upsample(fpn_out1), x2], 1)    # /8
        pan_out2 = self.C3_p3(f_out1)                           # /8

        p_out1 = torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1)  # /16
        pan_out1 = self.C3_n3(p_out1)

        p_out0 = torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1)  # /32
        pan_out0 = self.C3_n4(p_out0)
        return pan_out2, pan_out1, pan_out0


class YOLOFPN(nn.Module):
    """The YOLOv3 feature pyramid (top-down only) over Darknet-53; outputs 128/256/512 channels."""

    def __init__(self, depth: int = 53, in_features: tuple[str, ...] = OUT_FEATURES) -> None:
        super().__init__()
        self.backbone = Darknet(depth)
        self.in_features = in_features
        self.out1_cbl = self._make_cbl(512, 256, 1)
        self.out1 = self._make_embedding([256, 512], 512 + 256)
        self.out2_cbl = self._make_cbl(256, 128, 1)
        self.out2 = self._make_embedding([128, 256], 256 + 128)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    @staticmethod
    def _make_cbl(in_channels: int, out_channels: int, ksize: int) -> BaseConv:
        return BaseConv(in_channels, out_channels, ksize, stride=1, act="lrelu")

    def _make_embedding(self, filters_list: list[int], in_filters: int) -> nn.Sequential:
        a, b = filters_list
        return nn.Sequential(
            self._make_cbl(in_filters, a, 1), self._make_cbl(a, b, 3), self._make_cbl(b, a, 1),
            self._make_cbl(a, b, 3), self._make_cbl(b, a, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        x2, x1, x0 = (features[f] for f in self.in_features)
        x1_in = torch.cat([self.upsample(self.out1_cbl(x0)), x1], 1)
        out_dark4 = self.out1(x1_in)
        x2_in = torch.cat([self.upsample(self.out2_cbl(out_dark4)), x2], 1)
        out_dark3 = self.out2(x2_in)
        return out_dark3, out_dark4, x0
