"""The YOLOX detector: neck (with its backbone) + decoupled head, and the zoo constructor."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..structures import as_class_names
from ..utils.sizes import check_stride_multiple
from ..utils.values import is_integer
from ..zoo import ModelSpec, get_spec
from .blocks import BaseConv, fuse_conv_bn
from .head import YOLOXHead
from .necks import YOLOFPN, YOLOPAFPN


class YOLOX(nn.Module):
    """``images [B, 3, H, W]`` (H, W multiples of 32) -> head output ``[B, A, 5 + C]`` (see :class:`YOLOXHead`).

    ``spec``, ``class_names``, ``category_ids`` (the training dataset's category id of each class, when a
    checkpoint records them) and ``input_size`` (the size it was trained at, when a checkpoint records it)
    describe the model; they are not part of the state dict.
    """

    def __init__(self, backbone: nn.Module, head: YOLOXHead, spec: ModelSpec | None = None,
                 class_names: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec
        self.class_names = class_names
        self.category_ids: tuple[int, ...] | None = None
        self.input_size: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def default_input_size(self) -> tuple[int, int]:
        """The input size to run it at unless told otherwise: its training size when recorded, else the
        variant's test size (640 x 640 without a variant)."""
        if self.input_size is not None:
            return tuple(self.input_size)
        return tuple(self.spec.test_size) if self.spec is not None else (640, 640)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def fuse(self) -> YOLOX:
        """Fold every BatchNorm into its convolution (inference only; in place, returns self)."""
        for m in self.modules():
            if isinstance(m, BaseConv) and isinstance(m.bn, nn.BatchNorm2d):
                m.conv = fuse_conv_bn(m.conv, m.bn)
                m.bn = nn.Identity()
        return self

    @contextlib.contextmanager
    def decoding(self, decode: bool) -> Iterator[YOLOX]:
        """Within the block the head outputs decoded boxes (``True``) or its raw offsets and log-sizes."""
        previous = self.head.decode_in_inference
        self.head.decode_in_inference = decode
        try:
            yield self
        finally:
            self.head.decode_in_inference = previous

    def head_output(self, batch: np.ndarray, decode: bool) -> np.ndarray:
        """The head output ``[B, A, 5 + C]`` for a preprocessed float32 batch, on the model's device; in eval
        mode whatever mode the model is in (a training-mode forward gives the training outputs and moves the
        BatchNorm statistics), which is given back afterwards."""
        check_stride_multiple(batch.shape[-2:], self.head.strides)
        p = next(self.parameters())
        training = self.training
        self.eval()
        try:
            with self.decoding(decode), torch.inference_mode():
                return self(torch.from_numpy(np.ascontiguousarray(batch)).to(p.device, p.dtype)).float().cpu().numpy()
        finally:
            self.train(training)

    @property
    def is_fused(self) -> bool:
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())


def build_model(name: str, num_classes: int = 80, class_names: tuple[str, ...] | None = None) -> YOLOX:
    """A freshly initialised YOLOX variant (``yolox-nano`` ... ``yolox-x``, ``yolox-darknet53``).

    The module tree matches the authors' so their checkpoints load with ``strict=True``.
    """
    spec = get_spec(name)
    if not is_integer(num_classes) or num_classes < 1:
        raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if spec.backbone == "darknet53":
        neck: nn.Module = YOLOFPN(depth=53)
        head = YOLOXHead(num_classes, width=1.0, in_channels=(128, 256, 512), act=spec.act)
    else:
        neck = YOLOPAFPN(spec.depth, spec.width, depthwise=spec.depthwise, act=spec.act)
        head = YOLOXHead(num_classes, spec.width, act=spec.act, depthwise=spec.depthwise)
    head.initialize_biases(1e-2)
    class_names = as_class_names(class_names)
    if class_names is not None and len(class_names) != num_classes:
        raise InputError(f"{len(class_names)} class names for {num_classes} classes")
    return YOLOX(neck, head, spec=spec, class_names=class_names)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())
