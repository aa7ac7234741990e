"""Pipeline overhead: the full ``Detector`` call against the bare backend call, in one run, on the same images.

    python benchmarks/overhead.py [--artefact X.onnx] [--images DIR] [--rounds 5] [--output benchmarks/results]

Default artefact: YOLOX-Nano 416 exported to ONNX from the shared checkpoint (decode in graph), run with the
onnxruntime backend at batch 1, plus the authors' released ONNX (raw output, decoded by the pipeline).
Blocks of 8 images alternate between the bare backend call (on the pipeline's canvas batch, and on the model's
own float input) and the full Detector call, in a rotating order, so the host's drift hits all three alike;
the full call times its stages (letterbox / infer / decode+NMS+scale) inside itself. Also times post-processing alone
on 640x640 heads (8400 candidates x 80 classes), real and worst case. Writes ``overhead.md`` and
``overhead.json`` with the host they ran on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from yolox_deploy.bench.latency import CpuClock
from yolox_deploy.cli.common import cli_entry, main_guard, output_folder
from yolox_deploy.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
CLOCK = CpuClock()


def measure(artefact: Path, images: list[np.ndarray], rounds: int, warmup: int, block: int = 8) -> dict:
    """Bare backend calls and full Detector calls on the same images, alternating in blocks of ``block`` images.

    Each block of images goes through three kinds of call, in an order that rotates from block to block: the
    bare call on the canvas batch the pipeline hands the backend (``Detector.infer``), the bare call on the
    artefact's own float input ``[1, 3, H, W]`` (the model alone, as the paper and the authors' demo time
    it; the canvas-to-float conversion the pipeline leaves to the runtime is then outside it), and the full
    call (:func:`~yolox_deploy.bench.latency.sample_pipeline`: letterbox, infer, decode/NMS/scale back, each
    stage timed inside the full call). Both bare inputs are made beforehand. Blocks are short enough (well
    under a second) that the host's drift hits the three kinds alike, and long enough that full calls follow
    each other as in an application's loop.
    """
    from yolox_deploy import Detector
    from yolox_deploy.bench.latency import PipelineTimes, sample_pipeline
    from yolox_deploy.bench.stats import LatencyStats
    from yolox_deploy.ops.letterbox import to_model_input

    det = Detector(artefact, backend="onnxruntime")
    canvases = [det.preprocess([im])[0] for im in images]
    floats = [to_model_input(c, det.meta.preprocess) for c in canvases]
    groups = [[im] for im in images]
    sample_pipeline(det, groups, iters=1, warmup=warmup, clock=CLOCK)
    for x in floats[:warmup]:
        det.infer(x)
    kinds = (
        ("bare", lambda i, j: [CLOCK.time(det.infer, c)[1] for c in canvases[i:j]]),
        ("bare_float", lambda i, j: [CLOCK.time(det.infer, x)[1] for x in floats[i:j]]),
        ("full", lambda i, j: list(sample_pipeline(det, groups, iters=j - i, warmup=0, clock=CLOCK, offset=i))),
    )
    samples: dict[str, list] = {name: [] for name, _ in kinds}
    for r in range(rounds):
        for b, i in enumerate(range(0, len(images), block)):
            for k in range(len(kinds)):
                name, run = kinds[(r + b + k) % len(kinds)]
                samples[name] += run(i, min(i + block, len(images)))
    times = PipelineTimes.from_samples(np.asarray(samples["full"]))
    bare, bare_float = (LatencyStats.from_samples(samples[k]) for k in ("bare", "bare_float"))
    return {
        "artefact": str(artefact), "decode_in_graph": det.meta.decode_in_graph, "images": len(images),
        "rounds": rounds, "bare": bare.to_dict(), "bare_float": bare_float.to_dict(), "full": times.total.to_dict(),
        "ratio_mean": times.total.mean / bare.mean, "ratio_p50": times.total.p50 / bare.p50,
        "ratio_float_mean": times.total.mean / bare_float.mean,
        "stages_ms": {"letterbox": times.pre.mean, "infer": times.infer.mean, "decode_nms_scale": times.post.mean},
    }


def nms_microbench(outputs_640: list[np.ndarray], repeats: int = 200) -> dict:
    """Post-processing of 640x640 heads (8400 candidates x 80 classes): real outputs, and a synthetic worst case.

    ``outputs_640``: YOLOX-Nano's decoded head outputs ``[1, 8400, 85]`` on real images. Each is
    post-processed (class-aware batched NMS included) at the demo's and the evaluation's thresholds. The
    stress row feeds the CPU pipeline's batched NMS (``batched_nms_numpy``) 8400 random boxes that *all*
    pass the threshold (no real model output does that).
    """
    from yolox_deploy.ops.nms import batched_nms_numpy
    from yolox_deploy.ops.postprocess import postprocess

    def per_output(conf: float, iou: float) -> dict:
        for out in outputs_640[:10]:
            postprocess(out, conf, iou)
        t, kept = [], []
        for out in outputs_640:
            res, ms = CLOCK.time(postprocess, out, conf, iou)
            t.append(ms)
            kept.append(len(res[0].scores))
        cands = [int(((o[0, :, 4:5] * o[0, :, 5:]).max(1) >= conf).sum()) for o in outputs_640]
        return {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
                "max_ms": float(np.max(t)), "candidates_mean": float(np.mean(cands)),
                "kept_mean": float(np.mean(kept)), "images": len(outputs_640)}

    res = {"real_640_conf0.25_nms0.45": per_output(0.25, 0.45), "real_640_conf0.01_nms0.65": per_output(0.01, 0.65)}

    rng = np.random.default_rng(0)
    a = 8400
    xy = rng.uniform(0, 640, (a, 2))
    wh = rng.uniform(8, 200, (a, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.random(a).astype(np.float32)
    classes = rng.integers(0, 80, a)
    for _ in range(3):
        batched_nms_numpy(boxes, scores, classes, 0.65)
    t = [CLOCK.time(batched_nms_numpy, boxes, scores, classes, 0.65)[1] for _ in range(max(repeats // 10, 5))]
    res["stress_all_8400_random_boxes_80_classes"] = {
        "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "max_ms": float(np.max(t)),
        "candidates_mean": float(a), "kept_mean": float(len(batched_nms_numpy(boxes, scores, classes, 0.65))),
        "images": 0}
    return res


def head_outputs(artefact: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """The artefact's (decoded) head output for each image, batch 1."""
    from yolox_deploy import Detector

    det = Detector(artefact, backend="onnxruntime")
    return [np.array(det.infer(det.preprocess([im])[0])[0]) for im in images]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artefact", action="append", help="ONNX file(s) to measure (default: see above)")
    p.add_argument("--images", default=str(ASSETS / "coco-tiny" / "val2017"))
    p.add_argument("--weights", default=str(ASSETS / "weights" / "yolox_nano.pth"),
                   help="YOLOX-Nano checkpoint: the default artefact and the 640x640 heads of the post-processing "
                        "timing are exported from it")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        raise InputError(f"--rounds must be >= 1 and --warmup >= 0 (got {args.rounds}, {args.warmup})")
    output_folder(args.output)  # before minutes of timing, not after
    weights, released = Path(args.weights), ASSETS / "weights" / "yolox_nano.onnx"
    if not weights.is_file():  # needed for the 640x640 heads even with --artefact: say so before the timing
        raise InputError(f"weights not found: {weights} (the YOLOX-Nano checkpoint; give --weights)")
    if not args.artefact and not released.is_file():
        raise InputError(f"the authors' released ONNX {released} is not there; give the artefacts (--artefact)")

    from yolox_deploy.bench.host import collect_host_info
    from yolox_deploy.export import export
    from yolox_deploy.io.images import list_images, read_image
    from yolox_deploy.utils.files import write_text_atomic
    from yolox_deploy.utils.table import format_table

    images = [read_image(f) for f in list_images(args.images)]
    if not images:
        raise InputError(f"no images in {args.images}")
    artefacts = [Path(a) for a in args.artefact or []]
    labels = {a: str(a) for a in artefacts}
    tmp = tempfile.TemporaryDirectory()
    if not artefacts:
        ours = Path(tmp.name) / "yolox_nano.onnx"
        export(weights, "onnx", ours, model="yolox-nano")
        artefacts = [ours, released]
        labels = {ours: f"{ours.name} (exported from {weights.name})", released: f"{released.name} (released)"}
    rows = [{"label": labels[a], **measure(a, images, args.rounds, args.warmup)} for a in artefacts]
    at_640 = Path(tmp.name) / "yolox_nano_640.onnx"
    export(weights, "onnx", at_640, model="yolox-nano", img_size=640)
    nms = nms_microbench(head_outputs(at_640, images))
    host = collect_host_info()

    table = format_table(
        ["artefact", "decode in graph", "bare ms (mean)", "full ms (mean)", "full/bare", "full/bare (p50)",
         "bare, float input ms", "full/bare float", "letterbox ms", "infer ms", "decode+NMS+scale ms"],
        [[r["label"], r["decode_in_graph"], r["bare"]["mean"], r["full"]["mean"], r["ratio_mean"],
          r["ratio_p50"], r["bare_float"]["mean"], r["ratio_float_mean"], *r["stages_ms"].values()] for r in rows],
        floatfmt=".3f", markdown=True)
    nms_table = format_table(["case", "images", "candidates (mean)", "kept (mean)", "median ms", "p90 ms", "max ms"],
                             [[k, v["images"], v["candidates_mean"], v["kept_mean"], v["median_ms"], v["p90_ms"],
                               v["max_ms"]] for k, v in nms.items()], floatfmt=".3f", markdown=True)
    md = (f"# Pipeline overhead (onnxruntime, batch 1, {len(images)} images x {args.rounds} rounds)\n\n"
          f"Host: {host.summary()}\n\n"
          "Blocks of 8 images alternate between the calls: bare = `Detector.infer` on the canvas batch the pipeline hands the backend "
          "(uint8, converted inside the runtime); bare, float input = the model alone on its float input "
          "(as the paper times it); full = letterbox -> infer -> decode/NMS/scale back to `Detections`.\n\n"
          f"{table}\n\n"
          "## Post-processing alone: 640x640 heads, 8400 candidates x 80 classes\n\n"
          "`postprocess` (score filter, class-aware batched NMS) on YOLOX-Nano's outputs for the same images at "
          "640x640, and batched NMS alone on a synthetic worst case where all 8400 boxes are candidates.\n\n"
          f"{nms_table}\n")
    out = Path(args.output)
    write_text_atomic(out / "overhead.md", md)
    write_text_atomic(out / "overhead.json", json.dumps({"host": host.to_dict(), "rows": rows, "nms": nms}, indent=2))
    print(md)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    main_guard(main)
