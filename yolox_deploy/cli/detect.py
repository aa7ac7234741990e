"""``yolox-detect``: detect objects in an image, a folder, a video or a camera; write pictures and JSON."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..io.images import (
    Frame,
    camera_index,
    frame_names,
    is_video,
    iter_source,
    list_images,
    shown_url,
    stream_stem,
    stream_url,
)
from ..runtimes.detector import DEFAULT_MAX_DET, Detector
from ..utils.files import (
    REPLACEABLE_NAME_MAX,
    STALE_STAGING_SECONDS,
    json_text,
    move_into,
    remove_stale_parts,
    staging_folder,
    too_long_to_replace,
    write_text_atomic,
)
from ..utils.signals import StopRequest, deferred, stop_between_steps
from ..utils.table import format_table
from ..utils.text import listed
from .common import add_model_args, cli_entry, description, detector_kwargs, main_guard, output_folder

DEFAULT_FPS = 25.0  # for videos whose container does not say
JPEG_MAX_SIDE = 65500  # the longest side a JPEG can hold (libjpeg's JPEG_MAX_DIMENSION)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yolox-detect", description=description(__doc__))
    add_model_args(p)
    p.add_argument("--source", required=True, help="image file, folder of images, video file, camera index or "
                   "stream address (rtsp://, http://...)")
    p.add_argument("--conf", type=float, help="score threshold (obj x class), default 0.25 (with NMS in the graph: "
                   "the graph's, which this can only raise)")
    p.add_argument("--nms", type=float, help="NMS IoU threshold, default 0.45 (with NMS in the graph: the graph's)")
    p.add_argument("--class-agnostic", action="store_true", help="NMS across classes")
    p.add_argument("--max-det", type=int, default=DEFAULT_MAX_DET,
                   help=f"at most this many detections per image (default {DEFAULT_MAX_DET})")
    p.add_argument("--output", default="runs/detect",
                   help="output folder (default runs/detect): <name>.jpg + <name>.json per image, <stem>.mp4 + "
                   "<stem>.json for a video; replaces only its own earlier results")
    p.add_argument("--no-images", action="store_true", help="write only the JSON, no annotated pictures")
    return p


def _write_image(path: Path, image: np.ndarray) -> None:
    """Write the annotated picture as ``path`` (JPEG); one with a side beyond JPEG's limit is scaled down to
    fit (the picture is for looking at; the JSON beside it holds the exact boxes)."""
    h, w = image.shape[:2]
    if max(h, w) > JPEG_MAX_SIDE:
        s = JPEG_MAX_SIDE / max(h, w)
        image = cv2.resize(image, (max(1, min(JPEG_MAX_SIDE, round(w * s))), max(1, min(JPEG_MAX_SIDE, round(h * s)))),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"could not encode {path.name}")
    path.write_bytes(buf.tobytes())


class _VideoSink:
    """The annotated video, written into the run's staging folder; complete only when every frame was written
    and the file reads back whole (OpenCV's writer reports no error, e.g. on a full disk). OpenCV's mp4v
    writer cuts an odd width or height down to an even one, so such frames get one black column or row at
    the right or bottom instead: the picture keeps every pixel where the detections put it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, frame: Frame, annotated: np.ndarray) -> None:
        h, w = annotated.shape[:2]
        if h % 2 or w % 2:
            annotated = cv2.copyMakeBorder(annotated, 0, h % 2, 0, w % 2, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        if self.writer is None:
            h, w = annotated.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                          frame.fps or DEFAULT_FPS, (w, h))
            if not self.writer.isOpened():
                raise InputError(f"cannot write the annotated video {self.path.name}: OpenCV's mp4v writer refused "
                                 f"{w}x{h} frames; use --no-images")
        self.writer.write(annotated)
        self.frames += 1

    def finish(self) -> None:
        """Close the file and check that it holds every frame."""
        if self.writer is None:
            return
        self.writer.release()
        check = cv2.VideoCapture(str(self.path))
        written = int(check.get(cv2.CAP_PROP_FRAME_COUNT)) if check.isOpened() else 0
        check.release()
        if written != self.frames:
            guess = "; is the disk full?" if written < self.frames else ""
            raise OSError(f"the annotated video {self.path.name} could not be written whole ({written} of "
                          f"{self.frames} frames readable{guess})")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class _Rows:
    """The summary table's rows: all of a short run, the first and last of a long one (a camera's run has no
    end, so rows are not kept for every frame)."""

    HEAD, TAIL, ALL = 10, 5, 20

    def __init__(self) -> None:
        self.count = 0
        self.head: list[list] = []
        self.rest: collections.deque[list] = collections.deque(maxlen=self.ALL - self.HEAD)

    def add(self, row: list) -> None:
        self.count += 1
        (self.head if len(self.head) < self.HEAD else self.rest).append(row)

    def shown(self) -> list[list]:
        if self.count <= self.ALL:
            return self.head + list(self.rest)
        return self.head + [["...", None, None, ""]] + list(self.rest)[-self.TAIL:]


class _FramesJson:
    """A video's ``<stem>.json`` (``{"source": ..., "frames": [...]}``), written a frame at a time into the run's
    staging folder: a camera's or stream's run holds no growing list of its frames in memory."""

    def __init__(self, path: Path, source: str) -> None:
        self.file = open(path, "w", encoding="utf-8")  # closed by finish / close
        self.file.write(f'{{"source": {json.dumps(source)}, "frames": [')
        self.first = True

    def add(self, entry: dict) -> None:
        self.file.write(("\n" if self.first else ",\n") + json_text(entry, indent=None))
        self.first = False

    def finish(self) -> None:
        self.file.write("\n]}\n")
        self.file.close()

    def close(self) -> None:
        self.file.close()


RECORD = ".yolox-detect-results"  # in an output folder: the names of the results yolox-detect wrote there (JSON;
# not named *.json, which a glob over the results would take for one)


def _refuse_writing_over_source(src: str, out: Path) -> None:
    """Results (``<name>.jpg``, ``<name>.json``, ``<stem>.mp4``) are never written into the source's own
    folder, nor into the folder an image of a source folder links to: there they could replace the pictures."""
    source = Path(src)
    if camera_index(src) is not None or not source.exists():
        return
    # a file's folder: where it is named, and where it is when it is a link
    own = {source.resolve()} if source.is_dir() else {source.absolute().parent.resolve(), source.resolve().parent}
    target = out.resolve()
    linked = target not in own and source.is_dir() and target in {f.resolve().parent for f in list_images(source)}
    if target in own or linked:
        raise InputError(f"--output {out} is the folder of the source {src}{' (through its links)' if linked else ''}"
                         "; results written there could replace the pictures in it: choose another folder")


def _result_names(src: str, stem: str, no_images: bool) -> list[str]:
    """The files a run on ``src`` writes into the output folder (``stem``: a video's or camera's results)."""
    if is_video(src):
        return [f"{stem}.json"] + ([] if no_images else [f"{stem}.mp4"])
    p = Path(src)
    stems = frame_names(list_images(p)) if p.is_dir() else [p.stem]
    return [f"{n}.{ext}" for n in stems for ext in ("json", *(() if no_images else ("jpg",)))]


def _earlier_results(out: Path, names: list[str]) -> set[str]:
    """The results of earlier runs in ``out``: the names yolox-detect recorded there that still exist, and
    among ``names`` a ``<name>.json`` that reads as one of its results (a folder written before it kept a
    record) with the picture or video of that name."""
    try:
        recorded = json.loads((out / RECORD).read_text(encoding="utf-8"))["results"]
        found = {n for n in recorded if isinstance(n, str) and os.path.lexists(out / n)}
    except (OSError, ValueError, KeyError, TypeError):
        found = set()
    for name in names:
        if name.endswith(".json") and name not in found and _reads_as_result(out / name):
            stem = name[:-len(".json")]
            found |= {n for n in names if n.rsplit(".", 1)[0] == stem}
    return found


def _reads_as_result(path: Path) -> bool:
    """Whether ``path`` holds the JSON yolox-detect writes for an image or a video."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "source" in data and ("detections" in data or "frames" in data)


def _check_outputs(out: Path, names: list[str]) -> set[str]:
    """Refuse, before any work, results that could not be written or would replace what the user has: a name
    too long for a file, a folder of that name, or a file yolox-detect did not write. Returns the earlier
    results (which a run replaces)."""
    long = [n for n in names if too_long_to_replace(n)]
    if long:
        raise InputError(f"the result {long[0]!r} would be a file name longer than {REPLACEABLE_NAME_MAX} bytes; rename the "
                         "source file")
    earlier = _earlier_results(out, names)
    taken = [n for n in names if os.path.lexists(out / n) and ((out / n).is_dir() or n not in earlier)]
    if taken:
        raise InputError(f"--output {out} already holds {listed(taken)}, which yolox-detect did not write there; it "
                         "replaces only its own earlier results: choose another folder, or move them")
    return earlier


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_det < 1:  # (the Detector's own message speaks of None, which the command line cannot give)
        raise InputError(f"--max-det must be an integer >= 1, got {args.max_det}")
    out = output_folder(args.output)
    src = str(args.source)
    camera, url = camera_index(src), stream_url(src)
    live = camera is not None or url is not None  # a camera or stream: Ctrl-C is how a user stops it
    video_source = is_video(src)
    stem = f"camera{camera}" if camera is not None else stream_stem(url) if url is not None else Path(src).stem
    _refuse_writing_over_source(src, out)
    earlier = _check_outputs(out, _result_names(src, stem, args.no_images))
    rows = _Rows()
    remove_stale_parts(out, ".detect.*.part", STALE_STAGING_SECONDS)  # a killed run's, untouched for a day
    with (Detector(args.weights, conf=args.conf, nms=args.nms, class_agnostic=args.class_agnostic,
                   max_det=args.max_det, **detector_kwargs(args)) as det,
          staging_folder(out, prefix=".detect.") as stage):  # results move into place only when the run ends well
        video = _VideoSink(stage / f"{stem}.mp4") if video_source and not args.no_images else None
        frames = _FramesJson(stage / f"{stem}.json", shown_url(src)) if video_source else None
        # a camera never ends by itself: Ctrl-C (or SIGTERM: timeout, systemd, docker stop) is how it is stopped,
        # between two frames (a frame's JSON entry, picture and row are written together), and what was seen is
        # kept; a second one abandons the run
        stopping = (stop_between_steps((signal.SIGINT, signal.SIGTERM),
                                       "stopping after this frame (Ctrl-C again to abandon the run)")
                    if live else contextlib.nullcontext(StopRequest()))
        try:
            with stopping as stop:
                for chunk in det.iter_batches(iter_source(src if camera is None else camera)):
                    t0 = time.perf_counter()
                    results = det.run_batch([frame.image for frame in chunk])
                    ms = (time.perf_counter() - t0) * 1e3 / len(chunk)
                    for frame, dets in zip(chunk, results):
                        if frames is not None:
                            frames.add({"frame": frame.index, **dets.to_dict()})
                            if video is not None:
                                video.write(frame, dets.draw(frame.image))
                        else:
                            source = str(frame.path) if frame.path is not None else frame.name
                            (stage / f"{frame.name}.json").write_text(
                                json_text({"source": source, **dets.to_dict()}, indent=1))
                            if not args.no_images:
                                _write_image(stage / f"{frame.name}.jpg", dets.draw(frame.image))
                        top = ", ".join(f"{n} {s:.2f}" for _, s, _, n in list(dets)[:3])
                        rows.add([frame.name, len(dets), round(ms, 1), top])
                    if stop.requested:
                        print("stopped; writing the frames seen so far", file=sys.stderr)
                        break
            if video is not None:
                video.finish()
            if frames is not None:
                frames.finish()
        finally:
            for sink in (video, frames):
                if sink is not None:
                    sink.close()
        with deferred():  # a Ctrl-C now lets the results finish moving and be recorded as this run's
            written = {p.name for p in move_into(sorted(stage.iterdir()), out)}
            # a picture or video of an earlier run beside a new JSON (--no-images) would not show its detections
            stale = {f"{n[:-len('.json')]}.{ext}" for n in written if n.endswith(".json") for ext in ("jpg", "mp4")}
            stale = (stale & earlier) - written
            for name in stale:
                (out / name).unlink(missing_ok=True)
            write_text_atomic(out / RECORD, json.dumps({"results": sorted((earlier - stale) | written)}))
    print(format_table(["image", "detections", "ms", "top"], rows.shown(), floatfmt=".1f"))
    print(f"{rows.count} {'frame' if video_source else 'image'}(s) -> {out}/")
    if stop.signum == signal.SIGTERM:  # the frames are kept; the exit status still says how the run ended
        stop.stop()
    return 0


if __name__ == "__main__":
    main_guard(main)
