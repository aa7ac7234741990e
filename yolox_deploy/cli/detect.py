"""``yolox-detect``: detect objects in an image, a folder, a video or a camera; write pictures and JSON."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import cv2

from ..io.images import VIDEO_SUFFIXES, iter_source
from ..runtimes.detector import Detector
from ..utils.files import atomic_write, write_text_atomic
from ..utils.table import format_table
from .common import add_model_args, cli_entry, detector_kwargs, main_guard


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yolox-detect", description=__doc__)
    add_model_args(p)
    p.add_argument("--source", required=True, help="image file, folder of images, video file or camera index")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (obj x class), default 0.25")
    p.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold, default 0.45")
    p.add_argument("--class-agnostic", action="store_true", help="NMS across classes")
    p.add_argument("--max-det", type=int, default=300, help="at most this many detections per image")
    p.add_argument("--output", default="runs/detect", help="output folder (default runs/detect)")
    p.add_argument("--no-images", action="store_true", help="write only the JSON, no annotated pictures")
    return p


def _write_image(path: Path, image) -> None:
    with atomic_write(path) as tmp:
        ok, buf = cv2.imencode(path.suffix, image)
        if not ok:
            raise OSError(f"could not encode {path}")
        tmp.write_bytes(buf.tobytes())


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.output)
    with Detector(args.weights, conf=args.conf, nms=args.nms, class_agnostic=args.class_agnostic,
                  max_det=args.max_det, **detector_kwargs(args)) as det:
        out.mkdir(parents=True, exist_ok=True)
        src = str(args.source)
        is_video = src.isdigit() or Path(src).suffix.lower() in VIDEO_SUFFIXES
        rows = []
        video_frames: list[dict] = []
        writer = None
        video_tmp = None
        try:
            for frame in iter_source(src):
                t0 = time.perf_counter()
                [dets] = det.run_batch([frame.image])
                ms = (time.perf_counter() - t0) * 1e3
                if is_video:
                    video_frames.append({"frame": frame.index, **dets.to_dict()})
                    if not args.no_images:
                        if writer is None:
                            stem = "camera" if src.isdigit() else Path(src).stem
                            video_tmp = out / f".{stem}.mp4.part"
                            h, w = frame.image.shape[:2]
                            writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
                        writer.write(dets.draw(frame.image))
                else:
                    write_text_atomic(out / f"{frame.name}.json",
                                      json.dumps({"source": frame.name, **dets.to_dict()}, indent=1))
                    if not args.no_images:
                        _write_image(out / f"{frame.name}.jpg", dets.draw(frame.image))
                top = ", ".join(f"{n} {s:.2f}" for _, s, _, n in list(dets)[:3])
                rows.append([frame.name, len(dets), round(ms, 1), top])
        finally:
            if writer is not None:
                writer.release()
        if is_video:
            stem = "camera" if src.isdigit() else Path(src).stem
            write_text_atomic(out / f"{stem}.json", json.dumps({"source": src, "frames": video_frames}, indent=1))
            if video_tmp is not None:
                video_tmp.replace(out / f"{stem}.mp4")
    shown = rows if len(rows) <= 20 else rows[:10] + [["...", None, None, ""]] + rows[-5:]
    print(format_table(["image", "detections", "ms", "top"], shown, floatfmt=".1f"))
    print(f"{len(rows)} image(s) -> {out}/")
    return 0


if __name__ == "__main__":
    main_guard(main)
