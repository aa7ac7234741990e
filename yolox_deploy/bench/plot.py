"""The speed/accuracy figure, after the paper's Figure 1, with published and measured points.

Left: COCO AP (%) against batch-1 latency (ms, log scale): the authors' V100 FP16 curve for YOLOX and
YOLOv5 (Table 3 / model zoo), the T4 TensorRT figures, and one series per measured backend / precision /
device (model alone, mean). A measured point's AP is the measured one when ``--with-eval`` ran (filled
marker), else the published AP of that variant (hollow marker). Right: AP against parameters (M) for the
light models of Table 4, with the variants that were benchmarked ringed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from .results import BenchReport, BenchRow
from .tables import MODEL_ZOO, T4_TENSORRT, TABLE3_YOLOV5, TABLE4_LIGHT, PublishedRow

SHORT = {"yolox-nano": "Nano", "yolox-tiny": "Tiny", "yolox-s": "S", "yolox-m": "M", "yolox-l": "L", "yolox-x": "X",
         "yolox-darknet53": "D53"}
MARKERS = "osD^vP*Xhp<>"
MEASURED_COLORS = (2, 0, 4, 5, 6, 8, 9)  # tab10 entries not used by the published curves (red, orange, gray)


def _published_curve(ax, rows, label: str, style: dict) -> None:
    pts = [(r.latency_ms, r.ap, r.model) for r in rows if r.latency_ms is not None and r.ap is not None]
    if not pts:
        return
    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
    for x, y, n in pts:
        ax.annotate(n.split("-")[-1], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color=style["color"])


def _minor_label(value: float, _pos: int) -> str:
    """Label the 2x and 5x minor ticks of a log axis only, so wide ranges stay readable."""
    if value <= 0:
        return ""
    lead = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if lead in (2, 5) else ""


def _ap(row: BenchRow) -> float | None:
    """Measured AP (%) when evaluated, else the published AP of the variant."""
    if row.ap is not None:
        return row.ap * 100
    return row.published.ap if row.published else None


def _series(rows: list[BenchRow]) -> dict[str, list[BenchRow]]:
    out: dict[str, list[BenchRow]] = {}
    for r in rows:
        if r.ok and r.model_ms is not None and r.batch == 1:
            out.setdefault(f"{r.backend_label} {r.precision} ({r.device})", []).append(r)
    return out


def measured_ap(rows: Sequence[BenchRow]) -> dict[str, tuple[float, str]]:
    """Per model, the AP (%) measured in a run and the precision it was measured in: an FP32 row's where the
    model has one (the paper's AP is FP32's), else the first reduced-precision row's."""
    measured: dict[str, tuple[float, str]] = {}
    for r in rows:
        if r.ok and r.ap is not None and (r.model not in measured or r.precision == "fp32"):
            measured[r.model] = (r.ap * 100, r.precision)
    return measured


def plot_speed_accuracy(report: BenchReport, path: str | os.PathLike, *, dpi: int = 130) -> Path:
    """Draw the figure into ``path`` (PNG). :func:`~yolox_deploy.bench.report.write_report` hands it the
    temporary file it moves into place with the report's other files."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.6), gridspec_kw={"width_ratios": [1.6, 1]})

    zoo = [r for r in MODEL_ZOO.rows if r.latency_ms is not None and r.variant != "yolox-darknet53"]
    _published_curve(left, zoo, "YOLOX, V100 FP16 (authors' model zoo)", dict(color="#d62728", marker="o", lw=2))
    v5 = [r for r in TABLE3_YOLOV5.rows if r.variant is None]
    _published_curve(left, v5, "YOLOv5, V100 FP16 (paper Table 3)", dict(color="#7f7f7f", marker="s", lw=1.5, ls="--"))
    t4 = [PublishedRow(r.model, ap=MODEL_ZOO.row(r.variant).ap, latency_ms=r.latency_ms, variant=r.variant)
          for r in T4_TENSORRT.rows]
    _published_curve(left, t4, "YOLOX, T4 TensorRT FP16 (Ultralytics)", dict(color="#ff7f0e", marker="^", lw=1.5, ls=":"))

    cmap = plt.get_cmap("tab10")
    for k, (label, rows) in enumerate(sorted(_series(report.rows).items())):
        color = cmap(MEASURED_COLORS[k % len(MEASURED_COLORS)])
        rows = sorted(rows, key=lambda r: r.params)  # a family curve, small to large, as in the paper
        points = [(r.model_ms.mean, _ap(r), r) for r in rows]
        keep = [(x, y, r) for x, y, r in points if y is not None]
        if not keep:
            continue
        marker = MARKERS[k % len(MARKERS)]
        left.plot([p[0] for p in keep], [p[1] for p in keep], color=color, lw=1, alpha=0.6)
        for x, y, r in keep:
            has_ap = r.ap is not None
            left.scatter([x], [y], s=55, marker=marker, color=color if has_ap else "white", edgecolors=color,
                         linewidths=1.6, zorder=3)
            left.annotate(SHORT.get(r.model, r.model), (x, y), textcoords="offset points", xytext=(5, 4 + 7 * (k % 4)),
                          fontsize=7, color=color)
        left.plot([], [], color=color, marker=marker, lw=1, label=f"measured: {label}")
    left.set_xscale("log")
    left.margins(x=0.12)
    left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    left.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
    left.tick_params(axis="x", which="minor", labelsize=7)
    left.set_xlabel("batch-1 latency, model only (ms, log scale)")
    left.set_ylabel("COCO AP (%)")
    left.set_title("Speed vs accuracy")
    left.grid(True, which="both", alpha=0.3)
    # below the axes: measured points of fast CPU backends sit in the lower left where a legend would hide them
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    left.text(0.01, 0.99, "filled: measured AP; hollow: published AP of the variant",
              transform=left.transAxes, fontsize=7, va="top", color="#444444")

    benchmarked = {r.model for r in report.rows if r.ok}
    measured = measured_ap(report.rows)
    for r in TABLE4_LIGHT.rows:
        if r.params_m is None or r.ap is None:
            continue
        is_yolox = r.variant is not None
        color = "#d62728" if is_yolox else "#1f77b4"
        right.scatter([r.params_m], [r.ap], s=60, color=color, marker="o" if is_yolox else "s", zorder=3)
        right.annotate(r.model, (r.params_m, r.ap), textcoords="offset points", xytext=(6, -3), fontsize=8)
        if r.variant in benchmarked:
            right.scatter([r.params_m], [r.ap], s=240, facecolors="none", edgecolors="#2ca02c", linewidths=1.8, zorder=2)
        if r.variant in measured:
            ap, precision = measured[r.variant]
            right.scatter([r.params_m], [ap], s=70, marker="*", color="#2ca02c", zorder=4)
            where = Path(str(report.settings.get("with_eval") or "")).name
            label = (f"measured on {where}" if where else "measured") + ("" if precision == "fp32" else
                                                                          f" ({precision.upper()})")
            right.annotate(label, (r.params_m, ap),
                           textcoords="offset points",
                           xytext=(6, 4), fontsize=7, color="#2ca02c")
    right.set_xlabel("parameters (M)")
    right.set_ylabel("COCO AP (%)")
    right.set_title("Light models at 416 (paper Table 4)\nringed: benchmarked in this run", fontsize=10)
    right.grid(True, alpha=0.3)
    right.margins(x=0.25, y=0.15)

    host = report.host
    on_gpu = any(r.ok and r.device.lower().startswith(("cuda", "tensorrt")) for r in report.rows)
    where = host.gpus[0].name if host.gpus and on_gpu else host.cpu_model  # the rows' device, not just the host's
    fig.suptitle(f"YOLOX speed/accuracy: published vs measured on {where}", fontsize=11)
    fig.tight_layout()
    dest = Path(path)
    try:
        fig.savefig(dest, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return dest
