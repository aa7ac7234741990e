"""PyTorch backend: a checkpoint (``.pth``) or an in-memory :class:`~yolox_deploy.nn.yolox.YOLOX`.

Outputs the raw head (decode runs in the shared pipeline, on the same device). CPU or CUDA; FP16 on CUDA
with ``half=True``. Options: ``model`` (variant name, else read from the checkpoint), ``img_size``,
``num_classes``, ``class_names``, ``half``, ``legacy`` (RGB/255/ImageNet input contract), ``fuse`` (default
True: run :func:`~yolox_deploy.nn.deploy.deploy_model`, the form every export traces), ``threads`` (PyTorch's
intra-op threads, ``torch.set_num_threads``: a setting of the whole process; 0 or absent leaves it). In a
process forked after the backend ran on several CPU threads, PyTorch runs on one (:mod:`.openmp`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch

from ..errors import BackendUnavailable, InputError
from ..nn.checkpoint import CHECKPOINT_SUFFIXES, load_model
from ..nn.deploy import deploy_model, model_meta
from ..nn.yolox import YOLOX
from ..ops.letterbox import canvas_to_tensor
from ..utils.sizes import parse_img_size
from .base import Backend, register_backend
from .openmp import ForkedPool

log = logging.getLogger(__name__)
# in a child forked after the backend ran on several threads, PyTorch runs on one: its Detectors (those copied
# from the parent too) and the caller's own PyTorch code would hang on more
POOL = ForkedPool("PyTorch", in_child=lambda: torch.set_num_threads(1))


def resolve_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"0"`` -> a torch device; clear error when CUDA is missing."""
    d = str(device).strip().lower()
    if d.isdigit():
        d = f"cuda:{d}"
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    elif d == "gpu" or d.startswith("gpu:"):
        d = "cuda" + d[3:]
    try:
        dev = torch.device(d)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise InputError(f"unknown device {device!r} for the torch backend; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r} asked for, but this PyTorch has no CUDA GPU available")
    return dev


@register_backend("torch", suffixes=CHECKPOINT_SUFFIXES, devices=("cpu", "cuda"))
class TorchBackend(Backend):
    """PyTorch eager model from a checkpoint."""

    option_names = frozenset({"fuse", "half", "threads"})

    model: YOLOX

    @classmethod
    def _check_device(cls, device: str) -> None:
        resolve_device(device)

    def _load(self) -> None:
        opts = self.options
        self._device = resolve_device(self.device)
        threads = POOL.threads(opts.get("threads"))
        if threads:
            torch.set_num_threads(threads)
        if isinstance(self.path, YOLOX):
            model = self.path
            names = opts.get("class_names")
            if names is not None and len(names) != model.num_classes:  # as load_model checks a checkpoint's
                raise InputError(f"{len(names)} class names given for a model with {model.num_classes} classes")
        else:
            model = load_model(self.path, opts.get("model"), num_classes=opts.get("num_classes"),
                               class_names=opts.get("class_names"))
        self._half = bool(opts.get("half")) and self._device.type == "cuda"
        if opts.get("half") and not self._half:
            log.warning("half applies on CUDA only; the model runs in FP32 on %s", self._device)
        if opts.get("fuse", True):
            model = deploy_model(model, half=self._half)  # a copy: a caller's (e.g. training) model is untouched
        elif isinstance(self.path, YOLOX):
            model = copy.deepcopy(model)  # the settings below must not reach a caller's model either
        model = model.eval()
        model.head.decode_in_inference = False
        self.model = model.to(self._device).half() if self._half else model.to(self._device)

        size = parse_img_size(opts["img_size"]) if opts.get("img_size") else model.default_input_size
        self.meta = model_meta(model, legacy=bool(opts.get("legacy")), class_names=opts.get("class_names")).with_(
            input_size=size, batch=None, dynamic_hw=True, precision="fp16" if self._half else "fp32", format="torch")

    @property
    def output_device(self) -> str:
        return str(self._device)

    def _close(self) -> None:
        self.model = None  # the weights (on the GPU too) are freed with the last reference to them

    @torch.inference_mode()
    def _infer_canvas(self, canvases: Any) -> list[Any]:
        """Canvases go to the device as uint8; layout, type and normalisation happen there."""
        return self._infer(canvas_to_tensor(canvases, self.meta.preprocess, self._device))

    @torch.inference_mode()
    def _infer(self, batch: Any) -> list[Any]:
        x = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
        x = x.to(self._device, non_blocking=True)
        x = x.half() if self._half else x.float()
        if self._device.type == "cpu":
            POOL.started(torch.get_num_threads())
        out = self.model(x)
        return [out.float() if self._half else out]
