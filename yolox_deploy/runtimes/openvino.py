"""OpenVINO backend: an IR folder (``*_openvino/`` holding one ``.xml`` + ``.bin``) or an ``.xml`` file.

Devices: ``cpu``, ``gpu`` / ``gpu.N`` (Intel GPUs), ``npu``, ``auto`` (any case; ``AUTO:GPU,CPU`` style
priority lists pass through). Options:

- ``hint``: ``"latency"`` (default) or ``"throughput"`` -> ``PERFORMANCE_HINT``
- ``threads``: ``INFERENCE_NUM_THREADS``
- ``inference_precision``: ``"f32"``, ``"f16"`` or ``"bf16"`` -> ``INFERENCE_PRECISION_HINT``. Default:
  ``f32`` on the CPU (OpenVINO would otherwise compute in bf16 on CPUs that have it, which moves raw box
  offsets by up to ~2.5 and would make an FP32 artefact disagree with its checkpoint), and for FP32/INT8
  artefacts on other devices; FP16 artefacts keep the device's default (f16 on Intel GPUs), but on AUTO /
  MULTI / HETERO the CPU among their devices still gets f32. An ``f16`` hint on a CPU without FP16 arithmetic
  computes bf16 where the CPU has that (OpenVINO's choice), else f32; ``compute_precision`` says which.
- ``cache_dir``: OpenVINO's compiled-model cache (saves GPU/NPU compile time on the next open)
- ``img_size``: the input size of a dynamic-size IR that carries no metadata

Canvas batches (the ``Detector``'s uint8 ``[N, H, W, 3]``) run through the model with OpenVINO's
pre-processing in front (u8 NHWC -> f32 NCHW, which the CPU plugin fuses into the first layer); the IR as
it is (float ``[N, 3, H, W]`` input) is compiled too when a float batch first comes. Option
``canvas_in_graph=False`` turns this off. Each concurrent call gets its own infer request from a pool
(requests are created on demand and reused), so a ``Detector`` may be called from several threads at once
and results never mix. The input batch is shared with OpenVINO without a copy; outputs are copied out of
the request before it goes back to the pool.

Metadata comes from the IR's ``rt_info`` (``META_KEY``), with the digest of the ``.bin`` exported beside the
XML (another export's weights are refused); an IR without it (converted from the authors' ONNX
elsewhere) is described from its input/output shapes (:func:`~yolox_deploy.meta.infer_meta`) and its ops (the
decode's ``Exp``: whether it decodes its boxes).
An NPU needs static shapes: a dynamic IR opened on an NPU is fixed to its metadata's size and batch 1.

A forked child (``multiprocessing``'s default on Linux) runs the models compiled before the fork, and compiles
new ones. Once a compiled model was released in the parent (or before an earlier fork), the CPU plugin would hand
a compile in the child that model's idle executor, whose threads the fork did not copy, and the compile would
never return (OpenVINO's own limit, reproduced with ``ov.Core`` alone). Such a child compiles for the CPU with
``EXCLUSIVE_ASYNC_REQUESTS`` (OpenVINO's one CPU executor of the process, made in the child; results are the
same): its models run on all the CPUs the process may use, whatever ``threads`` says. A child of that child,
whose CPU executor again has no threads, cannot compile for the CPU and says so.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from ..errors import ArtefactError, BackendUnavailable, InputError
from ..meta import META_KEY, OPENVINO_BIN_SHA256, ModelMeta, meta_from_graph, stored_meta
from ..utils.arrays import to_numpy
from ..utils.files import check_readable
from ..utils.sizes import parse_img_size
from .base import Backend, check_weights_digest, one_model_file, precision_name, register_backend

log = logging.getLogger(__name__)

HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
PRECISIONS = {"f32": "f32", "fp32": "f32", "f16": "f16", "fp16": "f16", "bf16": "bf16"}
_DEVICE = re.compile(r"^(cpu|gpu(\.\d+)?|npu|auto|multi|hetero)(:.+)?$", re.IGNORECASE)

_CORE: Any = None
_CORE_LOCK = threading.Lock()


# a compiled model was released in this process or before a fork that made it: the CPU plugin keeps its executor
# idle for the next compile with the same settings
_RELEASED = False
# released before this process was forked: those idle executors have no threads here
_IDLE_EXECUTORS_STALE = False
# the process that first compiled with EXCLUSIVE_ASYNC_REQUESTS, which made the plugin's one CPU executor
_EXCLUSIVE_EXECUTOR_PID: int | None = None
EXCLUSIVE = "EXCLUSIVE_ASYNC_REQUESTS"


def _after_fork_in_child() -> None:
    """A Core lock held by no thread (the thread that held the parent's is gone), and whether the executors of
    released models are now without threads."""
    global _CORE_LOCK, _IDLE_EXECUTORS_STALE
    _CORE_LOCK = threading.Lock()
    _IDLE_EXECUTORS_STALE = _RELEASED


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _note_release() -> None:
    """A compiled model is being released: its CPU executor becomes idle (the plugin keeps it for reuse)."""
    global _RELEASED
    _RELEASED = True


def _core() -> Any:
    """One ``ov.Core`` per process (plugins load once; the Core is thread-safe)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


def ov_device(device: str) -> str:
    """``cpu`` -> ``CPU``, ``gpu.1`` -> ``GPU.1``, ``auto:gpu,cpu`` -> ``AUTO:GPU,CPU``; rejects other names."""
    d = re.sub(r"\s*([:,])\s*", r"\1", str(device).strip())  # "auto: gpu, cpu": OpenVINO takes no spaces
    if not _DEVICE.match(d):
        raise InputError(f"OpenVINO cannot run on {device!r}; use cpu, gpu, gpu.N, npu or auto")
    return d.upper()


def find_ir(path: Path) -> Path:
    """The ``.xml`` of an IR folder (exactly one) or the file itself, with its ``.bin`` present."""
    if path.is_dir():
        xml = one_model_file(path, sorted(path.glob("*.xml")), kind="OpenVINO models",
                             hint="pass the .xml file to use", missing=f"no OpenVINO IR (.xml) in folder {path}")
    else:
        if not path.is_file():
            raise ArtefactError(f"OpenVINO model not found: {path}")
        if path.suffix.lower() != ".xml":
            raise ArtefactError(f"{path} is not an OpenVINO IR (.xml)")
        xml = path
    _check_ir_xml(xml)
    if not xml.with_suffix(".bin").is_file():
        raise ArtefactError(f"{xml} has no weights file {xml.with_suffix('.bin').name} next to it; "
                            "copy the .xml and .bin together")
    return xml


def _check_ir_xml(xml: Path) -> None:
    """Refuse a file that is not IR XML before OpenVINO tries every frontend on it (and logs their errors)."""
    try:
        with open(xml, "rb") as source:  # iterparse's own file is closed only by the garbage collector
            for _, element in ElementTree.iterparse(source, events=("start",)):
                if element.tag != "net":
                    raise ArtefactError(f"{xml} is not an OpenVINO IR (its XML root is <{element.tag}>, not <net>)")
                return
    except ElementTree.ParseError as e:
        raise ArtefactError(f"{xml} is not an OpenVINO IR (unreadable XML: {e})") from None
    except OSError as e:
        raise ArtefactError(f"cannot read {xml} ({e.strerror or e})") from None


def _dims(partial_shape: Any) -> list[Any]:
    if partial_shape.rank.is_dynamic:
        return []
    return [d.get_length() if d.is_static else None for d in partial_shape]


VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO")  # OpenVINO's devices that run on those they list


def _device_parts(device: str) -> tuple[str, str, list[str]]:
    """An OpenVINO device name (``AUTO:GPU.1,CPU``) as its base, the text after ``:`` and the devices listed."""
    base, _, listed = device.partition(":")
    return base, listed, [t.strip() for t in listed.split(",") if t.strip()]


def _name(port: Any, index: int) -> str:
    names = port.get_names()
    return sorted(names)[0] if names else f"output{index}"


def read_ov_meta(model: Any, xml: Path, img_size: Any = None, legacy: bool = False) -> ModelMeta:
    """The metadata of a read ``ov.Model``: ours from ``rt_info``, else inferred from its shapes and ops
    (``legacy``: the RGB / 255 / ImageNet input contract; a graph decodes its boxes when it holds the decode's
    ``Exp``)."""
    if len(model.inputs) != 1:
        raise ArtefactError(f"{xml.name}: expected one image input, found {len(model.inputs)}")
    in_dims = _dims(model.inputs[0].get_partial_shape())
    names = [_name(p, i) for i, p in enumerate(model.outputs)]
    if model.has_rt_info(META_KEY):
        return stored_meta(model.get_rt_info(META_KEY).astype(str), in_dims, names, xml.name)
    out_dims = _dims(model.outputs[0].get_partial_shape())
    return meta_from_graph(in_dims, names, out_dims, xml.name, img_size=parse_img_size(img_size) if img_size else None,
                           legacy=legacy, format="openvino",
                           decode_in_graph=any(op.get_type_name() == "Exp" for op in model.get_ops()))


@register_backend("openvino", suffixes=(".xml",), package="openvino", extra="openvino",
                  devices=("cpu", "gpu", "npu", "auto"), folder_pattern="*.xml")
class OpenVINOBackend(Backend):
    """OpenVINO Runtime on an IR (Intel CPU, GPU, NPU)."""

    option_names = frozenset({"cache_dir", "hint", "inference_precision", "threads"})
    option_values = {"hint": tuple(HINTS), "inference_precision": tuple(PRECISIONS)}

    def _load(self) -> None:
        opts = self.options
        self.xml = find_ir(Path(self.path))
        self._device = ov_device(self.device)
        core = _core()
        check_readable(self.xml.with_suffix(".bin"))  # the XML is read first (find_ir)
        try:
            model = core.read_model(str(self.xml))
        except Exception as e:  # OpenVINO raises RuntimeError for unparsable XML, bad offsets, ...
            raise ArtefactError(f"{self.xml} is not a readable OpenVINO IR ({_first_line(e)}); re-export it") from None
        meta = read_ov_meta(model, self.xml, opts.get("img_size"), bool(opts.get("legacy")))
        check_weights_digest(self.xml.with_suffix(".bin"), meta.extra.get(OPENVINO_BIN_SHA256), self.xml)
        if self._device.startswith("NPU") and model.inputs[0].get_partial_shape().is_dynamic:
            meta = meta.with_(batch=meta.batch or 1, dynamic_hw=False)
            model.reshape({model.inputs[0]: [meta.batch, 3, *meta.input_size]})
        self.meta = meta
        self._model = model
        self._config_dict = self._config(meta)
        self._plain: _Compiled | None = None
        self._canvas = self._compile(self._canvas_model(model)) if self._canvas_applies(model) else None
        self._n_outputs = len(self.compiled.outputs)

    def _compile(self, model: Any) -> _Compiled:
        config = self._compile_config()
        try:
            return _Compiled(_core().compile_model(model, self._device, config))
        except Exception as e:
            raise ArtefactError(f"OpenVINO could not compile {self.xml} for {self._device} "
                                f"({_first_line(e)})") from None

    def _compile_config(self) -> dict[str, Any]:
        """The config, with ``EXCLUSIVE_ASYNC_REQUESTS`` for the CPU in a forked child that inherited idle CPU
        executors (the plugin would hand the compile one, without threads here, and it would never return)."""
        if not _IDLE_EXECUTORS_STALE or not self._uses_cpu():
            return self._config_dict
        global _EXCLUSIVE_EXECUTOR_PID
        if _EXCLUSIVE_EXECUTOR_PID not in (None, os.getpid()):
            raise BackendUnavailable(
                f"OpenVINO cannot compile {self.xml.name} for the CPU in this process: it was forked from a "
                "process that had already compiled one after a fork, and both of the CPU plugin's executors "
                "it would use have no threads here; open the model before forking, or use the 'spawn' start method")
        _EXCLUSIVE_EXECUTOR_PID = os.getpid()
        if self.options.get("threads"):
            log.warning("threads=%s is not applied to %s: in a process forked after its parent released an OpenVINO "
                        "model, the CPU runs it on OpenVINO's exclusive executor (all CPUs)",
                        self.options["threads"], self.xml.name)
        config = dict(self._config_dict)
        if self._device.startswith("CPU"):
            config[EXCLUSIVE] = True
        else:  # AUTO / MULTI / HETERO: the CPU's own settings
            properties = {device: dict(values) for device, values in config.get("DEVICE_PROPERTIES", {}).items()}
            properties.setdefault("CPU", {})[EXCLUSIVE] = True
            config["DEVICE_PROPERTIES"] = properties
        return config

    def _uses_cpu(self) -> bool:
        """Whether the CPU plugin may compile the model (the CPU, or a virtual device that may pick it)."""
        return self._device.startswith("CPU") or self._cpu_is_a_candidate()

    def _canvas_applies(self, model: Any) -> bool:
        shape = model.inputs[0].get_partial_shape()
        return (self._runtime_converts_canvases and shape.rank.is_static and shape.rank.get_length() == 4
                and shape[1].is_static and shape[1].get_length() == 3)

    @staticmethod
    def _canvas_model(model: Any) -> Any:
        """``model`` behind a uint8 NHWC input: OpenVINO's pre-processing converts (fused into the first layer)."""
        from openvino import Layout, Type
        from openvino.preprocess import PrePostProcessor

        ppp = PrePostProcessor(model.clone())
        ppp.input().tensor().set_element_type(Type.u8).set_layout(Layout("NHWC"))
        ppp.input().model().set_layout(Layout("NCHW"))
        return ppp.build()

    def _plain_model(self) -> _Compiled:
        """The IR as it is (float ``[N, 3, H, W]`` input), compiled when first needed (not after close)."""
        self._check_open()
        if self._plain is None:
            with self._compile_lock:
                self._check_open()  # closed while this call waited: a model compiled now would never be freed
                if self._plain is None:
                    self._plain = self._compile(self._model)
        return self._plain

    @property
    def compiled(self) -> Any:
        """The compiled model that serves the pipeline (the canvas one when there is one)."""
        return (self._canvas or self._plain_model()).compiled

    def _config(self, meta: ModelMeta) -> dict[str, Any]:
        opts = self.options
        hint = str(opts.get("hint") or "latency").lower()  # words checked by Backend.check_options
        config: dict[str, Any] = {"PERFORMANCE_HINT": HINTS[hint]}
        if opts.get("threads") is not None:  # an integer >= 0 (Backend.check_options); 0: OpenVINO decides
            config["INFERENCE_NUM_THREADS"] = int(opts["threads"])
        precision = opts.get("inference_precision")
        if precision is None and (self._device.startswith("CPU") or meta.precision != "fp16"):
            precision = "f32"
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = PRECISIONS[str(precision).lower()]
        elif self._cpu_is_a_candidate():
            # an FP16 IR on AUTO / MULTI / HETERO keeps each device's default (f16 on Intel GPUs), but not the
            # CPU's: bf16 on CPUs that have it (raw boxes off by ~20 px on dog.jpg, AP -0.002), so f32 there
            config["DEVICE_PROPERTIES"] = {"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}
        if opts.get("cache_dir"):
            folder = Path(opts["cache_dir"])
            try:  # made here: OpenVINO's own failure to make it reads as the artefact's
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"the openvino backend's cache_dir {folder} cannot be made ({e.strerror or e}); "
                                 "give a writable folder, or drop the option") from None
            config["CACHE_DIR"] = str(folder)
        return config

    def _cpu_is_a_candidate(self) -> bool:
        """Whether the CPU is among the devices a virtual device (AUTO, MULTI, HETERO) may run the model on."""
        base, listed, targets = _device_parts(self._device)
        if base not in VIRTUAL_DEVICES:
            return False
        return not targets or "CPU" in {t.split(".")[0] for t in targets}

    @property
    def compute_precision(self) -> str:
        """An INT8 IR's; else the precision the compiled model says it computes in (a CPU without FP16
        arithmetic takes an f16 hint and runs BF16 where it has that, else FP32), or where a plugin does not say
        (AUTO, MULTI, HETERO), the hint given when a device it runs on has that arithmetic, else what the CPU
        makes of it (an FP16 IR without a hint runs FP32 on the CPU, its device default elsewhere)."""
        if self.meta.precision == "int8":
            return "int8"
        try:
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except (RuntimeError, AttributeError):  # a plugin (AUTO, MULTI) that does not report it
            hint = self._config_dict.get("INFERENCE_PRECISION_HINT")
            if hint is None:  # an FP16 IR: the device's default, f32 on the CPU (DEVICE_PROPERTIES)
                return self.meta.precision if self._runs_off_cpu() else "fp32"
            name = precision_name(hint)
            if name == "fp32" or self._executes_in(name):
                return name
            # the CPU plugin takes an f16 hint without FP16 arithmetic as bf16 where it has that, else f32
            return "bf16" if name == "fp16" and self._executes_in("bf16") else "fp32"
        return precision_name(hint)

    def _execution_devices(self) -> list[str] | None:
        """The devices the compiled model runs on, or None when the plugin does not say."""
        try:
            return [str(d) for d in self.compiled.get_property("EXECUTION_DEVICES")]
        except (RuntimeError, AttributeError, TypeError):
            return None

    def _runs_off_cpu(self) -> bool:
        """Whether a device other than the CPU runs the compiled model (True when the plugin does not say)."""
        devices = self._execution_devices()
        return devices is None or any(not d.upper().startswith("CPU") for d in devices)

    def _executes_in(self, precision: str) -> bool:
        """Whether a device the compiled model runs on has ``precision``'s arithmetic (its optimisation
        capabilities name it: ``FP16``, ``BF16``); True when the plugin does not say where it runs."""
        devices = self._execution_devices()
        if devices is None:
            return True
        core = _core()
        capability = precision.replace("fp", "FP").upper()
        for device in devices:
            try:
                if capability in core.get_property(device, "OPTIMIZATION_CAPABILITIES"):
                    return True
            except RuntimeError:
                return True
        return False

    @classmethod
    def _check_device(cls, device: str) -> None:
        """Every device the name lists is present here (AUTO alone picks among those that are); refused before
        the model is read, not as a compile failure of the artefact."""
        base, listed, targets = _device_parts(ov_device(device))
        if base not in VIRTUAL_DEVICES:
            if listed:
                raise InputError(f"OpenVINO device {base} takes no ':' part, got {device!r}; use cpu, gpu.N, npu, "
                                 "or auto:gpu,cpu to list candidates")
            targets = [base]
        elif not targets:
            if base != "AUTO":
                raise InputError(f"OpenVINO {base} runs on the devices it lists, e.g. {base.lower()}:gpu,cpu")
            return
        available = list(_core().available_devices)
        for target in targets:
            family = target.split(".")[0]
            if target not in available and not (target == family and any(d.split(".")[0] == family
                                                                           for d in available)):
                raise BackendUnavailable(f"OpenVINO device {target} is not available here "
                                         f"(found: {', '.join(available) or 'none'})")

    def _infer(self, batch: Any) -> list[Any]:
        return self._plain_model().run(to_numpy(batch), self._n_outputs)

    def _infer_canvas(self, canvases: Any) -> list[Any]:
        if self._canvas is None:
            return super()._infer_canvas(canvases)
        return self._canvas.run(np.ascontiguousarray(to_numpy(canvases)), self._n_outputs)

    def _reset_call_state(self) -> None:
        super()._reset_call_state()
        self._compile_lock = threading.Lock()  # guards compiling the plain model (held by no thread of a forked child)

    def _close(self) -> None:
        with self._compile_lock:  # after a model being compiled: it is released too
            for c in (self._plain, self._canvas):
                if c is not None:
                    c.close()
            self._plain = self._canvas = None
            self._model = None  # the read IR keeps its .bin open and mapped


class _Compiled:
    """A compiled model and its pool of infer requests (created on demand, reused; one per concurrent call)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._idle.put(compiled.create_infer_request())

    def run(self, x: np.ndarray, n_outputs: int) -> list[np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            results = request.infer(x, share_inputs=True)
            return [results[i] for i in range(n_outputs)]
        finally:
            self._idle.put(request)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        if self.compiled is not None:
            _note_release()
        self.compiled = None

    def __del__(self, note_release: Any = _note_release) -> None:  # bound here: still callable at interpreter exit
        if self.compiled is not None:  # dropped without close (its backend was garbage-collected)
            note_release()


def _first_line(e: BaseException) -> str:
    """The informative line of an OpenVINO exception (they start with source locations and checks)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from ", "Check ")) and any(c.isalpha() for c in ln)]
    return ((useful or lines or [type(e).__name__])[-1])[:200]
