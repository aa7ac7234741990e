"""``yolox-compare``: the same images through several artefacts; differences, agreement and latency."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import InputError
from ..eval.compare import compare_artefacts
from ..io.images import iter_source
from ..utils.files import json_text, standard_stream, write_text_atomic
from ..utils.table import format_table
from .common import class_names_argument, cli_entry, description, json_output, main_guard, read_by


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yolox-compare", description=description(__doc__),
                                epilog="The first artefact is the reference. Raw outputs are compared in raw units "
                                       "(offsets and log-sizes), whether or not a graph decodes.")
    p.add_argument("artefacts", nargs="+", help=".pth, .onnx, .engine, *_openvino/, *_ncnn/ ...")
    p.add_argument("--images", required=True, help="an image or a folder of images")
    p.add_argument("--limit", type=int, default=50, help="use at most this many images (default 50)")
    p.add_argument("--model", help="YOLOX variant for checkpoints that do not say")
    p.add_argument("--conf", type=float, help="score threshold (default: that of the first artefact with NMS in "
                                              "its graph, for every artefact; else 0.25)")
    p.add_argument("--nms", type=float, help="NMS IoU threshold (default: that of the first artefact with NMS in its "
                                             "graph, for every artefact; else 0.45)")
    p.add_argument("--device", default="cpu", help="device for every artefact (default cpu)")
    p.add_argument("--img-size", nargs="+", type=int, metavar="N",
                   help="input size for every artefact, one number or height width (default: each artefact's own; "
                        "dynamic-size ones without metadata need it)")
    p.add_argument("--class-names", metavar="NAMES",
                   help="labels for every artefact (those without them, or in place of their own): comma-separated, "
                        "or a text file with one name per line")
    p.add_argument("--decode-in-graph", action="append", default=[], metavar="ARTEFACT",
                   help="this artefact (one without metadata) outputs decoded boxes in pixels, not the raw head; "
                        "repeat for each such artefact")
    p.add_argument("--json", help="also write the table as JSON to this file (- for standard output)")
    return p


def _decoding(artefacts: Sequence[str], decoded: Sequence[str]) -> list[dict]:
    """Each artefact's own options: ``decode_in_graph`` for those named by ``--decode-in-graph``."""
    def key(path: str) -> str:
        return os.path.normcase(os.path.abspath(path))

    keys = [key(a) for a in artefacts]
    for name in decoded:
        if key(name) not in keys:
            raise InputError(f"--decode-in-graph {name} is not one of the artefacts compared; name one of them")
    named = {key(name) for name in decoded}
    return [{"decode_in_graph": True} if k in named else {} for k in keys]


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit < 1:
        raise InputError("--limit must be >= 1")
    json_path = json_output(args.json, [*read_by(args.artefacts), args.images]) if args.json is not None else None
    own = _decoding(args.artefacts, args.decode_in_graph)
    class_names = None if args.class_names is None else class_names_argument(args.class_names)
    images = []
    for frame in iter_source(args.images):
        images.append(frame.image)
        if len(images) == args.limit:
            break
    rows = compare_artefacts(args.artefacts, images, model=args.model, conf=args.conf, nms=args.nms,
                             device=args.device, img_size=args.img_size, class_names=class_names,
                             artefact_options=own, progress=True)
    table = []
    for i, r in enumerate(rows):
        diff = "reference" if i == 0 else ("n/a" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}")
        a = r.agreement
        table.append([r.artefact, r.backend, r.precision, f"{r.input_size[0]}x{r.input_size[1]}", diff,
                      "-" if i == 0 else "n/a" if r.matched_iou is None else f"{r.matched_iou:.4f}",
                      "-" if i == 0 else f"{a.agreement:.1%}",
                      a.n_b, f"{r.conf:g} / {r.nms:g}", r.pre_ms, r.infer_ms, r.post_ms, r.total_ms])
    # the JSON on stdout (--json /dev/stdout, for a pipe) is all stdout holds; the table goes to stderr
    out = sys.stderr if json_path is not None and standard_stream(json_path) is sys.stdout else sys.stdout
    print(format_table(["artefact", "backend", "precision", "input", "max abs diff", "matched IoU", "agreement",
                        "dets", "conf / IoU", "pre ms", "infer ms", "post ms", "total ms"], table, floatfmt=".2f"),
          f"{len(images)} image(s), one per call; diffs against {rows[0].artefact}", sep="\n", file=out)
    if json_path is not None:
        write_text_atomic(json_path, json_text({
            "images": len(images), "reference": rows[0].artefact,
            "rows": [{**r.to_dict(), "reference": i == 0} for i, r in enumerate(rows)]}))
    return 0


if __name__ == "__main__":
    main_guard(main)
