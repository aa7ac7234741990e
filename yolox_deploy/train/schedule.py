"""Schedules that depend only on the iteration: learning rate ("yoloxwarmcos") and multi-scale input size.

Learning rate of the step taken after ``i`` completed iterations (the authors set it after each step with
``progress + 1``; the first step runs at the warm-up start, 0), with ``W`` warm-up and ``N``
no-augmentation iterations out of ``T``::

    i <= W:          lr * (i / W) ** 2                         quadratic warm-up from 0
    i >= T - N:      lr * min_lr_ratio                         constant for the no-augmentation epochs
    otherwise:       min_lr + (lr - min_lr) * (1 + cos(pi * (i - W) / (T - W - N))) / 2

Multi-scale: the input side is ``32 * k`` with ``k`` drawn uniformly (inclusive) from a range every
``interval`` iterations (the base size for the first block), from a generator seeded with
``(seed, block)``: every rank draws the same size with no communication, and a resumed run the same sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..zoo import get_spec


@dataclass(frozen=True)
class LRSchedule:
    """The authors' warm-up + cosine schedule (see the module notes). ``lr(i)``: the step after ``i >= 0`` steps."""

    base_lr: float
    iters_per_epoch: int
    epochs: int
    warmup_epochs: int = 5
    no_aug_epochs: int = 15
    min_lr_ratio: float = 0.05
    warmup_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0 or self.no_aug_epochs < 0:
            raise InputError("warm-up and no-augmentation epochs must be >= 0")
        if self.warmup_epochs + self.no_aug_epochs > self.epochs:
            raise InputError(f"{self.warmup_epochs} warm-up + {self.no_aug_epochs} no-augmentation epochs do not fit in "
                             f"{self.epochs} epochs; lower --warmup-epochs / --no-aug-epochs or raise --epochs")

    @property
    def total_iters(self) -> int:
        return self.iters_per_epoch * self.epochs

    @property
    def warmup_iters(self) -> int:
        return self.iters_per_epoch * self.warmup_epochs

    @property
    def no_aug_iters(self) -> int:
        return self.iters_per_epoch * self.no_aug_epochs

    @property
    def min_lr(self) -> float:
        return self.base_lr * self.min_lr_ratio

    def __call__(self, iteration: int) -> float:
        i = iteration
        if self.warmup_iters and i <= self.warmup_iters:
            return (self.base_lr - self.warmup_lr) * (i / self.warmup_iters) ** 2 + self.warmup_lr
        if i >= self.total_iters - self.no_aug_iters:
            return self.min_lr
        span = max(self.total_iters - self.warmup_iters - self.no_aug_iters, 1)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * (i - self.warmup_iters) / span))


# The smallest side a training input may have: at 32 the stride-32 map is one cell, on which BatchNorm in
# training mode cannot run for a batch of one image (and learns nothing of use for any batch).
MIN_SIDE = 64


def default_multiscale_range(model: str, input_hw: tuple[int, int]) -> tuple[int, int]:
    """The authors' range of ``k`` (side = 32 k): ``base / 32 +- 5`` (640 -> 480..800), never below
    ``MIN_SIDE``; nano and tiny at their recipe's training or test size use their experiment files' ``(10, 20)``
    (320..640; the authors keep it at any size, here another size gets its own +- 5)."""
    spec = get_spec(model)
    if spec.random_size is not None and tuple(input_hw) in (tuple(spec.train_size), tuple(spec.test_size)):
        return spec.random_size
    k = input_hw[0] // 32
    return max(k - 5, MIN_SIDE // 32), k + 5


def multiscale_size(iteration: int, base_hw: tuple[int, int], size_range: tuple[int, int] | None,
                    interval: int = 10, seed: int = 0) -> tuple[int, int]:
    """Input ``(H, W)`` for 0-based ``iteration``: the base size in the first block of ``interval`` iterations or
    when ``size_range`` is ``None``, else ``32 k`` (``k`` uniform in ``size_range``, inclusive) for the block,
    width following the base aspect ratio."""
    block = iteration // interval
    if size_range is None or block == 0:
        return tuple(base_hw)  # type: ignore[return-value]
    k = int(np.random.default_rng((seed, 0x5CA1E, block)).integers(size_range[0], size_range[1] + 1))
    h = 32 * k
    w = 32 * max(int(h * base_hw[1] / base_hw[0] / 32), MIN_SIDE // 32)
    return h, w
