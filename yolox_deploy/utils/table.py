"""Plain-text and markdown tables for numbers printed by the CLIs and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(v: Any, floatfmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, floatfmt)
    return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, floatfmt: str = ".3f",
                 markdown: bool = False) -> str:
    """Rows under headers, columns aligned (numbers right, text left). ``markdown=True`` gives a pipe table."""
    cells = [[_cell(v, floatfmt) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) if rows else False
               for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def fmt(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    lines = [fmt(list(headers))]
    if markdown:
        lines.append("|" + "|".join((("-" * (w + 1)) + ":") if num else ("-" * (w + 2))
                                    for w, num in zip(widths, numeric)) + "|")
    else:
        lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(r) for r in cells)
    return "\n".join(lines)
