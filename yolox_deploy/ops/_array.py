"""One implementation for numpy and torch: numpy inputs run through torch on the CPU (zero-copy)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


@contextlib.contextmanager
def serial(t: torch.Tensor) -> Iterator[None]:
    """Run torch CPU ops in the calling thread only while the block runs (no effect on other devices).

    Post-processing tensors are small: torch's parallel regions cost more in thread wake-ups than they
    save, and on a loaded machine (the runtime's own threads busy next to us) a wake-up can take
    milliseconds. torch's thread count is per calling thread, so other threads (a torch backend running
    inference) are not affected.
    """
    n = torch.get_num_threads()
    if t.device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
