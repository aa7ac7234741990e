"""Pipeline overhead: the full ``Detector`` call against the bare backend call, in one run, on the same images.

    python benchmarks/overhead.py [--artefact X.onnx] [--images DIR] [--rounds 5] [--output benchmarks/results]

Default artefact: YOLOX-Nano 416 exported to ONNX from the shared checkpoint (decode in graph), run with the
onnxruntime backend at batch 1, plus the authors' released ONNX (raw output, decoded by the pipeline).
Rounds alternate a bare pass and a full pass over all images so drift hits both equally. A third pass times
the stages (letterbox / infer / decode+NMS+scale) separately. Also times batched NMS alone on 8400 candidates
x 80 classes. Writes ``overhead.md`` and ``overhead.json`` with the host they ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1e3


def measure(artefact: Path, images: list[np.ndarray], rounds: int, warmup: int) -> dict:
    from yolox_deploy import Detector
    from yolox_deploy.bench.stats import LatencyStats

    det = Detector(artefact, backend="onnxruntime")
    batches = [det.preprocess([im])[0] for im in images]
    for im in images[:warmup]:
        det.run_batch([im])
    bare, full = [], []
    for _ in range(rounds):
        bare += [timed(det.infer, b)[1] for b in batches]
        full += [timed(det.run_batch, [im])[1] for im in images]
    pre, infer, post = [], [], []
    for im in images:
        (batch, ratios), a = timed(det.preprocess, [im])
        outputs, b = timed(det.infer, batch)
        _, c = timed(det.postprocess, outputs, ratios, [im.shape[:2]])
        pre.append(a), infer.append(b), post.append(c)
    s_bare, s_full = LatencyStats.from_samples(bare), LatencyStats.from_samples(full)
    return {
        "artefact": str(artefact), "decode_in_graph": det.meta.decode_in_graph, "images": len(images),
        "rounds": rounds, "bare": s_bare.to_dict(), "full": s_full.to_dict(),
        "ratio_mean": s_full.mean / s_bare.mean, "ratio_p50": s_full.p50 / s_bare.p50,
        "stages_ms": {"letterbox": float(np.mean(pre)), "infer": float(np.mean(infer)),
                      "decode_nms_scale": float(np.mean(post))},
    }


def nms_microbench(repeats: int = 200) -> dict:
    """Batched class-aware NMS on 8400 candidates with 80 classes (a 640x640 head), and the full post step."""
    import torch

    from yolox_deploy.ops.decode import decode, num_anchors
    from yolox_deploy.ops.nms import batched_nms
    from yolox_deploy.ops.postprocess import postprocess

    rng = np.random.default_rng(0)
    a = num_anchors((640, 640))
    assert a == 8400
    xy = rng.uniform(0, 640, (a, 2))
    wh = rng.uniform(8, 200, (a, 2))
    boxes = torch.from_numpy(np.concatenate([xy, xy + wh], 1).astype(np.float32))
    scores = torch.from_numpy(rng.random(a).astype(np.float32))
    classes = torch.from_numpy(rng.integers(0, 80, a))
    raw = np.concatenate([rng.normal(0, 0.5, (1, a, 4)), rng.random((1, a, 1)) ** 4, rng.random((1, a, 80)) ** 4],
                         axis=2).astype(np.float32)
    pred = decode(raw, (640, 640))
    res = {}
    for name, fn in {
        "batched_nms_8400x80": lambda: batched_nms(boxes, scores, classes, 0.65),
        "postprocess_8400x85_conf0.25": lambda: postprocess(pred, 0.25, 0.45),
        "postprocess_8400x85_conf0.01": lambda: postprocess(pred, 0.01, 0.65),
    }.items():
        for _ in range(10):
            fn()
        t = [timed(fn)[1] for _ in range(repeats)]
        res[name] = {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))}
    res["kept_8400x80"] = int(len(batched_nms(boxes, scores, classes, 0.65)))
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artefact", action="append", help="ONNX file(s) to measure (default: see above)")
    p.add_argument("--images", default=str(ASSETS / "coco-tiny" / "val2017"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()

    from yolox_deploy.bench.host import collect_host_info
    from yolox_deploy.export import export
    from yolox_deploy.io.images import list_images, read_image
    from yolox_deploy.utils.files import write_text_atomic
    from yolox_deploy.utils.table import format_table

    images = [read_image(f) for f in list_images(args.images)]
    artefacts = [Path(a) for a in args.artefact or []]
    tmp = tempfile.TemporaryDirectory()
    if not artefacts:
        ours = Path(tmp.name) / "yolox_nano.onnx"
        export(ASSETS / "weights" / "yolox_nano.pth", "onnx", ours, model="yolox-nano")
        artefacts = [ours, ASSETS / "weights" / "yolox_nano.onnx"]
    rows = [measure(a, images, args.rounds, args.warmup) for a in artefacts]
    nms = nms_microbench()
    host = collect_host_info()

    table = format_table(
        ["artefact", "decode in graph", "bare ms (mean)", "full ms (mean)", "full/bare", "full/bare (p50)",
         "letterbox ms", "infer ms", "decode+NMS+scale ms"],
        [[Path(r["artefact"]).name, r["decode_in_graph"], r["bare"]["mean"], r["full"]["mean"], r["ratio_mean"],
          r["ratio_p50"], *r["stages_ms"].values()] for r in rows], floatfmt=".3f", markdown=True)
    nms_table = format_table(["operation", "median ms", "p90 ms"],
                             [[k, v["median_ms"], v["p90_ms"]] for k, v in nms.items() if isinstance(v, dict)],
                             floatfmt=".3f", markdown=True)
    md = (f"# Pipeline overhead (onnxruntime, batch 1, {len(images)} images x {args.rounds} rounds)\n\n"
          f"Host: {host.summary()}\n\n{table}\n\n## Post-processing alone\n\n{nms_table}\n")
    out = Path(args.output)
    write_text_atomic(out / "overhead.md", md)
    write_text_atomic(out / "overhead.json", json.dumps({"host": host.to_dict(), "rows": rows, "nms": nms}, indent=2))
    print(md)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
