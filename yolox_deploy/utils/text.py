"""Short lists of names inside one-line messages."""

from __future__ import annotations

from collections.abc import Sequence


def listed(items: Sequence[str], shown: int = 3) -> str:
    """``"a, b, c, ..."``: the first ``shown`` items, and an ellipsis when there are more."""
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")
