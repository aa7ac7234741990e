"""``yolox-eval``: COCO bbox AP of any artefact on a COCO-format folder, with the authors' protocol."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..eval.coco import AUTHORS_PROTOCOL, STAT_LABELS, STAT_NAMES, evaluate, open_scorable
from ..runtimes.detector import Detector
from ..utils.files import json_text, standard_stream, write_text_atomic
from ..utils.table import format_table
from .common import add_model_args, cli_entry, description, detector_kwargs, json_output, main_guard, read_by


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yolox-eval", description=description(__doc__))
    add_model_args(p)
    p.add_argument("--data", required=True, help="COCO folder: annotations/instances_<split>.json + <split>/")
    p.add_argument("--split", default="val2017", help="split name (default val2017)")
    conf, nms = AUTHORS_PROTOCOL["conf"], AUTHORS_PROTOCOL["nms"]
    p.add_argument("--conf", type=float, default=conf, help=f"score threshold (default {conf}, as the authors)")
    p.add_argument("--nms", type=float, default=nms, help=f"NMS IoU threshold (default {nms}, as the authors)")
    p.add_argument("--class-agnostic", action="store_true", help="class-agnostic NMS")
    p.add_argument("--json", help="write the metrics as JSON to this file (- for standard output)")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_path = json_output(args.json, [*read_by([args.weights]), args.data]) if args.json is not None else None
    data = open_scorable(args.data, args.split)
    protocol = {**AUTHORS_PROTOCOL, "conf": args.conf, "nms": args.nms}  # all detections, boxes not clipped
    with Detector(args.weights, class_agnostic=args.class_agnostic, **protocol, **detector_kwargs(args)) as det:
        # the JSON on stdout (--json /dev/stdout, for a pipe) is all stdout holds; the tables go to stderr
        out = sys.stderr if json_path is not None and standard_stream(json_path) is sys.stdout else sys.stdout
        print(f"{det!r} on {len(data.image_ids)} images of {args.data}/{args.split}", file=out)
        result = evaluate(det, data, progress=True)
        # the settings in effect (an artefact with NMS inside keeps its own)
        settings = {"conf": det.conf, "nms": det.nms, "class_agnostic": det.class_agnostic, "max_det": det.max_det}
    stats = [[label, result.stats[name]] for name, label in zip(STAT_NAMES, STAT_LABELS)]
    rows = sorted(result.per_class.items(), key=lambda kv: kv[0])
    tables = "\n\n".join([
        format_table(["metric", "value"], stats), format_table(["class", "AP"] * 3, _columns(rows, 3)),
        f"AP {result.stats['AP']:.4f}  AP50 {result.stats['AP50']:.4f}  AP75 {result.stats['AP75']:.4f}"])
    if json_path is not None:  # first: a reader of the tables that stops early (| head) must not cost the results
        try:
            write_text_atomic(json_path, json_text({**result.to_dict(), "settings": settings}))
        except BaseException:
            print(tables, file=out)  # a file that could not be written does not cost the figures either
            raise
    print(tables, file=out)
    return 0


def _columns(rows: list[tuple[str, float]], n: int) -> list[list]:
    """Lay ``(name, AP)`` pairs out in ``n`` side-by-side column pairs."""
    height = -(-len(rows) // n)
    out = []
    for r in range(height):
        line: list = []
        for c in range(n):
            i = c * height + r
            line.extend(rows[i] if i < len(rows) else ("", None))
        out.append(line)
    return out


if __name__ == "__main__":
    main_guard(main)
