"""Input-size arguments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from .values import is_integer

MAX_STRIDE = 32
MAX_SIDE = 4096  # far above any YOLOX test size (1280 at most); beyond it a forward pass needs tens of GB
STRIDES: tuple[int, ...] = (8, 16, 32)  # the head's levels


def level_shapes(input_hw: tuple[int, int], strides: tuple[int, ...] = STRIDES) -> list[tuple[int, int]]:
    """Grid shape ``(h, w)`` of each level for an input of ``input_hw`` pixels."""
    h, w = input_hw
    return [(-(-h // s), -(-w // s)) for s in strides]


def num_anchors(input_hw: tuple[int, int], strides: tuple[int, ...] = STRIDES) -> int:
    """Number of anchors (grid cells over all levels): 3549 at 416x416, 8400 at 640x640."""
    return sum(h * w for h, w in level_shapes(input_hw, strides))


def parse_img_size(size: int | str | Sequence[int | str]) -> tuple[int, int]:
    """``640``, ``"640"``, ``[640]``, ``(640, 480)`` or ``"640x480"`` -> ``(height, width)``.

    Both sides must be positive multiples of 32 (the largest stride of the network), at most 4096.
    """
    if isinstance(size, str):
        parts: list[Any] = [p for p in size.lower().replace("x", " ").replace(",", " ").split() if p]
    elif isinstance(size, Sequence) or getattr(size, "ndim", None) == 1:
        parts = list(size)  # a list, a tuple, torch.Size, or a one-dimensional numpy array / tensor
    else:
        parts = [size]
    try:
        values = [_integer(v) for v in parts]
    except ValueError:
        raise InputError(f"image size must be one or two integers, got {size!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise InputError(f"image size must be one or two integers (height width), got {size!r}")
    for v in values:
        if v <= 0 or v % MAX_STRIDE:
            raise InputError(f"image size {v} is not a positive multiple of {MAX_STRIDE}")
        if v > MAX_SIDE:
            raise InputError(f"image size {v} is beyond {MAX_SIDE}; tile large images instead")
    return values[0], values[1]


def check_stride_multiple(hw: Sequence[int], strides: Sequence[int]) -> None:
    """Refuse an input ``(height, width)`` whose sides are not multiples of the network's largest stride: its
    neck's feature maps would not meet (a mismatched concat inside a runtime)."""
    step = max(strides)
    if hw[0] % step or hw[1] % step:
        raise InputError(f"input {hw[0]}x{hw[1]} is not a multiple of {step}")


def _integer(v: Any) -> int:
    """An integer or its decimal spelling; 320.0, True or None are not sizes (``ValueError``)."""
    if not (isinstance(v, str) or is_integer(v)):
        raise ValueError(v)
    return int(v)
