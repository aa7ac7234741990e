"""The backend protocol and the registry that maps artefacts to backends.

A backend turns a preprocessed batch into the artefact's outputs. The batch is either the pipeline's canvas
batch (uint8 ``[N, H, W, 3]`` BGR, letterboxed: what ``Detector`` passes) or the model input itself
(``[N, 3, H, W]`` float32, normalised per the artefact's :class:`~yolox_deploy.meta.Preprocess`: what
verification and raw comparisons pass). Canvases become the model input where the runtime does it
cheapest (``_infer_canvas``): in the graph, on the device, or by default in numpy. The outputs are the
head output ``[N, A, 5 + C]`` (raw or decoded, per ``meta.decode_in_graph``) or, when ``meta.nms_in_graph``,
the four NMS outputs ``num_dets [N, 1], boxes [N, K, 4], scores [N, K], labels [N, K]``. It never
letterboxes, decodes, or draws: that is the pipeline's job (``detector.py``), shared by all backends.

Each backend module registers itself with :func:`register_backend`, which records its capability row (the
suffixes or folder layout it opens, the package it needs and the pip extra providing it, its devices).
Optional packages are imported inside ``_load``, so a missing one is reported, never fatal at import.
``_check_device`` refuses a device the backend does not know or this machine lacks, before any artefact is
read (``check_device``: what the export driver asks before it builds an artefact it will verify there).
"""

from __future__ import annotations

import abc
import os
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np

from ..errors import ArtefactError, BackendUnavailable, InputError
from ..meta import ModelMeta, Preprocess
from ..ops.letterbox import is_canvas_batch, to_model_input
from ..utils.arrays import to_numpy
from ..utils.files import file_sha256
from ..utils.packages import import_reason, missing_reason
from ..utils.sizes import check_stride_multiple
from ..utils.values import is_integer


@dataclass(frozen=True)
class BackendInfo:
    """A backend's capability row."""

    name: str
    suffixes: tuple[str, ...] = ()
    package: str | None = None
    extra: str | None = None
    devices: tuple[str, ...] = ("cpu",)
    folder_pattern: str | None = None

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when the package is installed, else ``(False, reason)`` (without importing it)."""
        reason = missing_reason(self.package, f"the {self.name} backend", self.extra)
        return reason is None, reason or ""

    def importable(self) -> tuple[bool, str]:
        """:meth:`available`, and the package imports (a broken install fails here, not inside a runtime)."""
        reason = import_reason(self.package, f"the {self.name} backend", self.extra)
        return reason is None, reason or ""


_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(name: str, *, suffixes: tuple[str, ...] = (), package: str | None = None,
                     extra: str | None = None, devices: tuple[str, ...] = ("cpu",),
                     folder_pattern: str | None = None) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator adding a backend to the registry under ``name``.

    ``suffixes``: file suffixes it opens (``.onnx``); ``folder_pattern``: a glob that marks a folder as its
    artefact (``*.xml`` for OpenVINO IR).
    """

    def wrap(cls: type[Backend]) -> type[Backend]:
        cls.info = BackendInfo(name, tuple(s.lower() for s in suffixes), package, extra, devices, folder_pattern)
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_backends() -> dict[str, type[Backend]]:
    """All registered backends by name (importing ``yolox_deploy.runtimes`` registers the built-in ones)."""
    return dict(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def _folder_artefacts(path: Path, pattern: str) -> list[Path]:
    return sorted(path.glob(pattern))


def one_model_file(folder: Path, files: list[Path], *, missing: str, kind: str, hint: str) -> Path:
    """The one model file ``files`` found in an artefact ``folder``: ``missing`` when there is none, and
    for several a message naming them, ending with ``hint`` (how to pick one)."""
    if not files:
        raise ArtefactError(missing)
    if len(files) > 1:
        raise ArtefactError(f"folder {folder} holds several {kind} ({', '.join(f.name for f in files)}); {hint}")
    return files[0]


def find_backend(path: str | os.PathLike) -> type[Backend]:
    """The backend class that opens ``path`` (a file by suffix, a folder by its layout)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"artefact not found: {p}")
    if p.is_dir():
        found = [cls for cls in _REGISTRY.values()
                 if cls.info.folder_pattern and _folder_artefacts(p, cls.info.folder_pattern)]
        if len(found) > 1:  # which of them the user meant is not for the registry's order to decide
            names = ", ".join(c.info.name for c in found)
            raise ArtefactError(f"folder {p} holds models of several runtimes ({names}); choose one with backend "
                                "(--backend), or give the model file")
        if found:
            return found[0]
        patterns = ", ".join(c.info.folder_pattern for c in _REGISTRY.values() if c.info.folder_pattern)
        raise ArtefactError(f"no model artefact in folder {p} (looked for {patterns or 'nothing'})")
    suffix = p.suffix.lower()
    for cls in _REGISTRY.values():
        if suffix in cls.info.suffixes:
            return cls
    known = sorted({s for c in _REGISTRY.values() for s in c.info.suffixes})
    raise ArtefactError(f"don't know how to run {p.name}: expected one of {', '.join(known)} or an exported folder")


# what the Detector hands every backend (artefacts without metadata need them: decode_in_graph says their output
# is decoded), and the canvas switch
COMMON_OPTIONS = frozenset({"model", "img_size", "class_names", "num_classes", "legacy", "decode_in_graph",
                            "canvas_in_graph"})
# options that are switches (True / False; None: not given) and thread counts (an integer >= 0, 0: the
# runtime's choice): "no" or 1.7 would otherwise be read as True or 1 without a word
BOOL_OPTIONS = frozenset({"legacy", "canvas_in_graph", "half", "fuse", "spin_between_runs", "decode_in_graph"})
COUNT_OPTIONS = frozenset({"threads"})
FOLDER_OPTIONS = frozenset({"cache_dir", "trt_cache"})  # a folder path (made when missing)


def asked_precision(options: Mapping[str, Any]) -> str | None:
    """The precision backend options ask a runtime to compute in, whatever the artefact's (``half``, OpenVINO's
    ``inference_precision``), as ``fp32`` / ``fp16`` / ``bf16``; None when they ask for none."""
    value = options.get("inference_precision")
    if value is not None:
        return precision_name(value)
    half = options.get("half")
    return None if half is None else "fp16" if half else "fp32"


def precision_name(word: Any) -> str:
    """A precision as OpenVINO or a user spells it (``f32``, ``F16``, ``bf16``) in our words (``fp32``, ``fp16``,
    ``bf16``)."""
    w = str(word).lower()
    return {"f32": "fp32", "f16": "fp16"}.get(w, w)


def with_input_size(meta: ModelMeta, size: tuple[int, int] | None, what: str) -> ModelMeta:
    """``meta`` run at ``size`` (the caller's ``img_size``); refused for an artefact of a fixed other size
    (``what`` names it)."""
    if size is None or size == tuple(meta.input_size):
        return meta
    if not meta.dynamic_hw:
        raise InputError(f"{what} was exported for {meta.input_size[0]}x{meta.input_size[1]} input, not "
                         f"{size[0]}x{size[1]}; re-export it for that size, or drop the image size (--img-size)")
    return meta.with_(input_size=size)


def check_weights_digest(weights: Path, digest: str | None, model_file: Path) -> None:
    """Refuse ``weights`` (the ``.bin`` beside ``model_file``) unless its SHA-256 is ``digest``, the one the
    export recorded (None: none recorded, nothing to check). A runtime reads another export's weights of the
    same size without complaint, and runs them."""
    if digest is not None and file_sha256(weights).hexdigest() != digest:
        raise ArtefactError(f"{weights} is not the .bin exported with {model_file.name} (its SHA-256 differs): the "
                            "weights belong to another export; re-export the model or copy its .bin")


def artefact_label(path: Any) -> str:
    """An artefact's file or folder name, for messages; ``the model`` for a model given in memory (not its
    repr, which runs to thousands of lines)."""
    return Path(path).name if isinstance(path, (str, os.PathLike)) else "the model"


# every backend made in this process: a child forked while a thread was inside one of their calls (or held
# their locks) must not inherit that call, which no thread of the child runs (its close would wait for it forever)
_BACKENDS: weakref.WeakSet[Backend] = weakref.WeakSet()


def _forget_parent_calls() -> None:
    """In a forked child: only the forking thread came along, so no call is in flight and no lock is held."""
    for backend in list(_BACKENDS):
        backend._reset_call_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_calls)


def refuse_copying(obj: object) -> NoReturn:
    """For ``__reduce__``: a loaded runtime is neither pickled (``multiprocessing``) nor copied; say what to do."""
    raise TypeError(f"a {type(obj).__name__} holds a loaded runtime and cannot be pickled or copied; open one in "
                    "each process (or for each copy) with the same arguments")


class Backend(abc.ABC):
    """One loaded artefact. Use as a context manager or call :meth:`close`.

    Subclasses implement ``_load`` (read the artefact, set ``self.meta``) and ``_infer``; the public methods
    check state and shapes. Set ``thread_safe = False`` when concurrent ``_infer`` calls must be serialised.
    ``option_names``: the options a backend reads besides :data:`COMMON_OPTIONS`; any other is refused (a
    misspelt option would otherwise be ignored without a word). ``option_values``: the words an option of
    ``option_names`` may take (any case), for those that take one of a few.
    """

    info: ClassVar[BackendInfo]
    thread_safe: ClassVar[bool] = True
    option_names: ClassVar[frozenset[str]] = frozenset()
    option_values: ClassVar[Mapping[str, Collection[str]]] = {}

    def __init__(self, path: str | os.PathLike | Any, *, device: str = "cpu", **options: Any) -> None:
        self.check_options(options)
        self.check_device(device)
        self.path = path
        self.device = device
        self.options = options
        self.meta: ModelMeta
        self._closed = False
        self._reset_call_state()
        _BACKENDS.add(self)
        self._load()
        decode = options.get("decode_in_graph")
        name = artefact_label(path)
        if decode is not None and bool(decode) != self.meta.decode_in_graph:  # an artefact that says otherwise
            self.close()
            has = "decodes its boxes" if self.meta.decode_in_graph else "has a raw output"
            raise InputError(f"{name} {has} (its metadata or graph says so); decode_in_graph={decode} "
                             "describes artefacts without metadata and cannot change that")
        if options.get("legacy") and self.meta.preprocess != Preprocess.legacy():
            self.close()
            raise InputError(f"{name} records its input contract (BGR 0-255, as YOLOX 0.1.1 and "
                             "later); legacy (--legacy) describes checkpoints and artefacts without metadata, and "
                             "was applied when it was exported if it was given then")

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse option names this backend does not read (besides :data:`COMMON_OPTIONS`), switches or
        thread counts of the wrong kind (:data:`BOOL_OPTIONS`, :data:`COUNT_OPTIONS`), and words an option
        does not take (``option_values``)."""
        unknown = sorted(set(options) - COMMON_OPTIONS - cls.option_names)
        if unknown:
            raise InputError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                             f"the {cls.info.name} backend; it takes {', '.join(sorted(COMMON_OPTIONS | cls.option_names))}")
        for name, value in options.items():
            if value is None:
                continue
            if name in BOOL_OPTIONS and not isinstance(value, (bool, np.bool_)):
                raise InputError(f"the {cls.info.name} backend's {name} option is True or False, not {value!r}")
            if name in FOLDER_OPTIONS and (not isinstance(value, (str, os.PathLike)) or not str(value)
                                           or (Path(value).exists() and not Path(value).is_dir())):
                raise InputError(f"the {cls.info.name} backend's {name} option is a folder, not {value!r}")
            if name in COUNT_OPTIONS and not (is_integer(value) and value >= 0):
                raise InputError(f"the {cls.info.name} backend's {name} option is an integer >= 0 (0: the runtime's "
                                 f"choice), not {value!r}")
            allowed = cls.option_values.get(name)
            if allowed is not None and str(value).lower() not in allowed:
                raise InputError(f"the {cls.info.name} backend's {name} option is one of {', '.join(allowed)}, "
                                 f"not {value!r}")

    @classmethod
    def check_device(cls, device: str) -> None:
        """Raise :class:`InputError` for a device name this backend does not know and
        :class:`BackendUnavailable` for one this machine lacks (or when the backend's package does not import),
        without reading an artefact: opening one checks this first, and the export driver asks before it builds
        what it will verify on ``device``."""
        ok, reason = cls.info.importable()
        if not ok:
            raise BackendUnavailable(reason)
        cls._check_device(device)

    # --- hooks ---------------------------------------------------------------------------------------
    @classmethod  # noqa: B027 - optional hook
    def _check_device(cls, device: str) -> None:
        """Refuse ``device`` (see :meth:`check_device`); backends that only learn at load time keep this."""

    @abc.abstractmethod
    def _load(self) -> None:
        """Open the artefact and set ``self.meta``."""

    @abc.abstractmethod
    def _infer(self, batch: Any) -> list[Any]:
        """Run one batch; return the outputs (numpy arrays, or torch tensors on ``output_device``)."""

    @property
    def _runtime_converts_canvases(self) -> bool:
        """Whether ``_infer_canvas`` may hand canvases to the runtime's own conversion: only for the plain BGR
        0-255 contract, and unless the ``canvas_in_graph=False`` option turns it off."""
        return self.meta.preprocess.is_identity and self.options.get("canvas_in_graph") is not False

    def _infer_canvas(self, canvases: Any) -> list[Any]:
        """Run a canvas batch (uint8 ``[N, H, W, 3]``). Default: the model input made in numpy, then ``_infer``.

        Backends override it to do the conversion inside their runtime or on their device.
        """
        return self._infer(to_model_input(to_numpy(canvases), self.meta.preprocess))

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (optional)."""

    # --- public --------------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int | None, int, int, int]:
        """``(batch or None when dynamic, 3, H, W)``."""
        return (self.meta.batch, 3, *self.meta.input_size)

    @property
    def compute_precision(self) -> str:
        """The precision the runtime computes in (``fp32``, ``fp16``, ``int8``): the artefact's, unless the
        runtime computes it otherwise (OpenVINO runs FP16 IRs in FP32 on CPUs)."""
        return self.meta.precision

    @property
    def output_device(self) -> str:
        """Where outputs live: ``"cpu"`` (numpy) or a torch device string such as ``"cuda:0"``."""
        return "cpu"

    def infer(self, batch: Any) -> list[Any]:
        """Run a canvas batch (uint8 ``[N, H, W, 3]``) or a model input (float ``[N, 3, H, W]``)."""
        with self._calls:
            self._check_open()
            self._in_flight += 1
        try:
            return self._checked_infer(batch)
        finally:
            with self._calls:
                self._in_flight -= 1
                if not self._in_flight:
                    self._calls.notify_all()

    def _checked_infer(self, batch: Any) -> list[Any]:
        if not hasattr(batch, "shape") or not hasattr(batch, "dtype"):
            raise InputError(f"expected a batch as a numpy array or a tensor, got {type(batch).__name__}")
        shape = tuple(batch.shape)
        canvas = is_canvas_batch(batch)
        want_n, _, want_h, want_w = self.input_shape
        if not canvas and (len(shape) != 4 or shape[1] != 3):
            raise InputError(f"expected a batch of shape [N, 3, H, W] (float) or [N, H, W, 3] (uint8 canvases), "
                             f"got {list(shape)} {batch.dtype}")
        if shape[0] == 0:  # the runtimes fail inside on an empty batch (ONNX Runtime's Reshape, NCNN's index)
            raise InputError("an empty batch (0 images): give at least one image")
        hw = shape[1:3] if canvas else shape[2:]
        if not self.meta.dynamic_hw and hw != (want_h, want_w):
            raise InputError(f"this artefact was exported for {want_h}x{want_w} input, got {hw[0]}x{hw[1]}; "
                             "re-export it for that size (or use its own size)")
        check_stride_multiple(hw, self.meta.strides)
        if want_n is not None and shape[0] != want_n:
            raise InputError(f"this artefact was exported for batch {want_n}, got {shape[0]}")
        run = self._infer_canvas if canvas else self._infer
        if self.thread_safe:
            return run(batch)
        with self._lock:
            return run(batch)

    def _reset_call_state(self) -> None:
        """No call in flight, no lock held (a new backend, or its copy in a forked child)."""
        self._lock = threading.Lock()  # serialises the calls of a backend that is not thread-safe
        self._calls = threading.Condition()  # guards _closed and the count of calls in flight
        self._in_flight = 0

    def _check_open(self) -> None:
        """Raise :class:`InputError` once the backend was closed (its runtime is released, never reacquired)."""
        if self._closed:
            raise InputError(f"this {self.info.name} backend was closed; open the artefact again")

    def close(self) -> None:
        """Release the runtime. Calls already running finish first (a runtime freed under a running call can
        crash the process: NCNN's does); later calls raise :class:`InputError`."""
        with self._calls:
            if self._closed:
                return
            self._closed = True
            while self._in_flight:
                self._calls.wait()
        self._close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if isinstance(self.path, (str, os.PathLike)) else artefact_label(self.path)
        return f"{type(self).__name__}({where!r}, device={self.device!r})"

    def __reduce__(self) -> NoReturn:
        refuse_copying(self)


