"""Drawing detections on images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from .errors import InputError
from .io.images import ensure_bgr
from .utils.values import is_integer

if TYPE_CHECKING:
    from .structures import Detections

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
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, color, t, cv2.LINE_AA)
        label = f"{name} {score:.2f}" if show_scores else str(name)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(1, t - 1))
        top = p1[1] - th - base - 2 if p1[1] - th - base - 2 >= 0 else p1[1]
        cv2.rectangle(out, (p1[0], top), (p1[0] + tw + 2, top + th + base + 2), color, -1)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(out, label, (p1[0] + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color,
                    max(1, t - 1), cv2.LINE_AA)
    return out
