"""Letterbox preprocessing exactly as the authors' ``preproc`` and the inverse mapping of boxes.

An image ``h x w`` is resized by ``r = min(H / h, W / w)`` to ``int(w * r) x int(h * r)`` (cv2 INTER_LINEAR),
placed top-left on an ``H x W`` canvas filled with the pad value (114). The pipeline hands the uint8 canvases
``[N, H, W, 3]`` to the backend, which turns them into the model input (float32 ``[N, 3, H, W]`` in 0-255 BGR,
or the legacy RGB / 255 / ImageNet-normalised form) where that is cheapest: inside the runtime's graph, on
the GPU, or with :func:`to_model_input` in numpy. Boxes predicted on the canvas map back to the original
image by dividing by ``r``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from ..errors import InputError
from ..meta import Preprocess
from ..utils.values import is_integer
from ._array import Array
from .boxes import clip_boxes


def letterbox_ratio(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> float:
    """The resize ratio ``min(H / h, W / w)``."""
    return min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])


def letterbox_into(image: np.ndarray, canvas: np.ndarray, pad_value: int = 114) -> float:
    """Letterbox ``image`` (uint8 ``[h, w, 3]``) onto ``canvas`` (uint8 ``[H, W, 3]``, written in place).

    The resized image is written straight into the canvas's top-left corner and only the strips to its
    right and below are filled with ``pad_value``: one pass over the canvas. Returns the ratio.
    """
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            and image.shape[0] > 0 and image.shape[1] > 0):
        what = (f"{image.dtype} {'x'.join(map(str, image.shape))}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise InputError(f"letterbox takes a BGR uint8 HxWx3 image, got {what} (yolox_deploy.io.images.ensure_bgr "
                         "converts gray, BGRA, 16-bit and float images)")
    if not (is_integer(pad_value) and 0 <= pad_value <= 255):
        raise InputError(f"the pad value is a uint8 level (0-255), got {pad_value!r}")
    input_hw = canvas.shape[:2]
    r = letterbox_ratio(image.shape[:2], input_hw)
    new_w, new_h = max(int(image.shape[1] * r), 1), max(int(image.shape[0] * r), 1)
    region = canvas[:new_h, :new_w]
    if (new_h, new_w) != image.shape[:2]:
        out = cv2.resize(image, (new_w, new_h), dst=region, interpolation=cv2.INTER_LINEAR)
        if out is not region:  # OpenCV reallocated instead of writing into the view
            region[...] = out
    else:
        region[...] = image
    canvas[new_h:] = pad_value
    canvas[:new_h, new_w:] = pad_value
    return r


def letterbox(image: np.ndarray, input_hw: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, float]:
    """``image`` (uint8 ``[h, w, 3]``) on an ``input_hw`` canvas; returns ``(canvas [H, W, 3] uint8, ratio)``."""
    canvas = np.empty((*input_hw, 3), dtype=np.uint8)
    return canvas, letterbox_into(image, canvas, pad_value)


def letterbox_batch(images: Sequence[np.ndarray], input_hw: tuple[int, int], pad_value: int = 114,
                    batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox BGR uint8 images into one canvas batch ``[N, H, W, 3]`` uint8 (the pipeline's model input).

    ``batch_size`` (>= len(images)) pads the batch with empty (``pad_value``) canvases for fixed-batch
    artefacts. Returns ``(canvases, ratios [len(images)])``. Backends turn canvases into their runtime's
    input layout and type (:func:`to_model_input` on the CPU, :func:`canvas_to_tensor` on a device), most
    of them inside the runtime itself.
    """
    n = len(images)
    total = max(batch_size or n, n)
    canvases = np.empty((total, *input_hw, 3), dtype=np.uint8)
    ratios = np.empty(n, dtype=np.float64)
    for i, image in enumerate(images):
        ratios[i] = letterbox_into(image, canvases[i], pad_value)
    canvases[n:] = pad_value
    return canvases, ratios


def to_model_input(canvases: np.ndarray, contract: Preprocess) -> np.ndarray:
    """Canvases (uint8 ``[N, H, W, 3]`` BGR) -> the model input ``[N, 3, H, W]`` float32."""
    n, h, w, _ = canvases.shape
    out = np.empty((n, 3, h, w), dtype=np.float32)
    order = (2, 1, 0) if contract.color == "rgb" else (0, 1, 2)
    for i in range(n):
        planes = cv2.split(canvases[i])
        for c, src in enumerate(order):
            out[i, c] = planes[src]
    return normalise(out, contract, lambda v: np.asarray(v, dtype=np.float32).reshape(1, 3, 1, 1))


def normalise(x: Any, contract: Preprocess, per_channel: Callable[[Any], Any]) -> Any:
    """Apply the contract's scale, then mean and std, in place to a float ``[N, 3, H, W]`` batch (numpy or
    torch); ``per_channel`` turns a 3-tuple into a ``[1, 3, 1, 1]`` array of ``x``'s kind. Returns ``x``."""
    if contract.scale != 1.0:
        x *= contract.scale
    if contract.mean is not None:
        x -= per_channel(contract.mean)
    if contract.std is not None:
        x /= per_channel(contract.std)
    return x


def canvas_to_tensor(canvases: Any, contract: Preprocess, device: Any, dtype: Any = None) -> Any:
    """Canvases (uint8 ``[N, H, W, 3]``, numpy or torch) -> the model input as a torch tensor on ``device``.

    The uint8 canvases travel to the device (a quarter of the float bytes); layout, type and the
    contract's normalisation are applied there. ``dtype``: torch float type of the result (float32).
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(canvases)) if isinstance(canvases, np.ndarray) else canvases
    x = t.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if contract.color == "rgb":
        x = x.flip(1)
    x = normalise(x.to(torch.float32), contract,
                  lambda v: torch.tensor(v, dtype=torch.float32, device=x.device).view(1, 3, 1, 1))
    return x.to(dtype or torch.float32).contiguous()


def is_canvas_batch(batch: Any) -> bool:
    """True for a canvas batch (uint8 ``[N, H, W, 3]``, numpy or torch) rather than a float model input."""
    shape = tuple(batch.shape)
    return len(shape) == 4 and shape[3] == 3 and str(batch.dtype).endswith("uint8")


def preprocess_batch(images: Sequence[np.ndarray], input_hw: tuple[int, int],
                     contract: Preprocess = Preprocess(), batch_size: int | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox a list of BGR uint8 images into one model input ``[N, 3, H, W]`` float32.

    :func:`letterbox_batch` then :func:`to_model_input`. Returns ``(batch, ratios [len(images)])``.
    """
    canvases, ratios = letterbox_batch(images, input_hw, contract.pad_value, batch_size)
    return to_model_input(canvases, contract), ratios


def scale_boxes(boxes: Array, ratio: float, image_hw: tuple[int, int] | None = None) -> Array:
    """Boxes on the letterbox canvas (xyxy ``[N, 4]``) -> original-image pixels.

    Clipped to the image when ``image_hw`` is given; the authors' COCO protocol does not clip.
    """
    scaled = boxes / ratio
    return scaled if image_hw is None else clip_boxes(scaled, image_hw[0], image_hw[1])
