"""``yolox-export``: a checkpoint (or an existing ONNX file) to ONNX, OpenVINO IR, NCNN or a TensorRT engine."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from ..export import IMPORT_ERRORS, ExportOptions, export, registered_formats
from ..utils.table import format_table
from .common import cli_entry, description, main_guard


def _format_choices() -> list[str]:
    return sorted(n for c in registered_formats().values() for n in (c.info.name, *c.info.aliases))


def build_parser() -> argparse.ArgumentParser:
    """The parser. Export options default to ``None`` (not given): only the options a user gives reach
    :func:`~yolox_deploy.export.export`, which refuses those that do not apply; its defaults fill the rest."""
    formats = registered_formats()
    lines = []
    for cls in formats.values():
        note = cls.availability()
        lines.append(f"  {cls.info.name:<9} {cls.info.description}" + (f" [{note}]" if note else ""))
    for name, err in IMPORT_ERRORS.items():
        lines.append(f"  {name:<9} [failed to load: {err}]")
    p = argparse.ArgumentParser(prog="yolox-export", description=description(__doc__),
                                epilog="formats:\n" + "\n".join(lines),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (.pth) or an ONNX file to convert; a variant name "
                                                    "(yolox-s) takes the authors' COCO checkpoint, fetched once")
    p.add_argument("--model", help="YOLOX variant (yolox-nano ... yolox-x) if the checkpoint does not say")
    # Not argparse choices: an unknown name gets the driver's one-line error, like every other bad input.
    p.add_argument("--format", required=True, metavar="{" + ",".join(_format_choices()) + "}",
                   help="output format (see the list below)")
    p.add_argument("--num-classes", type=int, help="class count of the checkpoint (default: read from it)")
    p.add_argument("--img-size", nargs="+", type=int, metavar="N",
                   help="640, or height width (default: the size a yolox-train checkpoint records, else the variant's "
                   "test size)")
    p.add_argument("--batch", type=int, help="batch size, default 1 (the profile's optimum with --dynamic)")
    p.add_argument("--dynamic", action="store_true", default=None, help="dynamic batch")
    p.add_argument("--dynamic-hw", action="store_true", default=None, help="dynamic height and width too")
    p.add_argument("--max-batch", type=int,
                   help="largest batch of a dynamic TensorRT profile (with --dynamic; default max(8, batch))")
    p.add_argument("--half", action="store_true", default=None, help="FP16")
    p.add_argument("--int8", action="store_true", default=None, help="INT8 post-training quantisation (needs --calib-images)")
    p.add_argument("--calib-images", help="folder of calibration images for --int8")
    p.add_argument("--calib-count", type=int, help="at most this many calibration images for --int8 (default 100)")
    p.add_argument("--calib-method", choices=("entropy", "minmax"),
                   help="TensorRT INT8 calibrator for --int8 (default entropy)")
    p.add_argument("--decode-in-graph", action=argparse.BooleanOptionalAction,
                   help="decode boxes inside the graph (default on; also appended to a raw ONNX source)")
    p.add_argument("--nms", action="store_true", default=None,
                   help="NMS inside the graph: outputs num_dets, boxes, scores, labels")
    p.add_argument("--conf", type=float, help="score threshold of the in-graph NMS (with --nms; default 0.25)")
    p.add_argument("--iou", type=float, help="IoU threshold of the in-graph NMS (with --nms; default 0.45)")
    p.add_argument("--max-det", type=int, help="detections per image of the in-graph NMS (with --nms; default 100)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--simplify", action=argparse.BooleanOptionalAction, help="simplify the ONNX graph (default on)")
    p.add_argument("--workspace", type=float, help="TensorRT builder workspace in GiB (default 4)")
    p.add_argument("--device", help="device to build and verify on (default cpu; TensorRT: cuda:N)")
    p.add_argument("--output", help="output path (default: next to the weights, or in the current folder when theirs "
                                    "is read-only or the weights were fetched by name)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction,
                   help="run the artefact and compare with the torch model (default on)")
    p.add_argument("--verify-image", help="image to verify on (default: a synthetic scene; for --int8, the first "
                                                "calibration image the model finds objects in)")
    p.add_argument("--legacy", action="store_true", help="legacy checkpoint: RGB, /255, ImageNet mean/std input")
    p.add_argument("--force", action="store_true", default=None, help="overwrite an existing output")
    return p


def _size(path: Path) -> float:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    return path.stat().st_size / 1e6


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields(ExportOptions)
             if f.name != "img_size" and getattr(args, f.name) is not None}
    result = export(args.weights, args.format, args.output, model=args.model, num_classes=args.num_classes,
                    legacy=args.legacy, img_size=args.img_size, **given)
    m = result.meta
    rows = [
        ["artefact", str(result.path)],
        ["files", ", ".join(p.name for p in result.files)],
        ["size (MB)", f"{sum(_size(p) for p in result.files):.2f}"],
        ["format / precision", f"{m.format} / {m.precision}"],
        ["input", f"{'N' if m.batch is None else m.batch}x3x{'HxW' if m.dynamic_hw else f'{m.input_size[0]}x{m.input_size[1]}'}"],
        ["in graph", ", ".join(k for k, v in (("decode", m.decode_in_graph), ("nms", m.nms_in_graph)) if v) or "raw head"],
        ["verification", result.verification.summary() if result.verification else "skipped"],
        ["time (s)", f"{result.seconds:.1f}"],
    ]
    print(format_table(["", "value"], rows))
    return 0


if __name__ == "__main__":
    main_guard(main)
