"""Reading images and iterating sources (an image, a folder, a video file, a camera).

Everything is returned as BGR uint8 ``[H, W, 3]``: grayscale is expanded, alpha dropped, 16-bit scaled.
Unreadable inputs raise :class:`InputError` with the file name and the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

# what a folder source lists; a GIF is read as OpenCV reads it (its first frame), as when it is the source itself
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm",
                            ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".ts", ".m2ts",
                            ".mts", ".3gp", ".flv", ".ogv", ".vob", ".mxf"})

# Reads in a row that give no frame before a video is taken to have ended (its header may announce more frames
# than its data holds; a damaged frame or two in between are skipped)
MAX_BAD_FRAMES_IN_A_ROW = 100

# Float images whose values all stay below this are taken as 0-1 (a 0-255 image that dark is black either way).
FLOAT_UNIT_LIMIT = 1.5


def ensure_bgr(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an image array and convert it to BGR uint8 ``[H, W, 3]``.

    Accepts ``[H, W]`` gray, ``[H, W, 1]``, ``[H, W, 3]`` BGR, ``[H, W, 4]`` BGRA; uint8, uint16 (scaled to 8
    bits from the smallest bit depth, 8 to 16, that holds its largest value: a 10- or 12-bit sensor frame whose
    brightest pixel uses its top bit keeps its brightness, an 8-bit image cast is taken as it is; the depth is
    judged per image, so a dark frame is brightened by a power of two: give 8-bit frames where the exposure
    must be kept) or float in [0, 1]
    (values below ``FLOAT_UNIT_LIMIT``: the overshoot of a cubic or Lanczos resize stays in range) or 0-255,
    rounded and clipped. Raises :class:`InputError` for empty or otherwise unusable arrays.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name}: expected a numpy array (BGR HxWx3 uint8), got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise InputError(f"{name}: expected an image of shape HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{name}: image is empty ({image.shape[0]}x{image.shape[1]} pixels)")
    if not image.dtype.isnative:  # big-endian data (FITS, raw sensor dumps): a uint16 / float image all the same
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype == np.uint16:
        image = (image >> max(int(image.max()).bit_length() - 8, 0)).astype(np.uint8)
    elif image.dtype in (np.float16, np.float32, np.float64):
        if not np.isfinite(image).all():
            raise InputError(f"{name}: float image contains NaN or inf")
        image = image.astype(np.float32)
        image = np.rint(np.clip(image * 255.0 if image.max() < FLOAT_UNIT_LIMIT else image, 0, 255)).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"{name}: unsupported pixel type {image.dtype} (use uint8 BGR)")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def is_pil_image(item: object) -> bool:
    """Whether ``item`` is a PIL (Pillow) image (plugins' image classes included), without importing Pillow:
    one exists only once Pillow is loaded."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(item, module.Image)


def pil_to_bgr(image: Any, name: str = "image") -> np.ndarray:
    """A PIL image as BGR uint8 ``[H, W, 3]``: 8-bit modes (RGB order; gray, palette and alpha) converted by
    Pillow; 16-bit, 32-bit integer and float gray modes scaled as :func:`ensure_bgr` scales their arrays
    (Pillow's own conversion clips them). An EXIF orientation is not applied: boxes come in the frame of the
    pixels given, the one the caller draws on (``PIL.ImageOps.exif_transpose`` first turns the image as a file
    read by path is turned)."""
    if image.width == 0 or image.height == 0:
        raise InputError(f"{name}: image is empty ({image.width}x{image.height} pixels)")
    if image.mode.startswith("I") or image.mode == "F":
        gray = np.asarray(image)
        if gray.dtype.kind in "iu":
            gray = np.clip(gray, 0, 65535).astype(np.uint16)
        return ensure_bgr(gray, name=name)
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def check_image_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it names a readable image file; :class:`InputError` for an address, a missing
    file, a folder, a pipe or an empty file (what can be known without reading it)."""
    if stream_url(os.fspath(path)) is not None:  # Path() would fold the address into a missing file's name
        raise InputError(f"{shown_url(os.fspath(path))}: images are read from files, not fetched from addresses; "
                         "download it and give its path")
    p = Path(path)
    if not p.exists():
        gone = f" (a link to {os.readlink(p)}, which does not exist)" if p.is_symlink() else ""
        raise InputError(f"image not found: {p}{gone}")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an image (Detector.stream() and yolox-detect --source read folders)")
    _refuse_pipe(p)
    if p.stat().st_size == 0:
        raise InputError(f"{p} is empty (0 bytes)")
    return p


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as BGR uint8 ``[H, W, 3]``; raises :class:`InputError` when it cannot."""
    p = check_image_path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:  # permissions, an unreadable medium
        raise InputError(f"cannot read {p}: {e.strerror or e}") from None
    # as cv2.imread (the authors' demo and eval): 8-bit BGR, gray expanded, alpha dropped, EXIF orientation applied
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:  # a header OpenCV refuses, e.g. more pixels than CV_IO_MAX_IMAGE_PIXELS
        reason = "too large to decode" if "MAX_IMAGE_PIXELS" in str(e) else "its header is invalid"
        raise InputError(f"{p} is not a readable image ({reason})") from None
    if image is None:
        if p.suffix.lower() in VIDEO_SUFFIXES:
            raise InputError(f"{p} is a video, not an image: Detector.stream() and yolox-detect --source read its frames")
        raise InputError(f"{p} is not a readable image (corrupt or unsupported format)")
    return ensure_bgr(image, name=str(p))


def _scaled_copy(hw: tuple[int, int], annotated_hw: tuple[int, int]) -> bool:
    """Whether ``hw`` is the annotated picture scaled (both sides by one factor, to a resize's rounding, and not
    by one pixel's worth: an entry off by a pixel is no resize)."""
    if min(annotated_hw) <= 0:  # an entry of no size is no resize of the picture
        return False
    sy, sx = hw[0] / annotated_hw[0], hw[1] / annotated_hw[1]
    rounding = 1.5 / min(hw)
    return abs(sy - sx) <= rounding and abs(sx - 1) > rounding


def check_annotated_size(image: np.ndarray, path: str | os.PathLike, annotated_hw: tuple[int, int]) -> None:
    """Refuse an image read at another size than its annotation gives (its boxes would not fit it), saying why:
    an EXIF orientation that turns it as it is read (the file's own pixels have the annotated size), swapped
    width/height entries, a copy resized after annotation (its boxes are still for the annotated size, so fixing
    the entry alone would score wrong boxes), or another file or a wrong entry."""
    if image.shape[:2] == tuple(annotated_hw):
        return
    raw = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if raw is not None and raw.shape[:2] == tuple(annotated_hw):
        advice = ("its EXIF orientation turns it on reading: check which way its boxes were drawn, and store the "
                  "image upright (without the tag) to match them")
    elif raw is not None and raw.shape[:2] == tuple(annotated_hw)[::-1]:
        advice = "the entry's width and height are swapped: fix its width/height entry"
    elif raw is not None and _scaled_copy(raw.shape[:2], annotated_hw):
        advice = (f"it was resized after it was annotated (by {raw.shape[1] / annotated_hw[1]:.3g}): its boxes are "
                  "for the annotated size, so use the original image (or scale its boxes and entry together)")
    else:
        advice = "the file or its width/height entry is not the one annotated"
    raise InputError(f"{path} is {image.shape[1]}x{image.shape[0]} pixels but the annotation file says "
                     f"{annotated_hw[1]}x{annotated_hw[0]}; {advice}")


@dataclass(frozen=True)
class Frame:
    """One item of a source: a name (file stem, or the file name where stems clash: :func:`frame_names`;
    ``video_000012`` for frames), the image, its index, for video frames the video's frame rate (when the
    container or camera reports one), and for image files their path."""

    name: str
    image: np.ndarray
    index: int
    fps: float | None = None
    path: Path | None = None


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; hidden files (``.name``, such as the ``._name``
    resource files macOS leaves on shared drives) are not images of the set. A link named as an image whose
    target is gone is listed (reading it says so; it is not left out without a word). An unreadable folder
    (no permission, not a folder) is an :class:`InputError`."""
    p = Path(folder)
    try:
        return sorted(f for f in p.iterdir()
                      if (f.is_file() or (f.is_symlink() and not f.exists())) and not f.name.startswith(".")
                      and f.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as e:
        raise InputError(f"cannot read folder {p}: {e.strerror or e}") from None


def frame_names(files: list[Path]) -> list[str]:
    """One distinct name per file of a folder: its stem, or its full name when another file shares the stem
    (dog.jpg and dog.png) or is named like it (a.jpg.png's stem is the name of a.jpg)."""
    stems = Counter(f.stem for f in files)
    names = {f.name for f in files}
    return [f.stem if stems[f.stem] == 1 and f.stem not in names else f.name for f in files]


def _iter_video(capture: cv2.VideoCapture, stem: str, label: str) -> Iterator[Frame]:
    """The frames of an opened video, named ``<stem>_<index>``; ``label`` names the video in messages."""
    try:
        rate = capture.get(cv2.CAP_PROP_FPS)
        fps = float(rate) if 0 < rate < 1000 else None  # 0 or NaN when unknown
        announced = capture.get(cv2.CAP_PROP_FRAME_COUNT)  # 0 or -1 for cameras and streams
        i = read = skipped = failed = 0  # failed: reads in a row that gave no frame
        first_skipped = None
        while True:
            ok, frame = capture.read()
            if not ok:
                # a damaged frame of a file: the reader moves on past it; the end of the data (a header that
                # announces more frames than there are) gives nothing but failures
                if i + 1 < announced and failed < MAX_BAD_FRAMES_IN_A_ROW:
                    failed += 1
                    i += 1
                    continue
                break
            if failed:  # a frame came after them: damaged ones, not the end of a truncated file
                skipped += failed
                first_skipped = i - failed if first_skipped is None else first_skipped
                failed = 0
            yield Frame(f"{stem}_{i:06d}", ensure_bgr(frame, f"{label} frame {i}"), i, fps)
            i += 1
            read += 1
        if read == 0:
            raise InputError(f"no frame could be read from {label} (empty, unsupported or damaged video)")
        if skipped:
            log.warning("%s: %d frame(s) could not be decoded and were skipped (first: frame %d)", label,
                        skipped, first_skipped)
        if 0 < read < announced:
            log.warning("%s: read %d of the %d frames its header announces (a truncated or damaged file?)",
                        label, read, int(announced))
    finally:
        capture.release()


def _refuse_pipe(p: Path) -> None:
    """A named pipe or socket is refused: reading one waits for a writer (OpenCV's reader in native code,
    where Ctrl-C cannot reach it). Devices stay allowed (``/dev/video0`` is a camera)."""
    with contextlib.suppress(OSError):
        mode = p.stat().st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            raise InputError(f"{p} is a {'named pipe' if stat.S_ISFIFO(mode) else 'socket'}, not an image or "
                             "video file")


def open_video(source: str | int) -> cv2.VideoCapture:
    """Open a video file, camera index or stream address; raises :class:`InputError` if it cannot be opened."""
    if isinstance(source, int):
        camera_index(source)  # refuses a negative index, on which OpenCV may crash the process
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        if isinstance(source, int):
            what = f"camera {source}"
        elif stream_url(source) is not None:
            what = (f"stream {shown_url(source)} (unreachable, refused, or a protocol this OpenCV build does not "
                    "read)")
        else:
            what = f"video {source} (a damaged or truncated file, or a format this OpenCV build does not read)"
        raise InputError(f"cannot open {what}")
    return capture


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def stream_url(source: str | os.PathLike | int) -> str | None:
    """The address a source names when it is one (``rtsp://...``, ``http://...``: an IP camera or a video on a
    server, read through OpenCV's FFmpeg), else None."""
    return source if isinstance(source, str) and _URL.match(source) else None


_SECRET_QUERY = re.compile(r"(?i)([?&;](?:[^=&;#]*(?:pass|pwd|token|key|secret|auth|sig)[^=&;#]*)=)[^&;#]*")


def shown_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***`` (for messages and records): the password of its
    ``user:password@`` part (up to the last ``@`` before the path, as FFmpeg reads it) and the values of query
    fields named like one (``pwd=``, ``password=``, ``token=``, ``key=``...)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    user, at, host = authority.rpartition("@")
    if at and ":" in user:
        authority = f"{user.split(':', 1)[0]}:***@{host}"
    return _SECRET_QUERY.sub(r"\1***", f"{scheme}://{authority}{slash}{tail}")


def _without_query(url: str) -> str:
    """An address (or its path) up to its query (``?``) or fragment (``#``)."""
    return re.split(r"[?#]", url, maxsplit=1)[0]


def stream_stem(url: str) -> str:
    """A file stem for a stream's results: its host and path (no credentials, no query), other characters as
    ``_``."""
    host, _, path = url.split("://", 1)[1].partition("/")
    rest = f"{host.rpartition('@')[2]}/{_without_query(path)}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rest).strip("_.")[:100] or "stream"


def camera_index(source: str | os.PathLike | int) -> int | None:
    """The camera a source names (an int, or a digit string that is not an existing file or folder), or None."""
    if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        plain = isinstance(source, (bool, float, type(None)))
        what = repr(source) if plain else f"an object of type {type(source).__name__}"
        raise InputError(f"a source is an image, folder or video path or a camera index, not {what}"
                         f"{' (the Detector itself takes arrays)' if isinstance(source, (np.ndarray, list)) else ''}")
    if isinstance(source, str) and not source.strip():
        raise InputError("the source is empty: give an image, folder or video path or a camera index")
    if isinstance(source, int):
        if source < 0:  # OpenCV may crash the process on a negative index
            raise InputError(f"a camera index is >= 0, got {source}")
        return source
    if isinstance(source, str) and source.isdigit() and not Path(source).exists():
        return int(source)
    return None


def is_video(source: str | os.PathLike | int) -> bool:
    """Whether :func:`iter_source` reads ``source`` as a video: a camera, a stream address, or a file with a
    video suffix (a folder named like a video is a folder of images)."""
    if camera_index(source) is not None or stream_url(source) is not None:
        return True
    p = Path(source)
    return not p.is_dir() and p.suffix.lower() in VIDEO_SUFFIXES


def iter_source(source: str | os.PathLike | int) -> Iterator[Frame]:
    """Frames of an image file, a folder of images, a video file, a camera (:func:`camera_index`) or a stream
    address (:func:`stream_url`). A folder's files are checked (:func:`check_image_path`) before its first frame."""
    camera = check_source(source)
    if camera is not None:
        yield from _iter_video(open_video(camera), f"camera{camera}", f"camera {camera}")
        return
    url = stream_url(source)
    if url is not None:
        yield from _iter_video(open_video(url), stream_stem(url), f"stream {shown_url(url)}")
        return
    p = Path(source)
    if p.is_dir():
        files = list_images(p)
        if not files:
            raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {p}")
        for f in files:  # a dead link or an empty file is named before the first frame, not after the others ran
            check_image_path(f)
        for i, (f, name) in enumerate(zip(files, frame_names(files))):
            yield Frame(name, read_image(f), i, path=f)
    elif is_video(p):
        yield from _iter_video(open_video(str(p)), p.stem, str(p))
    else:
        try:
            image = read_image(p)
        except InputError:
            if p.suffix.lower() not in IMAGE_SUFFIXES and _reads_as_video(p):
                raise InputError(f"{p} is no image but reads as a video: give it a video suffix (.mp4, .avi, ...) "
                                 "to have its frames read") from None
            raise
        yield Frame(p.stem, image, 0, path=p)


def check_source(source: str | os.PathLike | int) -> int | None:
    """The camera index ``source`` names, or None for a stream address or a path, which must exist and not be
    a pipe or socket: what is refused about a source before any frame is read."""
    camera = camera_index(source)
    url = stream_url(source)
    if url is not None and Path(_without_query(url)).suffix.lower() in IMAGE_SUFFIXES:
        check_image_path(url)  # an image on a server: refused as the Detector refuses it
    if camera is None and url is None:
        p = Path(source)
        if not p.exists():
            raise InputError(f"source not found: {p}")
        _refuse_pipe(p)
    return camera


def _reads_as_video(path: Path) -> bool:
    """Whether OpenCV opens ``path`` as a video and reads a frame of it."""
    capture = cv2.VideoCapture(str(path))
    try:
        return bool(capture.isOpened() and capture.read()[0])
    finally:
        capture.release()
