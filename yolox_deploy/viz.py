"""Drawing detections on images."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .errors import InputError
from .io.images import ensure_bgr
from .utils.values import is_integer

if TYPE_CHECKING:
    from .structures import Detections

log = logging.getLogger(__name__)

MAX_THICKNESS = 32767  # OpenCV's bound on a line's thickness


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class id (golden-ratio hue walk)."""
    hue = (class_id * 0.618033988749895) % 1.0
    hsv = np.uint8([[[int(hue * 179), 200, 230]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_detections(image: np.ndarray, dets: Detections, *, thickness: int | None = None,
                    show_scores: bool = True) -> np.ndarray:
    """Return a copy of ``image`` (BGR uint8 ``[H, W, 3]``, or any array :func:`ensure_bgr` converts) with
    boxes and ``name score`` labels."""
    if thickness is not None and not (is_integer(thickness) and 1 <= thickness <= MAX_THICKNESS):
        raise InputError(f"thickness is a line width in pixels (an integer 1..{MAX_THICKNESS}) or None for one "
                         f"that suits the image, not {thickness!r}")
    out = np.array(ensure_bgr(image, "the image to draw on"), order="C", copy=True)
    h, w = out.shape[:2]
    if dets.image_size is not None and tuple(dets.image_size) != (h, w):
        raise InputError(f"the detections are of a {dets.image_size[0]}x{dets.image_size[1]} image, not of this "
                         f"{h}x{w} one; draw them on the image they were detected in")
    t = int(thickness) if thickness is not None else max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 1000)
    reach = 4 * max(h, w)  # a box reaching further is drawn as if it ended there (OpenCV takes 32-bit ints)
    for i in np.argsort(dets.scores, kind="stable"):  # lowest first: the best labels end on top
        if not np.isfinite(dets.xyxy[i]).all():
            continue  # a box with a NaN or infinite corner (an unclipped, diverged model) has nothing to draw
        (x1, y1, x2, y2) = np.clip(dets.xyxy[i], -reach, reach)
        score, cid, name = float(dets.scores[i]), int(dets.class_ids[i]), dets.names[i]
        color = class_color(cid)
        # a box clipped to the image ends at its width / height, one pixel past its last column / row
        p1, p2 = (int(x1), int(y1)), (int(x2) - (int(x2) == w), int(y2) - (int(y2) == h))
        cv2.rectangle(out, p1, p2, color, t, cv2.LINE_AA)
        label = _drawable(str(name), cid)
        label = f"{label} {score:.2f}" if show_scores else label
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(1, t - 1))
        top = p1[1] - th - base - 2 if p1[1] - th - base - 2 >= 0 else max(p1[1], 0)
        left = max(0, min(p1[0], w - tw - 2))  # inside the picture: a label at its right edge lost its score
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + base + 2), color, -1)
        cv2.putText(out, label, (left + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color(color),
                    max(1, t - 1), cv2.LINE_AA)
    return out


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with the BGR ``background`` (WCAG's contrast ratio)."""
    def linear(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    b, g, r = background
    lum = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
    return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


_WARNED_TEXT: set[str] = set()


def _drawable(name: str, class_id: int) -> str:
    """``name``, or ``class <id>`` for a name OpenCV cannot draw: its Hershey fonts before OpenCV 5 have
    ASCII only (other characters come out as one ``?`` per byte); said once per name."""
    if name.isascii() or int(cv2.__version__.split(".")[0]) >= 5:
        return name
    if name not in _WARNED_TEXT:
        _WARNED_TEXT.add(name)
        log.warning("OpenCV %s draws ASCII text only: class %d (%s) is labelled 'class %d' in pictures",
                    cv2.__version__, class_id, name, class_id)
    return f"class {class_id}"
