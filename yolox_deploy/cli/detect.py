"""``yolox-detect``: detect objects in an image, a folder, a video or a camera; write pictures and JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..io.images import VIDEO_SUFFIXES, iter_source, list_images
from ..runtimes.detector import Detector
from ..utils.files import atomic_write, write_text_atomic
from ..utils.table import format_table
from .common import add_model_args, cli_entry, detector_kwargs, main_guard, output_folder


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yolox-detect", description=__doc__)
    add_model_args(p)
    p.add_argument("--source", required=True, help="image file, folder of images, video file or camera index")
    p.add_argument("--conf", type=float, help="score threshold (obj x class), default 0.25 (with NMS in the graph: "
                   "the graph's, which this can only raise)")
    p.add_argument("--nms", type=float, help="NMS IoU threshold, default 0.45 (with NMS in the graph: the graph's)")
    p.add_argument("--class-agnostic", action="store_true", help="NMS across classes")
    p.add_argument("--max-det", type=int, default=300, help="at most this many detections per image")
    p.add_argument("--output", default="runs/detect", help="output folder (default runs/detect)")
    p.add_argument("--no-images", action="store_true", help="write only the JSON, no annotated pictures")
    return p


def _write_image(path: Path, image: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        ok, buf = cv2.imencode(path.suffix, image)
        if not ok:
            raise OSError(f"could not encode {path}")
        tmp.write_bytes(buf.tobytes())


class _VideoSink:
    """An annotated video written to a hidden temp file, renamed into place only when complete."""

    def __init__(self, path: Path, fps: float = 25.0) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.part{path.suffix}")  # the container follows the suffix
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise InputError(f"cannot write video {self.path.name} (no mp4v encoder?); use --no-images")
        self.writer.write(frame)

    def close(self, commit: bool) -> None:
        if self.writer is not None:
            self.writer.release()
            if commit:
                self.tmp.replace(self.path)
        self.tmp.unlink(missing_ok=True)


def _refuse_writing_over_source(src: str, out: Path, is_video: bool) -> None:
    """Annotated pictures (``<name>.jpg``) or video (``<stem>.mp4``) must never replace a source file."""
    source = Path(src).resolve()
    if src.isdigit() or not source.exists():
        return
    if source.is_dir():
        sources = [f.name for f in list_images(source)] if out.resolve() == source else []
    else:
        sources = [source.name] if out.resolve() == source.parent else []
    made = f"{Path(src).stem}.mp4" if is_video else None
    clash = next((n for n in sources if n == made or (made is None and Path(n).suffix == ".jpg")), None)
    if clash is not None:
        raise InputError(f"--output {out} would overwrite the source {clash} with its annotated copy; "
                         "choose another folder or pass --no-images")


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = output_folder(args.output)
    src = str(args.source)
    live = src.isdigit()  # a camera: it never ends by itself, Ctrl-C is how a user stops it
    is_video = live or Path(src).suffix.lower() in VIDEO_SUFFIXES
    stem = f"camera{src}" if live else Path(src).stem
    if not args.no_images:
        _refuse_writing_over_source(src, out, is_video)
    rows = []
    frames: list[dict] = []
    with Detector(args.weights, conf=args.conf, nms=args.nms, class_agnostic=args.class_agnostic,
                  max_det=args.max_det, **detector_kwargs(args)) as det:
        out.mkdir(parents=True, exist_ok=True)
        video = _VideoSink(out / f"{stem}.mp4") if is_video and not args.no_images else None
        ok = False
        try:
            try:
                for frame in iter_source(src):
                    t0 = time.perf_counter()
                    [dets] = det.run_batch([frame.image])
                    ms = (time.perf_counter() - t0) * 1e3
                    if is_video:
                        frames.append({"frame": frame.index, **dets.to_dict()})
                        if video is not None:
                            video.write(dets.draw(frame.image))
                    else:
                        write_text_atomic(out / f"{frame.name}.json",
                                          json.dumps({"source": frame.name, **dets.to_dict()}, indent=1))
                        if not args.no_images:
                            _write_image(out / f"{frame.name}.jpg", dets.draw(frame.image))
                    top = ", ".join(f"{n} {s:.2f}" for _, s, _, n in list(dets)[:3])
                    rows.append([frame.name, len(dets), round(ms, 1), top])
            except KeyboardInterrupt:
                if not live:
                    raise
                # a camera never ends by itself: Ctrl-C is how it is stopped, and what was seen is kept
                print("stopped (Ctrl-C); writing the frames seen so far", file=sys.stderr)
            ok = True
        finally:
            if video is not None:
                video.close(commit=ok)
        if is_video:
            write_text_atomic(out / f"{stem}.json", json.dumps({"source": src, "frames": frames}, indent=1))
    shown = rows if len(rows) <= 20 else rows[:10] + [["...", None, None, ""]] + rows[-5:]
    print(format_table(["image", "detections", "ms", "top"], shown, floatfmt=".1f"))
    print(f"{len(rows)} image(s) -> {out}/")
    return 0


if __name__ == "__main__":
    main_guard(main)
