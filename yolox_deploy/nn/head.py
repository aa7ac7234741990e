"""The decoupled YOLOX head: per level a 1x1 stem, then a classification branch and a regression branch.

The head only predicts. Losses and label assignment live in ``yolox_deploy.train``; decoding lives in
``yolox_deploy.ops.decode`` and is shared with every runtime.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.decode import decode_level
from ..utils.sizes import STRIDES
from .blocks import BaseConv, conv_block


class YOLOXHead(nn.Module):
    """Outputs, per anchor: ``tx, ty, tw, th, obj, cls[C]``, levels (stride 8, 16, 32) concatenated.

    Training mode: raw logits ``[B, A, 5 + C]``. Inference mode: ``obj`` and ``cls`` through a sigmoid and,
    when ``decode_in_inference`` is set, boxes decoded to ``cx, cy, w, h`` input pixels.
    """

    def __init__(self, num_classes: int, width: float = 1.0, strides: tuple[int, ...] = STRIDES,
                 in_channels: tuple[int, ...] = (256, 512, 1024), act: str = "silu",
                 depthwise: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.decode_in_inference = True
        Conv = conv_block(depthwise)
        hidden = int(256 * width)

        self.stems = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        for c in in_channels:
            self.stems.append(BaseConv(int(c * width), hidden, 1, 1, act=act))
            self.cls_convs.append(nn.Sequential(Conv(hidden, hidden, 3, 1, act=act), Conv(hidden, hidden, 3, 1, act=act)))
            self.reg_convs.append(nn.Sequential(Conv(hidden, hidden, 3, 1, act=act), Conv(hidden, hidden, 3, 1, act=act)))
            self.cls_preds.append(nn.Conv2d(hidden, num_classes, 1, 1, 0))
            self.reg_preds.append(nn.Conv2d(hidden, 4, 1, 1, 0))
            self.obj_preds.append(nn.Conv2d(hidden, 1, 1, 1, 0))

    def initialize_biases(self, prior_prob: float = 1e-2) -> None:
        """Start objectness and class scores at ``prior_prob`` (focal-loss style initialisation)."""
        bias = -math.log((1 - prior_prob) / prior_prob)
        with torch.no_grad():
            for conv in (*self.cls_preds, *self.obj_preds):
                conv.bias.fill_(bias)

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        outputs = []
        for k, x in enumerate(features):
            x = self.stems[k](x)
            cls_feat = self.cls_convs[k](x)
            reg_feat = self.reg_convs[k](x)
            cls_out = self.cls_preds[k](cls_feat)   # [B, C, h, w]
            reg_out = self.reg_preds[k](reg_feat)   # [B, 4, h, w]
            obj_out = self.obj_preds[k](reg_feat)   # [B, 1, h, w]
            if not self.training:
                obj_out, cls_out = obj_out.sigmoid(), cls_out.sigmoid()
                if self.decode_in_inference:
                    reg_out = decode_level(reg_out, self.strides[k])  # per level, before the big concat
            outputs.append(torch.cat([reg_out, obj_out, cls_out], 1).flatten(start_dim=2))
        return torch.cat(outputs, dim=2).permute(0, 2, 1)  # [B, A, 5 + C]
