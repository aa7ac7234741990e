"""One implementation for numpy and torch: numpy inputs run through torch on the CPU (zero-copy)."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


def to_tensor(x: Array) -> torch.Tensor:
    """A torch view of ``x`` (no copy for contiguous numpy arrays)."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def like(t: torch.Tensor, ref: Array) -> Array:
    """``t`` as the same kind of array as ``ref`` (numpy in, numpy out)."""
    if isinstance(ref, np.ndarray):
        return t.detach().cpu().numpy()
    return t
