"""TensorRT backend: a serialized engine (``.engine`` / ``.plan``, a plain TensorRT 10 plan) on an NVIDIA GPU.

The engine runs through the TensorRT 10 tensor-address API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) on a dedicated CUDA stream. Device buffers are PyTorch CUDA tensors, so outputs stay on
the GPU and the shared decode / NMS run there too (``output_device`` is ``"cuda:N"``). A numpy batch is copied
host-to-device on that stream; a CUDA tensor is used in place.

What the engine is comes from its sidecar ``<engine>.json`` (:func:`~yolox_deploy.meta.sidecar_path`, written
by ``yolox-export``): the :class:`~yolox_deploy.meta.ModelMeta` plus, under ``extra["tensorrt"]``, the
TensorRT version, GPU and build settings it was made with. An engine is refused with one sentence before it
is deserialised when that record names another TensorRT release (major.minor.patch) or another GPU compute
capability (TensorRT plans are not portable across either), and refused when it contradicts the engine's I/O
(input size, batch, NMS outputs, decoded head). Without a sidecar the metadata is read off the engine's I/O
shapes (:func:`~yolox_deploy.meta.infer_meta`): the head output is taken as decoded when it is named
``DECODED_OUTPUT`` (as ``yolox-export`` names it in the engines it builds), else as raw.

Options: ``img_size`` (only for sidecar-less engines with dynamic height/width). ``device``: ``cuda`` or
``cuda:N``; ``cpu`` / ``auto`` (the library-wide default) mean the current CUDA device, since an engine runs
nowhere else. One execution context per backend: calls are serialised (``thread_safe = False``).

The environment helpers here (:func:`current_environment`, :func:`check_compatibility`, :class:`Profile`)
are shared with ``export/tensorrt.py``, which records what this module checks.
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtefactError, BackendUnavailable, InputError
from ..meta import NMS_OUTPUTS, ModelMeta, check_against_graph, meta_from_graph, read_sidecar, sidecar_path
from ..ops.letterbox import canvas_to_tensor
from ..utils.files import check_readable
from ..utils.sizes import parse_img_size
from .base import Backend, register_backend

log = logging.getLogger(__name__)

TRT_MISSING = "TensorRT is not installed (pip install 'yolox-deploy[trt]' on a machine with an NVIDIA GPU)"
RECORD_KEY = "tensorrt"  # key of the build record inside ModelMeta.extra
# The name yolox-export gives a decoded head output in the engines it builds: the plan keeps no other metadata.
DECODED_OUTPUT = "output_decoded"

Shape = tuple[int, ...]


# --- optional packages -----------------------------------------------------------------------------------
SUPPORTED_TENSORRT_MAJOR = 10
TENSOR_ALIGNMENT = 256  # bytes: set_tensor_address takes addresses aligned to this (NvInferRuntime.h)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`BackendUnavailable` with the install hint."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(TRT_MISSING) from None
    major = version_key(getattr(tensorrt, "__version__", "0"))[:1]
    if major != (SUPPORTED_TENSORRT_MAJOR,):  # 11 removed the FP16 / INT8 builder flags and calibrators we use
        raise BackendUnavailable(f"this yolox-deploy drives TensorRT {SUPPORTED_TENSORRT_MAJOR}.x, and TensorRT "
                                 f"{tensorrt.__version__} is installed; pip install 'tensorrt>=10,<11'")
    return tensorrt


def import_cudart() -> Any | None:
    """cuda-python's runtime API module (``cuda.bindings.runtime`` or, before 12.6, ``cuda.cudart``), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


def cudart_call(result: Any) -> Any:
    """Unpack a cuda-python ``(error, value...)`` tuple; a failed call raises ``RuntimeError``."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


# --- devices and the environment an engine is tied to ---------------------------------------------------
def cuda_index(device: str | int | None) -> int | None:
    """``"cuda:1"`` / ``"1"`` / ``1`` -> 1; ``"cuda"``, ``"cpu"``, ``"auto"``, ``"gpu"``, ``None`` -> None (current).

    ``cpu`` is accepted because it is the default device of the shared options and a TensorRT engine has
    no CPU form; anything else (``"mps"``, ``"NPU"``) is an :class:`InputError`.
    """
    if device is None or isinstance(device, int):
        return device
    d = str(device).strip().lower()
    if d in ("", "cpu", "auto", "gpu", "cuda"):
        return None
    if d.isdigit():
        return int(d)
    m = re.fullmatch(r"(?:cuda|gpu):(\d+)", d)
    if m:
        return int(m.group(1))
    raise InputError(f"TensorRT runs on a CUDA GPU: use device 'cuda' or 'cuda:N', not {device!r}")


def resolve_cuda_device(device: str | int | None) -> torch.device:
    """The torch CUDA device for ``device`` (see :func:`cuda_index`); clear errors when there is none."""
    index = cuda_index(device)
    if not torch.cuda.is_available():
        raise BackendUnavailable("the TensorRT backend needs an NVIDIA GPU and a CUDA build of PyTorch; "
                                 "torch.cuda.is_available() is False here")
    count = torch.cuda.device_count()
    if index is None:
        index = torch.cuda.current_device()
    if not 0 <= index < count:
        raise InputError(f"CUDA device {index} asked for, but this machine has {count} GPU(s)")
    return torch.device("cuda", index)


def gpu_properties(index: int | None = None) -> tuple[str, tuple[int, int]]:
    """``(name, (major, minor) compute capability)`` of a GPU, via PyTorch, cuda-python or pycuda.

    Raises :class:`BackendUnavailable` when none of them sees a CUDA GPU.
    """
    if torch.cuda.is_available():
        i = torch.cuda.current_device() if index is None else index
        return torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i))
    i = index or 0
    cudart = import_cudart()
    if cudart is not None:
        try:
            if cudart_call(cudart.cudaGetDeviceCount()) > i:
                prop = cudart_call(cudart.cudaGetDeviceProperties(i))
                name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
                return name.rstrip("\x00"), (int(prop.major), int(prop.minor))
        except RuntimeError as e:
            log.debug("cuda-python sees no GPU: %s", e)
    try:
        import pycuda.driver as drv

        drv.init()
        if drv.Device.count() > i:
            dev = drv.Device(i)
            return dev.name(), tuple(dev.compute_capability())
    except Exception as e:  # ImportError, or pycuda's LogicError/RuntimeError without a driver
        log.debug("pycuda sees no GPU: %s", e)
    raise BackendUnavailable("no CUDA GPU is available (TensorRT needs an NVIDIA GPU with its driver installed)")


def cuda_version() -> str | None:
    """The CUDA runtime version, e.g. ``"12.4"`` (cuda-python, else the one PyTorch was built with)."""
    cudart = import_cudart()
    if cudart is not None:
        try:
            v = int(cudart_call(cudart.cudaRuntimeGetVersion()))
            return f"{v // 1000}.{(v % 1000) // 10}"
        except RuntimeError:
            pass
    return torch.version.cuda


def current_environment(tensorrt_version: str, index: int | None = None) -> dict[str, str | None]:
    """What an engine built or run here is tied to: TensorRT version, GPU name, compute capability, CUDA."""
    name, (major, minor) = gpu_properties(index)
    return {"tensorrt": tensorrt_version, "gpu": name, "compute_capability": f"{major}.{minor}",
            "cuda": cuda_version()}


def version_key(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``: the part of a TensorRT version that decides plan compatibility (a plan
    loads only in the TensorRT release it was built with, NVIDIA's "Version Compatibility" page)."""
    nums = re.findall(r"\d+", str(version))
    return tuple(int(n) for n in nums[:3])


def check_compatibility(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Reasons an engine built in ``recorded`` cannot run in ``current`` (empty when it can).

    Both are :func:`current_environment` dicts. A TensorRT plan only loads in the TensorRT release
    (major.minor.patch) and on the GPU compute capability it was built for; keys missing on either side are
    not judged.
    """
    problems = []
    built, here = recorded.get("tensorrt"), current.get("tensorrt")
    if built and here and version_key(built) != version_key(here):
        problems.append(f"it was built with TensorRT {built} and this is TensorRT {here}")
    built_cc, here_cc = recorded.get("compute_capability"), current.get("compute_capability")
    if built_cc and here_cc and str(built_cc) != str(here_cc):
        problems.append(f"it was built for a GPU of compute capability {built_cc} ({recorded.get('gpu', '?')}) "
                        f"and this GPU ({current.get('gpu', '?')}) is {here_cc}")
    return problems


def ensure_compatible(recorded: Mapping[str, Any], current: Mapping[str, Any], engine: str) -> None:
    """Raise :class:`ArtefactError` naming every :func:`check_compatibility` problem."""
    problems = check_compatibility(recorded, current)
    if problems:
        raise ArtefactError(f"{engine} cannot run here: {'; '.join(problems)}; rebuild the engine on this machine "
                            "(yolox-export --format tensorrt)")


# --- optimisation profiles --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """The input shapes an engine accepts: ``min <= shape <= max`` per dimension, built for ``opt``."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ValueError(f"profile shapes differ in rank: {self.min}, {self.opt}, {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 0 < lo <= mid <= hi:
                raise ValueError(f"profile needs 0 < min <= opt <= max per dimension: {self.min}, {self.opt}, "
                                 f"{self.max}")

    @classmethod
    def fixed(cls, shape: Sequence[int]) -> Profile:
        s = tuple(int(v) for v in shape)
        return cls(s, s, s)

    @property
    def is_dynamic(self) -> bool:
        return self.min != self.max

    def problem(self, shape: Sequence[int]) -> str | None:
        """Why ``shape`` is outside the profile, or None when it fits."""
        shape = tuple(int(v) for v in shape)
        if len(shape) != len(self.min):
            return f"expected a {len(self.min)}-d input, got shape {list(shape)}"
        names = ("batch", "channels", "height", "width") if len(shape) == 4 else None
        for i, (v, lo, hi) in enumerate(zip(shape, self.min, self.max, strict=True)):
            if not lo <= v <= hi:
                what = names[i] if names else f"dimension {i}"
                allowed = str(lo) if lo == hi else f"{lo}..{hi}"
                return f"input {what} {v} is outside this engine's range ({allowed})"
        return None

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> Profile:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


# --- sidecar ------------------------------------------------------------------------------------------------
def build_record(meta: ModelMeta) -> dict[str, Any]:
    """The TensorRT build record of a sidecar's metadata (``{}`` when it has none)."""
    record = meta.extra.get(RECORD_KEY)
    return dict(record) if isinstance(record, Mapping) else {}


# --- TensorRT glue (only runs where tensorrt is installed) -----------------------------------------------
_LOGGER: Any = None


def make_logger(trt: Any) -> Any:
    """The process's ``trt.ILogger``: forwards to :mod:`logging` and keeps the last errors for messages.

    One instance serves every builder and runtime (TensorRT keeps a process-wide logger and warns when
    another one is passed); its error list is cleared here, so ``last_errors()`` covers what follows.
    """
    global _LOGGER
    if _LOGGER is None or not isinstance(_LOGGER, trt.ILogger):
        _LOGGER = _new_logger(trt)
    _LOGGER.errors.clear()
    return _LOGGER


def _new_logger(trt: Any) -> Any:
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.CRITICAL, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG, severity.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: collections.deque[str] = collections.deque(maxlen=8)

        def log(self, sev: Any, msg: str) -> None:
            level = levels.get(sev, logging.DEBUG)
            if level >= logging.ERROR:
                self.errors.append(str(msg).strip())
            log.log(level, "TensorRT: %s", msg)

        def last_errors(self) -> str:
            return " | ".join(self.errors) if self.errors else "no details logged"

    return _Logger()


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a ``trt.DataType`` (by its name: FLOAT, HALF, INT32, ...)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ArtefactError(f"engine tensor type {name} has no PyTorch equivalent") from None


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor: name, shape (``-1`` for dynamic dimensions) and torch dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    is_input: bool


def order_outputs(outputs: Sequence[TensorSpec], nms_in_graph: bool) -> list[TensorSpec]:
    """Outputs in the order the pipeline expects: ``num_dets, boxes, scores, labels`` for NMS engines."""
    if nms_in_graph:
        by_name = {o.name: o for o in outputs}
        if all(n in by_name for n in NMS_OUTPUTS):
            return [by_name[n] for n in NMS_OUTPUTS]
    return list(outputs)


def meta_from_shapes(inp: TensorSpec, outputs: Sequence[TensorSpec], profile: Profile, artefact: str,
                     img_size: Any = None, legacy: bool = False, decode_in_graph: bool = False) -> ModelMeta:
    """Metadata of an engine without a sidecar, from its I/O shapes (raw head output assumed unless
    ``decode_in_graph`` or the output is named ``DECODED_OUTPUT``).

    Dynamic height/width take ``img_size`` when given, else the profile's optimum, and mark the metadata
    ``dynamic_hw``; a dynamic batch becomes ``batch=None``; ``legacy`` sets the RGB / 255 / ImageNet input.
    """
    return meta_from_graph(list(inp.shape), [o.name for o in outputs], list(outputs[0].shape), artefact,
                           img_size=parse_img_size(img_size) if img_size else None,
                           default_hw=tuple(profile.opt[2:4]), legacy=legacy, format="tensorrt",
                           decode_in_graph=decode_in_graph or outputs[0].name == DECODED_OUTPUT)


def check_sidecar(meta: ModelMeta, inp: TensorSpec, outputs: Sequence[TensorSpec], artefact: str) -> None:
    """Refuse a sidecar that does not describe its engine: :func:`~yolox_deploy.meta.check_against_graph`
    (batch, input size, NMS outputs), and a raw head in the sidecar where the engine names it decoded."""
    check_against_graph(meta, list(inp.shape), [o.name for o in outputs], artefact,
                        decodes=outputs[0].name == DECODED_OUTPUT)


@register_backend("tensorrt", suffixes=(".engine", ".plan"), package="tensorrt", extra="trt", devices=("cuda",))
class TensorRTBackend(Backend):
    """TensorRT engine on an NVIDIA GPU (outputs stay on the GPU)."""

    thread_safe = False

    @classmethod
    def _check_device(cls, device: str) -> None:
        resolve_cuda_device(device)

    def _load(self) -> None:
        trt = import_tensorrt()
        self._device = resolve_cuda_device(self.device)
        path = Path(self.path)
        check_readable(path)
        meta = read_sidecar(path)
        if meta is not None:
            record = build_record(meta)
            if record:
                ensure_compatible(record, current_environment(trt.__version__, self._device.index), path.name)
        else:
            log.info("%s has no sidecar %s; reading its shapes (raw output assumed)", path.name,
                     sidecar_path(path).name)

        self._logger = make_logger(trt)
        trt.init_libnvinfer_plugins(self._logger, "")  # EfficientNMS_TRT and the other built-in plugins
        with torch.cuda.device(self._device):
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise ArtefactError(f"{path.name} is not a TensorRT engine this TensorRT {trt.__version__} can load "
                                    f"(corrupt, or built by another TensorRT version or for another GPU): "
                                    f"{self._logger.last_errors()}")
            self._engine = engine
            self._context = engine.create_execution_context()
            if self._context is None:
                raise ArtefactError(f"cannot create a TensorRT execution context for {path.name} "
                                    f"(out of GPU memory?): {self._logger.last_errors()}")
            self._stream = torch.cuda.Stream(self._device)

        specs = [self._spec(trt, engine, engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)]
        inputs = [s for s in specs if s.is_input]
        outputs = [s for s in specs if not s.is_input]
        if len(inputs) != 1 or not outputs:
            raise ArtefactError(f"{path.name}: expected one image input and at least one output, found "
                                f"{len(inputs)} input(s) and {len(outputs)} output(s)")
        self._input = inputs[0]
        self.profile = self._read_profile(engine, self._input)
        if meta is None:
            meta = meta_from_shapes(self._input, outputs, self.profile, path.name, self.options.get("img_size"),
                                    bool(self.options.get("legacy")), bool(self.options.get("decode_in_graph")))
        else:
            check_sidecar(meta, self._input, outputs, f"{path.name} with its sidecar {sidecar_path(path).name}")
        self.meta = meta
        self._outputs = order_outputs(outputs, meta.nms_in_graph)

    @staticmethod
    def _spec(trt: Any, engine: Any, name: str) -> TensorSpec:
        layout = engine.get_tensor_format(name)
        if layout != trt.TensorFormat.LINEAR:  # e.g. trtexec --inputIOFormats=fp16:hwc8: other bytes than NCHW
            raise ArtefactError(f"the engine's tensor {name} has the {getattr(layout, 'name', layout)} layout; this "
                                "backend feeds and reads linear (NCHW) tensors: build the engine without "
                                "--inputIOFormats / --outputIOFormats")
        return TensorSpec(name, tuple(int(d) for d in engine.get_tensor_shape(name)),
                          torch_dtype(engine.get_tensor_dtype(name)),
                          engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT)

    def _bind(self, name: str, tensor: torch.Tensor) -> None:
        if not self._context.set_tensor_address(name, tensor.data_ptr()):
            raise ArtefactError(f"TensorRT refused the buffer of {name}: {self._logger.last_errors()}")

    @staticmethod
    def _read_profile(engine: Any, inp: TensorSpec) -> Profile:
        if all(d > 0 for d in inp.shape):
            return Profile.fixed(inp.shape)
        lo, opt, hi = engine.get_tensor_profile_shape(inp.name, 0)
        return Profile(tuple(int(d) for d in lo), tuple(int(d) for d in opt), tuple(int(d) for d in hi))

    @property
    def output_device(self) -> str:
        return str(self._device)

    @torch.inference_mode()
    def _infer_canvas(self, canvases: Any) -> list[Any]:
        """Canvases are uploaded as uint8 (a quarter of the float bytes) and converted on the GPU."""
        with torch.cuda.device(self._device):
            x = canvas_to_tensor(canvases, self.meta.preprocess, self._device, self._input.dtype)
        return self._infer(x)

    @torch.inference_mode()
    def _infer(self, batch: Any) -> list[Any]:
        shape = tuple(int(d) for d in batch.shape)
        problem = self.profile.problem(shape)
        if problem:
            raise InputError(f"{problem}; re-export the engine with a profile that covers it "
                             "(--dynamic --max-batch N, --dynamic-hw)")
        ctx, inp = self._context, self._input
        with torch.cuda.device(self._device):
            caller = torch.cuda.current_stream(self._device)
            self._stream.wait_stream(caller)  # a CUDA input may still be being written on the caller's stream
            with torch.cuda.stream(self._stream):
                src = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
                x = src.to(self._device, inp.dtype, non_blocking=True).contiguous()
                if x.data_ptr() % TENSOR_ALIGNMENT:  # a view into a caller's tensor; TensorRT needs aligned memory
                    x = x.clone()
                if src.is_cuda:  # read on this stream (in place, or by the copy): kept until it has been
                    src.record_stream(self._stream)
                if not ctx.set_input_shape(inp.name, shape):
                    raise InputError(f"TensorRT rejected input shape {list(shape)}: {self._logger.last_errors()}")
                self._bind(inp.name, x)
                outs = []
                for spec in self._outputs:
                    out_shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
                    if any(d < 0 for d in out_shape):
                        raise ArtefactError(f"output {spec.name} has a data-dependent shape {list(out_shape)}, "
                                            "which this backend does not support")
                    t = torch.empty(out_shape, dtype=spec.dtype, device=self._device)
                    self._bind(spec.name, t)
                    outs.append(t)
                if not ctx.execute_async_v3(self._stream.cuda_stream):
                    raise ArtefactError(f"TensorRT failed to run {Path(self.path).name}: {self._logger.last_errors()}")
            caller.wait_stream(self._stream)
            for t in outs:
                t.record_stream(caller)  # the caller's stream reads them; keep the memory until it has
        return outs

    def _close(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:  # the last enqueued run may still use the context's memory
            stream.synchronize()
        for name in ("_context", "_engine", "_runtime"):
            if hasattr(self, name):
                delattr(self, name)

