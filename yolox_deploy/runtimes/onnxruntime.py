"""ONNX Runtime backend: ``.onnx`` files on the CPU, a CUDA GPU, or through ONNX Runtime's TensorRT provider.

Devices: ``cpu``; ``cuda`` / ``cuda:N`` (``CUDAExecutionProvider``; outputs stay on the GPU as torch CUDA
tensors through IO binding, so decode and NMS run there too); ``tensorrt`` / ``tensorrt:N``
(``TensorrtExecutionProvider`` with CUDA as fallback for unsupported nodes).

Options: ``threads`` (intra-op threads; default: ONNX Runtime's choice), ``opt_level`` (``all`` (default),
``extended``, ``basic``, ``disable``), ``img_size`` (dynamic-size graphs; must match a fixed one),
``num_classes`` (checked against the graph), ``legacy`` (RGB/255/ImageNet input, for files without our
metadata), ``half`` and ``trt_cache`` (TensorRT provider: FP16 engines, engine cache folder, default
``<cache>/ort-tensorrt``; one that cannot be written turns the cache off with a warning),
``canvas_in_graph`` (default True, see below), ``spin_between_runs`` (default False: on the CPU the thread
pool stops spinning when a run returns, so the pipeline's work between runs has the cores).

Canvas batches (the ``Detector``'s uint8 ``[N, H, W, 3]``): on the CPU they run through a second session
of the same graph behind a uint8 NHWC input (:func:`canvas_input_graph`; needs ``onnx``), so ONNX Runtime
does the layout change and float conversion instead of numpy; the session of the file as it is opens
again only when a float batch comes. On CUDA they are uploaded as uint8 and converted on the GPU.

Metadata comes from the session's custom metadata map (no ``onnx`` package needed); files without it (the
authors' releases) get :func:`~yolox_deploy.meta.infer_meta` from the graph's input and output shapes, and
their variant from the graph's parameter count (with ``onnx``).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtefactError, BackendUnavailable, InputError
from ..meta import META_KEY, NMS_OUTPUTS, ModelMeta, meta_from_graph, stored_meta
from ..ops.letterbox import canvas_to_tensor
from ..utils.arrays import to_numpy
from ..utils.files import cache_dir, check_readable
from ..utils.onnxgraph import described_by_graph, graph_inputs, tensor_dims
from ..utils.sizes import parse_img_size
from .base import Backend, register_backend, with_input_size

log = logging.getLogger(__name__)

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
CANVAS_INPUT = "canvas"  # the uint8 NHWC input of the canvas session
# the image input's element types a canvas batch converts to exactly (uint8: the 0-255 pixels as they are)
_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                 "tensor(uint8)": np.uint8}
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

    option_names = frozenset({"half", "opt_level", "spin_between_runs", "threads", "trt_cache"})
    option_values = {"opt_level": tuple(OPT_LEVELS)}

    @classmethod
    def _check_device(cls, device: str) -> None:
        import onnxruntime as ort

        kind, _ = parse_device(device)
        available = set(ort.get_available_providers())
        if kind != "cpu" and "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(f"device {device!r} needs ONNX Runtime with CUDA (pip install onnxruntime-gpu); "
                                     "this onnxruntime only has " + ", ".join(sorted(available)))
        if kind == "tensorrt" and "TensorrtExecutionProvider" not in available:
            raise BackendUnavailable(f"device {device!r} needs ONNX Runtime's TensorRT provider (onnxruntime-gpu "
                                     "built with TensorRT, and TensorRT installed); use device cuda instead")

    def _load(self) -> None:
        import onnxruntime as ort

        path = Path(self.path)
        self._kind, self._device_id = parse_device(self.device)
        self._providers_list = self._providers()
        if path.is_dir():
            raise InputError(f"{path} is a folder; the onnxruntime backend opens .onnx files (drop --backend for the "
                             "runtime its contents imply)")
        if not path.is_file():
            raise InputError(f"ONNX file not found: {path}")
        if self._kind != "tensorrt":  # options of the TensorRT provider, said rather than dropped
            if self.options.get("half"):
                log.warning("half applies with the TensorRT execution provider (device tensorrt) only; ONNX Runtime "
                            "runs this graph in the precision it was exported in")
            if self.options.get("trt_cache"):
                log.warning("trt_cache is the TensorRT execution provider's engine cache (device tensorrt); "
                            "on %s it is not used", self.device)
        if path.stat().st_size == 0:
            raise ArtefactError(f"{path.name} is empty (0 bytes); re-export it")
        check_readable(path)
        self._file, self._file_identity = path.resolve(), _identity(path)  # what a later re-open must find
        self._options = self._session_options(ort)
        self._session = self._new_session(str(path))
        wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}.get(self._kind)
        if wanted and wanted not in self._session.get_providers():  # ORT falls back to the CPU when a GPU EP fails
            raise BackendUnavailable(f"ONNX Runtime could not start {wanted} for device {self.device!r} (it fell "
                                     "back to the CPU); check the CUDA / cuDNN / TensorRT libraries it needs")
        read_graph = functools.cache(lambda: _load_graph(path))  # read once, for what needs it
        # the input's element type: float32, float16 for a graph converted to half precision by other tools, ...
        in_type = self._session.get_inputs()[0].type
        self._input_dtype = _INPUT_DTYPES.get(in_type)
        if self._input_dtype is None:
            raise ArtefactError(f"{path.name}: its image input is {in_type}, not float, float16, double or uint8 "
                                "pixels; no YOLOX image input has that type")
        self.meta = self._read_meta(path, read_graph)
        if self._input_dtype == np.uint8 and not self.meta.preprocess.is_identity:
            raise InputError(f"{path.name} takes uint8 pixels, which the legacy input (RGB / 255, ImageNet mean/std) "
                             "cannot be; drop legacy (--legacy)")
        self._input_name = self._session.get_inputs()[0].name
        outputs = self._session.get_outputs()
        self._output_names = [o.name for o in outputs]
        self._io_binding = self._kind != "cpu" and self._torch_cuda_available()
        if self._io_binding:
            import torch

            self._torch = torch
            self._torch_device = torch.device("cuda", self._device_id)
            # the outputs the pipeline reads (a graph made elsewhere may have more, which ORT keeps to itself)
            read = outputs[:len(NMS_OUTPUTS) if self.meta.nms_in_graph else 1]
            names = [_TORCH_DTYPES[o.type] for o in read]
            self._output_dtypes = [(getattr(torch, n), np.dtype(n)) for n in names]  # (torch, numpy) per output
        self._canvas_session = None if self._io_binding else self._open_canvas_session(read_graph)
        if self._canvas_session is not None:
            self._session = None  # the canvas session serves the pipeline; float batches re-open this on demand

    def _session_options(self, ort: Any) -> Any:
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only; ORT's warnings about unused initializers etc. are noise here
        threads = self.options.get("threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        level = str(self.options.get("opt_level") or "all").lower()  # words checked by Backend.check_options
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
        if self._kind == "cpu" and not self.options.get("spin_between_runs"):
            # the pool's threads stop spinning when a run returns: the pipeline's letterbox and NMS between
            # two runs get the cores (ORT still spins within a run)
            so.add_session_config_entry("session.force_spinning_stop", "1")
        return so

    def _new_session(self, model: str | bytes) -> Any:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(model, sess_options=self._options, providers=self._providers_list)
        except Exception as e:  # InvalidProtobuf, InvalidGraph, Fail, NotImplemented...: never let ORT crash us
            raise self._load_error(Path(self.path), e) from None

    @property
    def session(self) -> Any:
        """The session of the artefact as it is (float input ``[N, 3, H, W]``), opened again when needed."""
        self._check_open()
        if self._session is None:
            with self._session_lock:
                self._check_open()  # closed while this call waited: a session made now would never be freed
                if self._session is None:
                    if _identity(self._file) != self._file_identity:  # replaced, changed or gone since
                        raise ArtefactError(f"{self._file} is not the file this backend opened (it changed or "
                                            "went away since); open it again")
                    self._session = self._new_session(str(self._file))
        return self._session

    def _open_canvas_session(self, read_graph: Callable[[], Any]) -> Any:
        """A session of the graph behind a uint8 NHWC input (see :func:`canvas_input_graph`), or None.

        Only for the plain BGR 0-255 contract, a float ``[N, 3, H, W]`` input and with ``onnx`` installed;
        otherwise (or if ``onnx`` cannot read what ONNX Runtime could) canvases are converted in numpy.
        ``read_graph``: the file's ONNX protobuf or None (changed here).
        """
        if not self._runtime_converts_canvases:
            return None
        graph = read_graph()
        adapted = None if graph is None else canvas_input_graph(graph)
        return None if adapted is None else self._new_session(adapted.SerializeToString())

    # --- loading -------------------------------------------------------------------------------------
    def _providers(self) -> list[Any]:
        """The execution providers for the device (their presence was checked by :meth:`_check_device`)."""
        if self._kind == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self._device_id})
        if self._kind == "cuda":
            return [cuda, "CPUExecutionProvider"]
        cache = Path(self.options.get("trt_cache") or cache_dir() / "ort-tensorrt")
        try:
            cache.mkdir(parents=True, exist_ok=True)
            usable = os.access(cache, os.W_OK)
        except OSError:
            usable = False
        if not usable:  # a read-only home (a device's read-only root): engines are built at each open instead
            log.warning("the TensorRT engine cache %s cannot be written; engines are built again at each open "
                        "(give trt_cache a writable folder, or set $YOLOX_DEPLOY_CACHE)", cache)
        trt = ("TensorrtExecutionProvider", {
            "device_id": self._device_id, "trt_fp16_enable": bool(self.options.get("half")),
            "trt_engine_cache_enable": usable, **({"trt_engine_cache_path": str(cache)} if usable else {}),
        })
        return [trt, cuda, "CPUExecutionProvider"]

    def _load_error(self, path: Path, e: Exception) -> Exception:
        text = str(e).replace("\n", " ")
        if "EfficientNMS_TRT" in text:
            return ArtefactError(f"{path.name} holds the TensorRT NMS plugin (EfficientNMS_TRT), which only TensorRT "
                                 "runs; build an engine from it, or export with --nms for ONNX Runtime")
        if self._kind != "cpu" and any(k in text for k in ("CUDA", "cuda", "TensorRT", "libcu", "libnv")):
            return BackendUnavailable(f"ONNX Runtime could not start on {self.device!r}: {text[:200]}")
        missing = missing_external_data(path)
        if missing:
            return ArtefactError(f"{path.name} keeps its weights in {', '.join(missing)}, which "
                                 f"{'is' if len(missing) == 1 else 'are'} not beside it in {path.parent}; copy "
                                 f"{'it' if len(missing) == 1 else 'them'} there with the model")
        return ArtefactError(f"{path.name} is not a valid ONNX model or ONNX Runtime cannot load it "
                             f"({type(e).__name__}: {text[:200]}); re-export it")

    @staticmethod
    def _torch_cuda_available() -> bool:
        try:
            import torch
        except ImportError:
            return False
        return torch.cuda.is_available()

    def _read_meta(self, path: Path, read_graph: Callable[[], Any]) -> ModelMeta:
        opts = self.options
        custom = self.session.get_modelmeta().custom_metadata_map
        size = parse_img_size(opts["img_size"]) if opts.get("img_size") else None
        inp = self.session.get_inputs()
        if len(inp) != 1:
            raise ArtefactError(f"{path.name}: expected one image input, found {len(inp)}")
        in_shape = list(inp[0].shape)
        outs = self.session.get_outputs()
        if META_KEY in custom:
            meta = stored_meta(custom[META_KEY], in_shape, [o.name for o in outs], path.name)
        else:
            out_shape = list(outs[0].shape)
            if len(out_shape) == 3 and not (isinstance(out_shape[2], int) and out_shape[2] > 0):
                out_shape[2] = self._head_width(in_shape, size) or out_shape[2]  # torch's dynamic axes leave it symbolic
            meta = meta_from_graph(in_shape, [o.name for o in outs], out_shape, path.name, img_size=size,
                                   legacy=bool(opts.get("legacy")), format="onnx",
                                   decode_in_graph=bool(opts.get("decode_in_graph")))
            graph = read_graph()  # its variant, precision and decoding, which the file does not record
            if graph is not None:
                meta = meta.with_(**described_by_graph(graph.graph))
            elif inp[0].type == "tensor(float16)":
                meta = meta.with_(precision="fp16")
        meta = with_input_size(meta, size, path.name)
        if meta.nms_in_graph and meta.extra.get("nms_plugin") == "tensorrt" and self._kind != "tensorrt":
            raise ArtefactError(f"{path.name} holds the TensorRT NMS plugin, which only TensorRT runs; "
                                "use device 'tensorrt' or build an engine from it")
        return meta

    def _head_width(self, in_shape: list[Any], size: tuple[int, int] | None) -> int | None:
        """The width (5 + classes) of a head output the graph leaves symbolic: that of one run on a blank image at
        the graph's size (or ``size``), else 5 + the classes given; None when neither says."""
        dims = [d if isinstance(d, int) and d > 0 else None for d in in_shape]
        hw = tuple(dims[2:]) if len(dims) == 4 and None not in dims[2:] else size
        if len(dims) == 4 and dims[1] in (None, 3) and hw is not None:
            blank = np.zeros((dims[0] or 1, 3, *hw), self._input_dtype)
            try:
                out = self.session.run([self.session.get_outputs()[0].name], {self.session.get_inputs()[0].name: blank})[0]
            except Exception:  # a graph of another form: the shapes' own message says what it is
                out = None
            if out is not None and out.ndim == 3:
                return int(out.shape[2])
        names, count = self.options.get("class_names"), self.options.get("num_classes")
        return 5 + (len(names) if names else int(count)) if names or count else None

    # --- inference -----------------------------------------------------------------------------------
    @property
    def output_device(self) -> str:
        return f"cuda:{self._device_id}" if self._io_binding else "cpu"

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really uses, in priority order."""
        return (self._canvas_session or self.session).get_providers()

    def _infer(self, batch: Any) -> list[Any]:
        if self._io_binding:
            return self._infer_bound(batch)
        batch = to_numpy(batch)
        if batch.dtype != self._input_dtype:
            batch = batch.astype(self._input_dtype)
        return self.session.run(self._output_names, {self._input_name: batch})

    def _infer_canvas(self, canvases: Any) -> list[Any]:
        if self._io_binding:
            return self._infer_bound(canvas_to_tensor(canvases, self.meta.preprocess, self._torch_device))
        if self._canvas_session is None:
            return super()._infer_canvas(canvases)
        return self._canvas_session.run(self._output_names, {CANVAS_INPUT: np.ascontiguousarray(to_numpy(canvases))})

    def _output_shapes(self, n: int, h: int, w: int) -> list[tuple[int, ...]]:
        from ..utils.sizes import num_anchors

        m = self.meta
        if m.nms_in_graph:
            k = int(m.max_det or self.session.get_outputs()[1].shape[1])
            return [(n, 1), (n, k, 4), (n, k), (n, k)]
        return [(n, num_anchors((h, w), m.strides), 5 + m.num_classes)]

    def _infer_bound(self, batch: Any) -> list[Any]:
        """CUDA path: the input and the outputs the pipeline reads bound to torch CUDA tensors, no host round trip
        for them; a graph's further outputs (one made elsewhere may have some) stay with ONNX Runtime."""
        torch = self._torch
        dtype = getattr(torch, np.dtype(self._input_dtype).name)
        x = torch.as_tensor(batch).to(self._torch_device, dtype, non_blocking=True).contiguous()
        n, _, h, w = x.shape
        outputs = [torch.empty(shape, dtype=dtype, device=self._torch_device)
                   for shape, (dtype, _) in zip(self._output_shapes(n, h, w), self._output_dtypes, strict=True)]
        binding = self.session.io_binding()
        binding.bind_input(self._input_name, "cuda", self._device_id, self._input_dtype, tuple(x.shape), x.data_ptr())
        for name, out, (_, np_dtype) in zip(self._output_names, outputs, self._output_dtypes):
            binding.bind_output(name, "cuda", self._device_id, np_dtype, tuple(out.shape), out.data_ptr())
        for name in self._output_names[len(outputs):]:  # outputs the pipeline does not read: ORT allocates them
            binding.bind_output(name, "cuda", self._device_id)
        torch.cuda.current_stream(self._torch_device).synchronize()  # the upload ran on torch's stream
        self.session.run_with_iobinding(binding)  # returns once ORT's stream is done
        return outputs

    def _reset_call_state(self) -> None:
        super()._reset_call_state()
        self._session_lock = threading.Lock()  # guards re-opening the session (held by no thread of a forked child)

    def _close(self) -> None:
        with self._session_lock:  # after a session being made: it is dropped too
            self._session = self._canvas_session = None


def missing_external_data(path: Path) -> list[str]:
    """The external data files (``onnx.save_model(..., save_as_external_data=True)``) an ONNX file names that
    are not beside it; empty when there are none, or when ``onnx`` is not installed to tell."""
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # no onnx, or a file onnx cannot read either: ONNX Runtime's own message stands
        return []
    files = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    return sorted(f for f in files if not (path.parent / f).is_file())


def _identity(path: Path) -> tuple[int, ...] | None:
    """A file's identity and version (device, inode, size, modification time), or None when it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _load_graph(path: Path) -> Any | None:
    """The ONNX protobuf of ``path``, or None without ``onnx`` (or for a file only ONNX Runtime reads)."""
    try:
        import onnx

        return onnx.load(str(path))
    except Exception as e:  # ImportError, or a file only ONNX Runtime reads: what needs it does without
        log.debug("%s not read with onnx: %s", path.name, e)
        return None


def canvas_input_graph(model: Any) -> Any | None:
    """``model`` (an ``onnx.ModelProto`` with one float ``[N, 3, H, W]`` image input) behind a uint8
    ``[N, H, W, 3]`` input named :data:`CANVAS_INPUT`: ``Transpose`` and ``Cast`` nodes in front, so the
    runtime does the layout change and conversion (ONNX Runtime's NCHWc pass folds the transpose into its
    input reorder). None when the graph's input is not of that form. The model is modified in place.
    """
    from onnx import TensorProto, helper

    inputs = graph_inputs(model.graph)
    if len(inputs) != 1:
        return None
    inp = inputs[0]
    tensor = inp.type.tensor_type
    dims = tensor_dims(inp)
    if tensor.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        return None
    used = {name for node in model.graph.node for name in node.output} | {i.name for i in model.graph.input}
    if {CANVAS_INPUT, CANVAS_INPUT + "_nchw"} & used:  # a graph's own tensor of that name (its input "canvas")
        return None
    n, _, h, w = dims
    canvas = helper.make_tensor_value_info(CANVAS_INPUT, TensorProto.UINT8, [n, h, w, 3])
    nodes = [helper.make_node("Transpose", [CANVAS_INPUT], [CANVAS_INPUT + "_nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", [CANVAS_INPUT + "_nchw"], [inp.name], to=TensorProto.FLOAT)]
    position = list(model.graph.input).index(inp)
    model.graph.input.remove(inp)
    model.graph.input.insert(position, canvas)
    for k, node in enumerate(nodes):
        model.graph.node.insert(k, node)
    return model
