"""Decode the YOLOX head: per-cell offsets and log-sizes -> boxes in input pixels.

Raw head output (what the authors' released ONNX files emit) is ``[B, A, 5 + C]`` with, per anchor (one per
grid cell, levels of stride 8, 16, 32 concatenated in row-major order): ``tx, ty, tw, th, obj, cls...``;
``obj`` and ``cls`` are already sigmoid probabilities. Decoding gives ``cx = (tx + gx) * s``,
``cy = (ty + gy) * s``, ``w = exp(tw) * s``, ``h = exp(th) * s``.

The exponent is clamped: the authors' demos produce ``inf`` boxes on large ``tw`` (their issues #624,
#1658), in FP16 already at ``tw > 7.6`` on stride 32. The clamp keeps every box finite in FP16 and is far
beyond any real box (``exp(6.5) * 8 = 5300`` px on the finest level). Offsets are clamped likewise.
The decode is written with ``cat`` (no in-place slice writes), so an exported graph has no ScatterND.
"""

from __future__ import annotations

from typing import Any

import torch

from ..utils.sizes import STRIDES, level_shapes
from ._array import Array, like, serial, to_tensor

WH_LOGIT_MAX = 6.5
XY_LOGIT_LIMIT = 1.0e3


def _cell_xy(h: int, w: int, device: torch.device | str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row index of every cell of an ``h x w`` grid, each ``[h, w]``."""
    yv, xv = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    return xv, yv


def _decode_parts(txy: Any, twh: Any, grid: Any, stride: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cx, cy)`` and ``(w, h)`` in input pixels from offsets ``txy`` and log-sizes ``twh`` (clamped)."""
    return (txy.clamp(-XY_LOGIT_LIMIT, XY_LOGIT_LIMIT) + grid) * stride, torch.exp(twh.clamp(max=WH_LOGIT_MAX)) * stride


def make_grid(shapes: list[tuple[int, int]], strides: tuple[int, ...] = STRIDES, *,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell indices ``[A, 2]`` (x, y) and strides ``[A, 1]`` of every anchor, levels concatenated.

    ``shapes`` may hold traced sizes (ints from ``tensor.shape`` during export) so dynamic H/W survive.
    """
    grids, steps = [], []
    for (h, w), s in zip(shapes, strides):
        grid = torch.stack(_cell_xy(h, w, device, dtype), dim=2).reshape(-1, 2)
        grids.append(grid)
        steps.append(torch.full_like(grid[:, :1], float(s)))
    return torch.cat(grids, dim=0), torch.cat(steps, dim=0)


def decode_level(reg: torch.Tensor, stride: int) -> torch.Tensor:
    """One level's raw box map ``[B, 4, h, w]`` (``tx, ty, tw, th``) -> ``cx, cy, w, h`` in input pixels.

    The same arithmetic as :func:`decode_with_grid`, applied before the levels are concatenated: a
    deployed head decodes four channels per level instead of splitting and re-concatenating the whole
    ``[B, A, 5 + C]`` output (two passes over it saved in ONNX Runtime and OpenVINO).
    """
    h, w = reg.shape[-2:]
    grid = torch.stack(_cell_xy(h, w, reg.device, reg.dtype), dim=0)[None]  # [1, 2, h, w]
    return torch.cat(_decode_parts(reg[:, 0:2], reg[:, 2:4], grid, stride), dim=1)


_GRID_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def cached_grid(shapes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = (tuple(shapes), tuple(strides), str(device), dtype)
    hit = _GRID_CACHE.get(key)
    if hit is None:
        if len(_GRID_CACHE) > 32:
            _GRID_CACHE.clear()
        hit = _GRID_CACHE[key] = make_grid(shapes, strides, device=device, dtype=dtype)
    return hit


def decode_with_grid(raw: torch.Tensor, grid: torch.Tensor, stride: torch.Tensor) -> torch.Tensor:
    """Decode ``raw [..., A, 5 + C]`` given ``grid [A, 2]`` and ``stride [A, 1]``; returns cxcywh + scores."""
    return torch.cat((*_decode_parts(raw[..., 0:2], raw[..., 2:4], grid, stride), raw[..., 4:]), dim=-1)


def decode(raw: Array, input_hw: tuple[int, int], strides: tuple[int, ...] = STRIDES) -> Array:
    """Decode a raw head output ``[B, A, 5 + C]`` (or ``[A, 5 + C]``) for an input of ``input_hw`` pixels.

    Returns the same kind of array (numpy or torch, same device and dtype) with boxes as ``cx, cy, w, h``
    in input pixels, finite for any finite or infinite logits. Raises ``ValueError`` when ``A`` does not
    match the input size.
    """
    t = to_tensor(raw)
    shapes = level_shapes(input_hw, strides)
    expected = sum(h * w for h, w in shapes)
    if t.shape[-2] != expected:
        raise ValueError(f"raw output has {t.shape[-2]} anchors; an input of {input_hw[0]}x{input_hw[1]} "
                         f"with strides {tuple(strides)} gives {expected}")
    grid, stride = cached_grid(shapes, strides, t.device, t.dtype)
    with serial(t):
        return like(decode_with_grid(t, grid, stride), raw)


def encode(pred: Array, input_hw: tuple[int, int], strides: tuple[int, ...] = STRIDES) -> Array:
    """The inverse of :func:`decode`: decoded ``[..., A, 5 + C]`` (cx, cy, w, h px) -> raw offsets and log-sizes.

    Lets outputs of graphs that decode and graphs that do not be compared in the same (raw) units.
    Sizes are floored at 1e-6 px so a zero size maps to a finite log.
    """
    t = to_tensor(pred)
    shapes = level_shapes(input_hw, strides)
    grid, stride = cached_grid(shapes, strides, t.device, t.dtype)
    xy = t[..., 0:2] / stride - grid
    wh = torch.log(t[..., 2:4].clamp(min=1e-6) / stride)
    return like(torch.cat((xy, wh, t[..., 4:]), dim=-1), pred)
