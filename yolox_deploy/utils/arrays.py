"""Arrays as numpy, whatever the caller holds (torch is never imported here)."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array: as it is, or a tensor's copy on the CPU (one that needs grad too; bfloat16,
    which numpy lacks, as float32), or ``np.asarray`` of anything else."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(x)
