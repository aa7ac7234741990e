"""What counts as an integer or a number in an argument: Python's or numpy's, never a boolean."""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_integer(v: Any) -> bool:
    """``3`` or ``np.int64(3)``; not ``True``, ``3.0`` or ``"3"``."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An integer or a float (Python's or numpy's, NaN and infinities included); not a boolean or a string."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_finite_number(v: Any) -> bool:
    """:func:`is_number`, and neither NaN nor an infinity."""
    return is_number(v) and math.isfinite(v)
