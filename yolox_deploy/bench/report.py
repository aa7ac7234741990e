"""Writers: the benchmark as markdown (the paper's table format, measured beside published), CSV and JSON."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, InputError
from ..utils.files import atomic_write, json_text
from ..utils.packages import missing_reason
from ..utils.table import format_table
from ..utils.text import listed
from .results import BenchReport, BenchRow, DemoComparison
from .tables import published

OUTPUT_NAMES = {"markdown": "results.md", "csv": "results.csv", "json": "results.json", "plot": "results.png"}
# a run's results so far, beside (not over) an earlier finished run's until this one finishes
PARTIAL_NAMES = {"markdown": "results.partial.md", "csv": "results.partial.csv", "json": "results.partial.json"}

PAPER_HEADERS = ["Model", "Backend", "Device", "Precision", "Batch", "Size", "AP (%)", "Params (M)", "GFLOPs",
                 "Latency (ms)", "FPS", "Full (ms)", "Full FPS", "Published AP", "V100 (ms)", "x V100", "T4 TRT (ms)",
                 "x T4", "Status"]
DETAIL_HEADERS = ["Model", "Backend", "Precision", "Batch", "Size", "model mean", "p50", "p90", "p99", "FPS",
                  "full mean", "p50", "p90", "p99", "FPS", "pre", "infer", "post", "n model", "n full"]


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def _display(model: str) -> str:
    try:
        return published(model).display
    except (KeyError, InputError):
        return model


def paper_rows(rows: Sequence[BenchRow]) -> list[list[Any]]:
    """Rows of the paper-format table: measured latency (model alone, mean) beside the published ones."""
    out = []
    for r in rows:
        pub = r.published
        out.append([
            _display(r.model), r.backend_label, r.device, r.precision, r.batch, r.input,
            f"{r.ap * 100:.1f}" if r.ap is not None else None, _r(r.params_m, 2), _r(r.gflops, 2),  # 31.0, not 31
            _r(r.model_ms.mean, 2) if r.model_ms else None, _r(r.model_fps, 1),
            _r(r.pipeline.total.mean, 2) if r.pipeline else None, _r(r.full_fps, 1),
            pub.ap if pub else None, pub.v100_ms if pub else None, _r(r.ratio_v100, 2),
            pub.t4_trt_ms if pub else None, _r(r.ratio_t4, 2), r.status,
        ])
    return out


def detail_rows(rows: Sequence[BenchRow]) -> list[list[Any]]:
    """Percentiles of both timings and the full pipeline's stage split (ok rows only)."""
    out = []
    for r in rows:
        if not r.ok or r.model_ms is None or r.pipeline is None:
            continue
        m, p = r.model_ms, r.pipeline
        out.append([_display(r.model), r.backend_label, r.precision, r.batch, r.input,
                    _r(m.mean, 2), _r(m.p50, 2), _r(m.p90, 2), _r(m.p99, 2), _r(r.model_fps, 1),
                    _r(p.total.mean, 2), _r(p.total.p50, 2), _r(p.total.p90, 2), _r(p.total.p99, 2),
                    _r(r.full_fps, 1), _r(p.pre.mean, 2), _r(p.infer.mean, 2), _r(p.post.mean, 2), m.n, p.total.n])
    return out


def demo_rows(demo: DemoComparison) -> list[list[Any]]:
    out = []
    for label, t in ((f"yolox-deploy Detector ({demo.ours_backend}, {demo.ours_precision})", demo.ours),
                     ("authors' ONNX Runtime demo pipeline", demo.demo)):
        out.append([label, _r(t.total.fps(1), 1), _r(t.total.mean, 2), _r(t.total.p50, 2), _r(t.total.p90, 2),
                    _r(t.total.p99, 2), _r(t.pre.mean, 2), _r(t.infer.mean, 2), _r(t.post.mean, 2), t.total.n])
    return out


def to_markdown(report: BenchReport) -> str:
    """The whole report as markdown."""
    s = report.settings
    lines = ["# YOLOX benchmark", ""]
    lines.append(f"**Host:** {report.host.summary()}")
    lines.append("")
    cap = (f"up to {s.get('iters')} timed iterations (fewer past --max-time {s['max_seconds']:g} s: the *n* columns "
           "count them)" if s.get("max_seconds") else f"{s.get('iters')} timed iterations")
    lines.append(f"**Run:** {report.started}, {report.seconds:.0f} s. {cap} after "
                 f"{s.get('warmup')} warm-up per measurement; images: {s.get('images_desc')}; timing: "
                 f"{', '.join(sorted({r.clock for r in report.rows if r.clock})) or '-'}.")
    lines += ["", "## Results, in the paper's format", ""]
    lines.append("*Latency* is the model alone (the letterboxed uint8 batch -> `backend.infer`, the conversion to "
                 "the float input inside it; device synchronised), as the paper measures it (\"without "
                 "post-processing\"); *Full* is the whole `Detector` on raw BGR images "
                 "(letterbox, inference, decode, NMS, scale back; images already in memory). Both are the mean per "
                 "call of *Batch* images; FPS is images per second. *Published AP*, *V100* and *T4 TRT* are "
                 "published figures (AP and V100 FP16 batch-1 latency from the authors' model zoo for their released "
                 "weights, retrained since the paper: above its tables for Nano, S and M, 0.1-0.3 below for L and "
                 "X; T4 TensorRT FP16 from the Ultralytics "
                 "comparison pages); "
                 "*x V100* / *x T4* = measured latency / published latency (batch-1 rows).")
    lines.append("")
    lines.append(format_table(PAPER_HEADERS, paper_rows(report.rows), floatfmt="g", markdown=True))
    detail = detail_rows(report.rows)
    if detail:
        lines += ["", "## Latency distribution and stage split (ms per call)", ""]
        lines.append(format_table(DETAIL_HEADERS, detail, floatfmt="g", markdown=True))
    if report.demos:
        lines += ["", "## Full pipeline vs the authors' ONNX Runtime demo", ""]
        lines += [f"- **{d.summary()}**" for d in report.demos]
        d = report.demos[0]
        lines.append("")
        lines.append(f"Same {d.images} images, same run, interleaved blocks, one image per call. The demo pipeline is a "
                     f"stage-for-stage re-implementation of the authors' `demo/ONNXRuntime/onnx_inference.py` (numpy "
                     f"letterbox, default `InferenceSession` on `{Path(d.demo_onnx).name}`, numpy grid decode, "
                     f"class-agnostic numpy NMS at 0.45 over scores > 0.1); our Detector ran with the same thresholds.")
        for d in report.demos:
            lines += ["", f"### {d.ours_backend}, {d.ours_precision}: {d.speedup_shown:.2f}x", ""]
            if d.agreement is not None:
                lines.append(f"Detections agreement with the demo: {d.agreement:.3f}.")
                lines.append("")
            lines.append(format_table(["Pipeline", "FPS", "mean", "p50", "p90", "p99", "pre", "infer", "post", "n"],
                                      demo_rows(d), floatfmt="g", markdown=True))
            lines.append("")
            for note in d.notes:
                lines.append(f"- {note}")
    lines += ["", "## Published figures used", ""]
    models = sorted({r.model for r in report.rows})
    pub_rows = []
    for m in models:
        try:
            p = published(m)
        except (KeyError, InputError):
            continue
        pub_rows.append([p.display, p.size, p.ap, p.params_m, p.gflops, p.v100_ms, p.t4_trt_ms])
    lines.append(format_table(["Model", "Size", "AP (%)", "Params (M)", "GFLOPs", "V100 FP16 (ms)", "T4 TRT FP16 (ms)"],
                              pub_rows, floatfmt="g", markdown=True))
    notes = list(report.notes)
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[BenchRow]) -> str:
    """One line per row (:attr:`BenchRow.CSV_FIELDS`); floats at full precision, missing values empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(BenchRow.CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.flat().items()})
    return buf.getvalue()


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The CSV rows as dicts of strings (empty string for missing values)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def to_json(report: BenchReport) -> str:
    return json_text(report.to_dict())


def read_json(path: str | os.PathLike) -> BenchReport:
    return BenchReport.from_dict(json.loads(Path(path).read_text()))


def require_plotting() -> None:
    """Raise :class:`BackendUnavailable` when matplotlib, which draws ``results.png``, is not installed (looked
    up, not imported): said before any timing (yolox-bench) or any file is written (:func:`write_report`)."""
    reason = missing_reason("matplotlib", "results.png", "bench")
    if reason is not None:
        raise BackendUnavailable(f"{reason}, or pass --no-plot (plot=False)")


def write_report(report: BenchReport, folder: str | os.PathLike, *, plot: bool = True,
                 partial: bool = False) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.json`` and (``plot``) ``results.png`` into ``folder``;
    without ``plot`` an earlier run's ``results.png`` is removed, so every file there describes this report,
    and the results a run wrote so far (``partial``: ``results.partial.*``) go. With ``partial``, only those
    are written: an earlier run's results stay until this one's replace them."""
    if plot and not partial:
        require_plotting()  # before the folder is made: a missing matplotlib leaves nothing
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names = PARTIAL_NAMES if partial else OUTPUT_NAMES
    texts = {"markdown": to_markdown(report), "csv": to_csv(report.rows), "json": to_json(report)}
    paths: dict[str, Path] = {}
    # every file is made before any replaces an earlier run's: one that cannot be (a full disk, a Ctrl-C while
    # plotting) leaves that run's files all as they were, not this run's tables beside that run's plot
    with contextlib.ExitStack() as files:
        for key, text in texts.items():
            with open(files.enter_context(atomic_write(out / names[key])), "w") as f:
                f.write(text)
            paths[key] = out / names[key]
        if plot and not partial:
            from .plot import plot_speed_accuracy

            plot_speed_accuracy(report, files.enter_context(atomic_write(out / OUTPUT_NAMES["plot"])))
            paths["plot"] = out / OUTPUT_NAMES["plot"]
    if partial:
        return paths
    if not plot:
        (out / OUTPUT_NAMES["plot"]).unlink(missing_ok=True)
    for name in PARTIAL_NAMES.values():
        (out / name).unlink(missing_ok=True)
    return paths


def check_report_folder(folder: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder whose ``results.*`` names are taken by files yolox-bench did
    not write (it replaces them, and removes ``results.png``, only when the folder's ``results.json`` or
    ``results.partial.json`` is one of its reports)."""
    out = Path(folder)
    taken = [n for n in (*OUTPUT_NAMES.values(), *PARTIAL_NAMES.values()) if os.path.lexists(out / n)]
    if not taken:
        return
    ours = any(_is_report(out / n) for n in (OUTPUT_NAMES["json"], PARTIAL_NAMES["json"]))
    folders = [n for n in taken if (out / n).is_dir()]
    if folders or not ours:
        raise InputError(f"--output {out} already holds {listed(folders or taken)}, which yolox-bench did not write "
                         "there; it replaces only its own earlier results: choose another folder, or move them")


def _is_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"schema", "settings", "host", "rows"} <= set(data)
