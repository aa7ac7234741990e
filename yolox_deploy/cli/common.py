"""What every CLI shares: user errors as one line + exit 2, logging to stderr, common arguments."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import select
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, YoloxError
from ..meta import sidecar_path
from ..utils.files import check_creatable, check_folder_writable, is_stream
from ..utils.signals import Terminated, handling

EXIT_USER_ERROR = 2
STDOUT_NAME = "-"  # a JSON output name that means standard output


def cli_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a CLI ``main``: a :class:`YoloxError` prints ``error: <message>`` on stderr and exits 2, no traceback."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        _quiet_opencv()
        try:
            with handling((signal.SIGTERM,), _terminate), _escaping_stdout():
                return int(main(argv) or 0)
        except YoloxError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        except OSError as e:  # the file system refused (permissions, a full disk...): one line, not a traceback
            if isinstance(e, BrokenPipeError) and _stdout_gone():
                # the output's reader left early (| head): stop quietly, as a command stopped by SIGPIPE does
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
                return 128 + signal.SIGPIPE
            where = f": {e.filename}" if e.filename else ""
            print(f"error: {e.strerror or e}{where}", file=sys.stderr)
            return EXIT_USER_ERROR
        except Terminated:
            print("terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no file behind stdout (a test's capture), no poll
        return False


@contextlib.contextmanager
def _escaping_stdout() -> Iterator[None]:
    """A file name that is no text (undecodable bytes) prints escaped, as on stderr, instead of failing the
    command after its work; stdout's own setting comes back afterwards."""
    stream, errors = sys.stdout, getattr(sys.stdout, "errors", None)
    try:
        stream.reconfigure(errors="backslashreplace")
        changed = True
    except (AttributeError, ValueError):  # replaced by an object without it (a test's capture)
        changed = False
    try:
        yield
    finally:
        if changed:
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(errors=errors)


def _quiet_opencv() -> None:
    """OpenCV's and FFmpeg's own messages (a video it cannot decode, a frame size its writer refuses) come
    ahead of the one-line error that says the same to the user: the CLIs silence both (every failure they
    meet reaches the user as that line; OPENCV_LOG_LEVEL / OPENCV_FFMPEG_LOGLEVEL set by the user win)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own log (read when OpenCV first opens a video)
    import cv2

    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def description(doc: str | None) -> str:
    """A command's module docstring as its --help text (without the reST literal marks)."""
    return (doc or "").replace("``", "")


def json_output(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Check before any work that ``path`` can be written as a JSON file later; returns it as a Path
    (``-``: standard output, as ``/dev/stdout``).

    An existing file that is one of ``inputs`` (files this run reads) or lies inside one of them (a folder
    artefact, a dataset) is refused: writing the results there would destroy what was read. Any other
    existing file is replaced only when it holds JSON (an earlier result), never a model, a picture or a
    dataset's annotation file that a mistyped name points at.
    """
    if str(path) == STDOUT_NAME:
        path = "/dev/stdout"
        if not os.path.exists(path):
            raise InputError(f"{STDOUT_NAME} (standard output) needs /dev/stdout, which this system does not have; "
                             "give a file name")
    p = Path(path)
    if not str(path):
        raise InputError("an empty output file name was given")
    if is_stream(p):  # /dev/stdout, a pipe: written as they are
        return p
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a file name to write to")
    if p.is_file():
        target = p.resolve()
        for item in inputs:
            source = Path(item).resolve()
            if target == source or source in target.parents:
                raise InputError(f"{p} is {'an input' if target == source else f'inside the input {item}'} "
                                 "of this run; write the results to another file")
        held = _json_held(p)
        if held is _NOT_JSON or _is_coco_dataset(held):
            what = "is not a JSON file" if held is _NOT_JSON else "holds a COCO dataset's annotations"
            raise InputError(f"{p} exists and {what}; the results replace only an earlier JSON result, so choose "
                             "another name")
    check_creatable(p)
    return p


_NOT_JSON = object()


def _json_held(path: Path, limit: int = 256 << 20) -> Any:
    """What a file (of at most ``limit`` bytes: results are small) holds as JSON; ``_NOT_JSON`` otherwise."""
    try:
        if path.stat().st_size > limit:
            return _NOT_JSON
        return json.loads(path.read_bytes())
    except (ValueError, OSError):  # UnicodeDecodeError is a ValueError
        return _NOT_JSON


def _is_coco_dataset(value: Any) -> bool:
    """An annotation file (``instances_*.json``): a mistyped --json must not replace a dataset's labels."""
    return isinstance(value, dict) and isinstance(value.get("images"), list) and (
        "annotations" in value or "categories" in value)


def read_by(artefacts: Sequence[str | os.PathLike]) -> list[Path]:
    """What opening ``artefacts`` reads: each file or folder and the metadata sidecar next to a file."""
    return [q for a in artefacts for q in (Path(a), sidecar_path(a))]


def output_folder(path: str | os.PathLike) -> Path:
    """Check before any work that ``path`` is, or can be created as, a writable folder; returns it as a Path."""
    if not str(path):
        raise InputError("an empty output folder name was given")
    check_folder_writable(path)
    return Path(path)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Arguments that choose and open an artefact."""
    from ..runtimes import registered_backends

    p.add_argument("weights", help="checkpoint (.pth) or exported artefact (.onnx, .engine, *_openvino/, *_ncnn/); "
                                   "a variant name (yolox-s) takes the authors' COCO checkpoint, fetched once")
    p.add_argument("--model", help="YOLOX variant for checkpoints that do not say (yolox-nano ... yolox-x)")
    p.add_argument("--img-size", nargs="+", type=int, metavar="N",
                   help="input size: one number or height width (default: the artefact's / the variant's test size)")
    p.add_argument("--device", default="cpu", help="cpu (the default), cuda, cuda:N (ONNX Runtime also tensorrt[:N]; "
                                                   "OpenVINO CPU, GPU, NPU, AUTO; NCNN vulkan[:N])")
    p.add_argument("--backend", help="the runtime to open the artefact with where its files allow more than one "
                                     "(a folder holding both OpenVINO and NCNN files needs it); default: the one "
                                     "they imply "
                                     f"({', '.join(registered_backends())})")
    p.add_argument("--batch", type=int, default=None, help="images per inference call (dynamic-batch artefacts)")
    p.add_argument("--legacy", action="store_true",
                   help="legacy checkpoints (before YOLOX 0.1.1): RGB input, /255, ImageNet mean/std")
    p.add_argument("--class-names", metavar="NAMES",
                   help="labels for an artefact without them, or in place of its own: comma-separated, or a text file "
                        "with one name per line")
    p.add_argument("--decode-in-graph", action="store_true",
                   help="the output of an artefact without metadata is decoded (boxes in pixels), not raw (found "
                        "from the graph where it can be read)")


def class_names_argument(value: str) -> list[str]:
    """``--class-names``: ``"a,b,c"`` or a text file with one name per line (blank lines skipped)."""
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # a list longer than a file name may be (ENAMETOOLONG) is not a file
        is_file = False
    if is_file:
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark would stick to the first name
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the class names in {path}: {e}") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    elif "," not in value and (path.suffix.lower() in (".txt", ".names", ".csv", ".json") or os.sep in value):
        what = "a folder" if path.is_dir() else "not found"
        raise InputError(f"class names file {value}: {what}; give a text file with one name per line, or names "
                         "separated by commas")
    else:
        names = [n.strip() for n in value.split(",")]
    if not names or not all(names):
        raise InputError(f"--class-names {value!r}: give names separated by commas, or a file with one per line")
    return names


def detector_kwargs(args: argparse.Namespace) -> dict:
    """The Detector arguments from :func:`add_model_args`'s options."""
    kw = {"model": args.model, "device": args.device, "backend": args.backend, "batch_size": args.batch,
          "img_size": args.img_size}
    if args.legacy:
        kw["legacy"] = True
    if args.class_names is not None:
        kw["class_names"] = class_names_argument(args.class_names)
    if args.decode_in_graph:
        kw["decode_in_graph"] = True
    return kw


def main_guard(entry: Callable[[Sequence[str] | None], int]) -> None:
    """``if __name__ == "__main__"`` helper."""
    sys.exit(entry(None))
