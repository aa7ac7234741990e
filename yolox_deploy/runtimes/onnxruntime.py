"""ONNX Runtime backend: ``.onnx`` files on the CPU, a CUDA GPU, or through ONNX Runtime's TensorRT provider.

Devices: ``cpu``; ``cuda`` / ``cuda:N`` (``CUDAExecutionProvider``; outputs stay on the GPU as torch CUDA
tensors through IO binding, so decode and NMS run there too); ``tensorrt`` / ``tensorrt:N``
(``TensorrtExecutionProvider`` with CUDA as fallback for unsupported nodes).

Options: ``threads`` (intra-op threads; default: ONNX Runtime's choice), ``opt_level`` (``all`` (default),
``extended``, ``basic``, ``disable``), ``img_size`` (dynamic-size graphs; must match a fixed one),
``num_classes`` (checked against the graph), ``legacy`` (RGB/255/ImageNet input, for files without our
metadata), ``half`` and ``trt_cache`` (TensorRT provider: FP16 engines, engine cache folder).

Metadata comes from the session's custom metadata map (no ``onnx`` package needed); files without it (the
authors' releases) get :func:`~yolox_deploy.meta.infer_meta` from the graph's input and output shapes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtefactError, BackendUnavailable, InputError
from ..meta import META_KEY, ModelMeta, Preprocess, infer_meta
from ..utils.sizes import parse_img_size
from .base import Backend, register_backend

log = logging.getLogger(__name__)

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
_TORCH_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
                 "tensor(int64)": "int64", "tensor(bool)": "bool"}


def parse_device(device: str) -> tuple[str, int]:
    """``cpu`` | ``cuda[:N]`` | ``N`` | ``tensorrt[:N]`` (``trt``) -> ``(kind, device id)``."""
    d = str(device).strip().lower()
    if d.isdigit():
        return "cuda", int(d)
    kind, _, index = d.partition(":")
    kind = {"gpu": "cuda", "trt": "tensorrt"}.get(kind, kind)
    if kind not in ("cpu", "cuda", "tensorrt") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise InputError(f"unknown device {device!r} for ONNX Runtime; use cpu, cuda, cuda:N or tensorrt[:N]")
    return kind, int(index or 0)


@register_backend("onnxruntime", suffixes=(".onnx",), package="onnxruntime", extra="onnx",
                  devices=("cpu", "cuda", "tensorrt"))
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime (CPU, CUDA, TensorRT execution providers)."""

    def _load(self) -> None:
        import onnxruntime as ort

        path = Path(self.path)
        self._kind, self._device_id = parse_device(self.device)
        providers = self._providers(ort)
        if not path.is_file():
            raise InputError(f"ONNX file not found: {path}")
        if path.stat().st_size == 0:
            raise ArtefactError(f"{path.name} is empty (0 bytes); re-export it")
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only; ORT's warnings about unused initializers etc. are noise here
        threads = self.options.get("threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        level = str(self.options.get("opt_level") or "all").lower()
        if level not in OPT_LEVELS:
            raise InputError(f"opt_level must be one of {', '.join(OPT_LEVELS)}, got {level!r}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # InvalidProtobuf, InvalidGraph, Fail, NotImplemented...: never let ORT crash us
            raise self._load_error(path, e) from None
        wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}.get(self._kind)
        if wanted and wanted not in self.session.get_providers():  # ORT falls back to the CPU when a GPU EP fails
            raise BackendUnavailable(f"ONNX Runtime could not start {wanted} for device {self.device!r} (it fell "
                                     "back to the CPU); check the CUDA / cuDNN / TensorRT libraries it needs")
        self.meta = self._read_meta(path)
        self._input_name = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        self._output_names = [o.name for o in outputs]
        self._output_types = [o.type for o in outputs]
        self._run = self.session.run
        self._io_binding = self._kind != "cpu" and self._torch_cuda_available()
        if self._io_binding:
            import torch

            self._torch = torch
            self._torch_device = torch.device("cuda", self._device_id)

    # --- loading -------------------------------------------------------------------------------------
    def _providers(self, ort: Any) -> list[Any]:
        available = set(ort.get_available_providers())
        if self._kind == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self._device_id})
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(f"device {self.device!r} needs ONNX Runtime with CUDA (pip install onnxruntime-gpu); "
                                     "this onnxruntime only has " + ", ".join(sorted(available)))
        if self._kind == "cuda":
            return [cuda, "CPUExecutionProvider"]
        if "TensorrtExecutionProvider" not in available:
            raise BackendUnavailable(f"device {self.device!r} needs ONNX Runtime's TensorRT provider (onnxruntime-gpu "
                                     "built with TensorRT, and TensorRT installed); use device cuda instead")
        cache = Path(self.options.get("trt_cache") or Path.home() / ".cache" / "yolox-deploy" / "ort-tensorrt")
        cache.mkdir(parents=True, exist_ok=True)
        trt = ("TensorrtExecutionProvider", {
            "device_id": self._device_id, "trt_fp16_enable": bool(self.options.get("half")),
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
        })
        return [trt, cuda, "CPUExecutionProvider"]

    def _load_error(self, path: Path, e: Exception) -> Exception:
        text = str(e).replace("\n", " ")
        if "EfficientNMS_TRT" in text:
            return ArtefactError(f"{path.name} holds the TensorRT NMS plugin (EfficientNMS_TRT), which only TensorRT "
                                 "runs; build an engine from it, or export with --nms for ONNX Runtime")
        if self._kind != "cpu" and any(k in text for k in ("CUDA", "cuda", "TensorRT", "libcu", "libnv")):
            return BackendUnavailable(f"ONNX Runtime could not start on {self.device!r}: {text[:200]}")
        return ArtefactError(f"{path.name} is not a valid ONNX model or ONNX Runtime cannot load it "
                             f"({type(e).__name__}: {text[:200]}); re-export it")

    @staticmethod
    def _torch_cuda_available() -> bool:
        try:
            import torch
        except ImportError:
            return False
        return torch.cuda.is_available()

    def _read_meta(self, path: Path) -> ModelMeta:
        opts = self.options
        custom = self.session.get_modelmeta().custom_metadata_map
        size = parse_img_size(opts["img_size"]) if opts.get("img_size") else None
        inp = self.session.get_inputs()
        if len(inp) != 1:
            raise ArtefactError(f"{path.name}: expected one image input, found {len(inp)}")
        in_shape = list(inp[0].shape)
        if META_KEY in custom:
            meta = ModelMeta.from_json(custom[META_KEY])
        else:
            if size is not None and len(in_shape) == 4:
                in_shape[2:] = [d if isinstance(d, int) and d > 0 else s for d, s in zip(in_shape[2:], size, strict=True)]
            outs = self.session.get_outputs()
            meta = infer_meta(in_shape, [o.name for o in outs], list(outs[0].shape), path.name, format="onnx")
            meta = meta.with_(dynamic_hw=not all(isinstance(d, int) and d > 0 for d in inp[0].shape[2:4]))
            if opts.get("legacy"):
                meta = meta.with_(preprocess=Preprocess.legacy())
        if size is not None and size != tuple(meta.input_size):
            if not meta.dynamic_hw:
                raise InputError(f"{path.name} was exported for {meta.input_size[0]}x{meta.input_size[1]} input, "
                                 f"not {size[0]}x{size[1]}; re-export it for that size or drop the image size")
            meta = meta.with_(input_size=size)
        if opts.get("num_classes") and int(opts["num_classes"]) != meta.num_classes:
            raise InputError(f"{path.name} has {meta.num_classes} classes, not {opts['num_classes']}")
        if meta.nms_in_graph and meta.extra.get("nms_plugin") == "tensorrt" and self._kind != "tensorrt":
            raise ArtefactError(f"{path.name} holds the TensorRT NMS plugin, which only TensorRT runs; "
                                "use device 'tensorrt' or build an engine from it")
        return meta

    # --- inference -----------------------------------------------------------------------------------
    @property
    def output_device(self) -> str:
        return f"cuda:{self._device_id}" if self._io_binding else "cpu"

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really uses, in priority order."""
        return self.session.get_providers()

    def _infer(self, batch: Any) -> list[Any]:
        if self._io_binding:
            return self._infer_bound(batch)
        if not isinstance(batch, np.ndarray):
            batch = batch.detach().cpu().numpy()
        if batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        return self._run(self._output_names, {self._input_name: batch})

    def _output_shapes(self, n: int, h: int, w: int) -> list[tuple[int, ...]]:
        from ..ops.decode import num_anchors

        m = self.meta
        if m.nms_in_graph:
            k = int(m.max_det or self.session.get_outputs()[1].shape[1])
            return [(n, 1), (n, k, 4), (n, k), (n, k)]
        return [(n, num_anchors((h, w), m.strides), 5 + m.num_classes)]

    def _infer_bound(self, batch: Any) -> list[Any]:
        """CUDA path: input and outputs bound to torch CUDA tensors, no host round trip for the outputs."""
        torch = self._torch
        x = torch.as_tensor(batch).to(self._torch_device, torch.float32, non_blocking=True).contiguous()
        n, _, h, w = x.shape
        outputs = [torch.empty(shape, dtype=getattr(torch, _TORCH_DTYPES[t]), device=self._torch_device)
                   for shape, t in zip(self._output_shapes(n, h, w), self._output_types, strict=True)]
        binding = self.session.io_binding()
        binding.bind_input(self._input_name, "cuda", self._device_id, np.float32, tuple(x.shape), x.data_ptr())
        for name, out in zip(self._output_names, outputs, strict=True):
            binding.bind_output(name, "cuda", self._device_id, _np_dtype(out), tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self._torch_device).synchronize()  # the upload ran on torch's stream
        self.session.run_with_iobinding(binding)  # returns once ORT's stream is done
        return outputs

    def _close(self) -> None:
        self.session = None  # type: ignore[assignment]
        self._run = None  # type: ignore[assignment]


def _np_dtype(t: Any) -> Any:
    return np.dtype(str(t.dtype).removeprefix("torch."))

