"""``yolox-bench``: latency / FPS / GFLOPs of YOLOX variants on every backend, beside the paper's figures.

Writes results.md (the paper's table format), results.csv, results.json and results.png (speed/accuracy plot
after the paper's Figure 1) into --output when the run ends, replacing an earlier run's (results so far are
kept in results.partial.*); exported artefacts are cached in --output/cache and reused.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..bench.report import PAPER_HEADERS, check_report_folder, paper_rows, require_plotting, write_report
from ..bench.results import FAILED
from ..bench.runner import BenchConfig, default_images, default_weights_dir, run_benchmark
from ..errors import InputError
from ..utils.table import format_table
from .common import cli_entry, description, main_guard, output_folder

log = logging.getLogger(__name__)
EXIT_ROWS_FAILED = 1  # the run finished, the tables are written, some rows have no figures


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(p) for p in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_backend_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["openvino:hint=throughput", "ort:threads=1"]`` -> ``{"openvino": {"hint": "throughput"}, "ort": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        backend, sep, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not backend.strip() or not key.strip():
            raise InputError(f"--backend-option {item!r}: expected BACKEND:KEY=VALUE (e.g. openvino:hint=throughput)")
        out.setdefault(backend.strip().lower(), {})[key.strip()] = _value(value.strip())
    return out


def _backend_help() -> str:
    from ..bench.artefacts import backend_status, known_backend_names

    lines = []
    for name in known_backend_names():
        ok, why = backend_status(name)
        lines.append(f"  {name:<12} {'available' if ok else 'not available: ' + why}")
    return "backends:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yolox-bench", description=description(__doc__), epilog=_backend_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="nano", help="comma-separated variants: nano,tiny,s,m,l,x,darknet53 (default nano)")
    p.add_argument("--backends", default="torch",
                   help="comma-separated backends: torch,onnxruntime,openvino,ncnn,tensorrt (trt) (default torch)")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32,fp16,int8 (default fp32)")
    p.add_argument("--half", action="store_true", help="add FP16 rows")
    p.add_argument("--int8", action="store_true", help="add INT8 rows (calibrated on --calib-images or --images)")
    p.add_argument("--only-reduced", action="store_true", help="leave the FP32 rows out (of --half / --int8 / --precisions)")
    p.add_argument("--batch", default="1", type=_ints, help="comma-separated batch sizes (default 1)")
    p.add_argument("--img-size", nargs="+", type=int, metavar="N",
                   help="input size for every model: one number or height width (default: each variant's test size)")
    p.add_argument("--iters", type=int, default=100, help="timed iterations per measurement (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up iterations (default 10)")
    p.add_argument("--max-time", type=float, help="stop a measurement after this many seconds (at least 5 iterations)")
    p.add_argument("--images", help="folder of timing images (default: ../shared/assets/images/coco-val-unlabeled "
                                    "when present, else synthetic scenes); use 'synthetic' to force synthetic")
    p.add_argument("--max-images", type=int, default=100, help="use at most this many images (default 100)")
    p.add_argument("--weights-dir", help="folder with yolox_<v>.pth (real weights; default ../shared/assets/weights when "
                                         "present); variants without one are timed with random weights")
    p.add_argument("--with-eval", metavar="DATA", help="COCO folder: also measure AP (rows with real weights)")
    p.add_argument("--split", default="val2017", help="COCO split for --with-eval (default val2017)")
    p.add_argument("--calib-images", help="INT8 calibration folder (default: --images)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int,
                   help="inference threads in every backend (default: each backend's own; the notes say which)")
    p.add_argument("--backend-option", action="append", default=[], metavar="BACKEND:KEY=VALUE",
                   help="a runtime option for one backend, e.g. openvino:hint=throughput or onnxruntime:opt_level=basic "
                        "(repeatable; shown next to the backend in the tables)")
    p.add_argument("--conf", type=float, default=0.25,
                   help="Detector score threshold for the full-pipeline timing (default 0.25)")
    p.add_argument("--nms", type=float, default=0.45,
                   help="Detector NMS IoU threshold for the full-pipeline timing (default 0.45)")
    p.add_argument("--no-demo", action="store_true", help="skip the head-to-head with the authors' ONNX Runtime demo")
    p.add_argument("--output", default="runs/bench", help="output folder (default ./runs/bench)")
    p.add_argument("--cache-dir", help="artefact cache (default OUTPUT/cache)")
    p.add_argument("--no-plot", action="store_true", help="do not draw results.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    extra = (["fp16"] if args.half else []) + (["int8"] if args.int8 else [])
    precisions = list(dict.fromkeys(_csv(args.precisions) + extra))
    if args.only_reduced:
        precisions = [p for p in precisions if p != "fp32"]
        if not precisions:
            raise InputError("--only-reduced leaves the FP32 rows out: give --half, --int8 or reduced --precisions")
    if args.images == "synthetic":
        images = None
    else:
        images = Path(args.images) if args.images else default_images()
    weights_dir = Path(args.weights_dir) if args.weights_dir else default_weights_dir()
    img_size = None
    if args.img_size:
        from ..utils.sizes import parse_img_size

        img_size = parse_img_size(args.img_size)
    cfg = BenchConfig(
        models=_csv(args.models), backends=_csv(args.backends), precisions=precisions, batches=args.batch,
        img_size=img_size, iters=args.iters, warmup=args.warmup, max_seconds=args.max_time, images=images,
        max_images=args.max_images, weights_dir=weights_dir,
        with_eval=Path(args.with_eval) if args.with_eval else None, eval_split=args.split,
        output=Path(args.output), cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        calib_images=Path(args.calib_images) if args.calib_images else None, device=args.device,
        conf=args.conf, nms=args.nms, threads=args.threads, backend_options=parse_backend_options(args.backend_option),
        demo=not args.no_demo, progress=not args.quiet,
    )
    unused = [name for name in cfg.backend_options if name not in cfg.backends]
    if unused:  # most likely a backend left out of --backends by mistake
        log.warning("--backend-option for %s, which this run does not measure (--backends %s)", ", ".join(unused),
                    ",".join(cfg.backends))
    return cfg


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_images < 1:
        raise InputError(f"--max-images must be >= 1, got {args.max_images}")
    if args.quiet:
        logging.getLogger("yolox_deploy").setLevel(logging.WARNING)
    output_folder(args.output)
    check_report_folder(args.output)
    if not args.no_plot:
        require_plotting()
    cfg = config_from_args(args)
    # rows so far go to results.partial.*; an earlier run's results stay until this run's replace them
    report = run_benchmark(cfg, on_row=lambda so_far: write_report(so_far, cfg.output, partial=True))
    print(f"host: {report.host.summary()}")  # the figures reach the screen before a file can fail to be written
    print(format_table(PAPER_HEADERS, paper_rows(report.rows), floatfmt="g"))
    if report.demos:
        print()
    for demo in report.demos:
        print(demo.summary())
    for note in report.notes:
        if note.startswith("demo comparison"):
            print(note)
    print()
    paths = write_report(report, cfg.output, plot=not args.no_plot)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [r for r in report.rows if r.status.startswith(FAILED)]
    if failed:  # the tables are incomplete: say so in the exit status, for scripts
        print(f"{len(failed)} of {len(report.rows)} row(s) failed; their status column says why", file=sys.stderr)
        return EXIT_ROWS_FAILED
    if not any(r.ok for r in report.rows):  # every row "not available": an empty table is no benchmark
        print("no row could be measured here; their status column says why", file=sys.stderr)
        return EXIT_ROWS_FAILED
    return 0


if __name__ == "__main__":
    main_guard(main)
