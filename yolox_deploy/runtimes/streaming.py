"""The streaming pipeline behind ``Detector.stream``: read+letterbox, infer and post-process overlap.

    reader thread:  frames -> batches -> letterbox            -> q_pre
    worker thread:  q_pre  -> backend.infer                   -> q_out
    caller:         q_out  -> decode / NMS / scale -> yield StreamResult (in frame order)

The runtimes release the GIL while they compute, so the three stages run concurrently. Queues are bounded,
so memory stays flat however long the stream. Errors in a thread travel down the queues and are raised in
the caller; closing the generator (or its Detector) stops both threads (one inside a long inference ends it first: the close
waits a few seconds, the interpreter's exit up to two minutes), and so does the interpreter's exit for a
stream left open (a thread still inside a runtime while the interpreter shuts down can abort the process: NCNN's
does).
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import InputError
from ..io.images import Frame, check_source, iter_source
from ..structures import Detections
from ..utils.values import is_integer

if TYPE_CHECKING:
    from .detector import Detector

_DONE = object()
# how long a stream's threads get to leave their current call (one inference, one frame read) when it is closed,
# and at the interpreter's exit, where a thread still inside a runtime can abort the process
CLOSE_WAIT_SECONDS = 5.0
EXIT_WAIT_SECONDS = 120.0


class _Stream(NamedTuple):
    stop: threading.Event  # set when the stream is closed (its generator ended) or stopped
    threads: list[threading.Thread]
    owner: int  # id() of its Detector


# every stream not closed yet, or closed while a thread of it was still inside a call: stopped and waited for at
# the interpreter's exit; the running ones (stop not set) of a Detector are stopped by its close
_LIVE: dict[int, _Stream] = {}
_LIVE_LOCK = threading.Lock()


def stop_streams(detector: Detector) -> None:
    """Stop every running stream of ``detector`` and wait (a few seconds at most) for their threads to end, so
    that a video or camera is released when this returns; their generators raise at their next item."""
    with _LIVE_LOCK:
        running = [s for s in _LIVE.values() if s.owner == id(detector) and not s.stop.is_set()]
    for s in running:
        s.stop.set()
    for t in (t for s in running for t in s.threads):
        if t is not threading.current_thread():  # closed from a thread of its own stream
            t.join(timeout=CLOSE_WAIT_SECONDS)


@atexit.register
def _stop_live_pipelines() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE.values())
    for s in live:
        s.stop.set()
    for s in live:
        for t in s.threads:
            t.join(timeout=EXIT_WAIT_SECONDS)


@dataclass(frozen=True)
class StreamResult:
    """One frame of a stream and its detections."""

    frame: Frame
    detections: Detections


@dataclass
class _Failure:
    error: BaseException


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless the pipeline was stopped; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _reader(detector: Detector, source: str | os.PathLike | int, q: queue.Queue, stop: threading.Event) -> None:
    try:
        for frames in detector.iter_batches(iter_source(source)):
            if not _put(q, (frames, *detector.preprocess([f.image for f in frames])), stop):
                return
    except BaseException as e:  # noqa: BLE001 - forwarded to the caller
        _put(q, _Failure(e), stop)
    finally:
        _put(q, _DONE, stop)


def _worker(detector: Detector, q_in: queue.Queue, q_out: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            item = q_in.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _DONE or isinstance(item, _Failure):
            _put(q_out, item, stop)
            if item is _DONE:
                return
            continue
        frames, batch, ratios = item
        try:
            outputs = detector.infer(batch)
        except BaseException as e:  # noqa: BLE001
            _put(q_out, _Failure(e), stop)
            continue
        if not _put(q_out, (frames, outputs, ratios), stop):
            return


def run_pipeline(detector: Detector, source: str | os.PathLike | int, *, queue_size: int = 2) -> Iterator[StreamResult]:
    """See ``Detector.stream``: what can be refused at once is (:func:`check_source`, the queue size, a closed
    backend), then the pipeline starts when the generator is first asked."""
    if not is_integer(queue_size) or queue_size < 1:
        raise InputError(f"queue_size must be an integer >= 1 (it bounds the frames held in memory), got {queue_size!r}")
    check_source(source)
    detector.backend._check_open()
    return _pipeline(detector, source, queue_size)


def _pipeline(detector: Detector, source: str | os.PathLike | int, queue_size: int) -> Iterator[StreamResult]:
    with _LIVE_LOCK:  # streams closed while a thread was in a call, whose threads have ended since
        for key in [k for k, s in _LIVE.items() if not any(t.is_alive() for t in s.threads)]:
            del _LIVE[key]
    stop = threading.Event()
    q_pre: queue.Queue = queue.Queue(maxsize=queue_size)
    q_out: queue.Queue = queue.Queue(maxsize=queue_size)
    threads = [
        threading.Thread(target=_reader, args=(detector, source, q_pre, stop), name="yolox-stream-read", daemon=True),
        threading.Thread(target=_worker, args=(detector, q_pre, q_out, stop), name="yolox-stream-infer", daemon=True),
    ]
    for t in threads:
        t.start()
    with _LIVE_LOCK:  # after the starts: threads not started yet would look ended to another stream's pruning
        _LIVE[id(stop)] = _Stream(stop, threads, id(detector))
    try:
        while True:
            try:
                item = q_out.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():  # Detector.close() stopped the threads
                    raise InputError("the Detector of this stream was closed; open the artefact again") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            frames, outputs, ratios = item
            dets = detector.postprocess(outputs, ratios, [f.image.shape[:2] for f in frames])
            for frame, d in zip(frames, dets):
                yield StreamResult(frame, d)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=CLOSE_WAIT_SECONDS)
        if not any(t.is_alive() for t in threads):  # one still inside a slow call is waited for at exit
            with _LIVE_LOCK:
                _LIVE.pop(id(stop), None)
