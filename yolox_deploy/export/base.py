"""The exporter protocol, the format registry and the options every format understands.

A format module defines one :class:`Exporter` subclass and registers it with :func:`register_format`, whose
capability row says which options the format accepts; :func:`yolox_deploy.export.export` rejects the others
with one sentence before any work starts. Exporters write into a temporary location that the driver renames
into place only when everything (including verification) succeeded.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailable, InputError
from ..meta import ModelMeta
from ..ops.postprocess import check_settings
from ..utils.packages import import_reason, missing_reason
from ..utils.values import is_finite_number, is_integer

# Options a format must declare in ``supports`` before a user may set them (see ``export._check_options``).
OPTIONAL_FEATURES = ("dynamic", "dynamic_hw", "max_batch", "half", "int8", "nms", "decode_in_graph", "opset",
                     "simplify", "workspace", "calib_method")
# In ``supports``: the format takes --half beside --int8 (FP16 for the layers INT8 leaves in float: TensorRT);
# elsewhere an INT8 artefact keeps those layers in FP32 and the two are alternatives.
INT8_WITH_HALF = "int8_with_half"
# The ONNX opsets the exporter writes (the TorchScript exporter's range that gives clean graphs).
MIN_OPSET, MAX_OPSET = 11, 20

# The head output ``[B, A, 5 + C]`` of the graphs we write, and the ``ModelMeta.extra`` key naming the tensor
# an in-graph NMS tail reads: verification exposes that tensor to compare an NMS graph's model part too.
HEAD_OUTPUT = "output"
NMS_HEAD_KEY = "nms_head"


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked for. ``img_size`` is ``(height, width)``, multiples of 32.

    - ``batch``: fixed batch size, or the optimum of the profile when ``dynamic``
    - ``dynamic``: dynamic batch; ``dynamic_hw``: dynamic height/width too
    - ``max_batch``: upper end of a dynamic-batch profile (TensorRT, with ``dynamic``); default ``max(8, batch)``
    - ``half`` / ``int8``: reduced precision; ``int8`` needs ``calib_images`` (a folder)
    - ``calib_count``: at most this many calibration images; ``calib_method``: ``entropy`` or ``minmax``
      (both with ``int8`` only)
    - ``decode_in_graph``: boxes decoded in the graph (also appended to a raw ONNX source); ``nms``: NMS in the
      graph (``conf``, ``iou``, ``max_det``, which apply with ``nms`` only)
    - ``opset``: ONNX opset; ``simplify``: run onnxslim/onnxsim on the ONNX
    - ``workspace``: TensorRT builder workspace (GiB); ``device``: where to build / verify
    - ``verify``: run the artefact after writing and compare with the torch model; ``verify_image``: on
      this image (default: a deterministic synthetic scene)
    - ``force``: overwrite an existing output
    """

    img_size: tuple[int, int] = (640, 640)
    batch: int = 1
    dynamic: bool = False
    dynamic_hw: bool = False
    max_batch: int | None = None
    half: bool = False
    int8: bool = False
    calib_images: Path | None = None
    calib_count: int = 100
    calib_method: str = "entropy"
    decode_in_graph: bool = True
    nms: bool = False
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 100
    opset: int = 17
    simplify: bool = True
    workspace: float = 4.0
    device: str = "cpu"
    verify: bool = True
    verify_image: Path | None = None
    force: bool = False

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.half else "fp32"

    def checked(self) -> ExportOptions:
        """These options with NumPy scalars as Python's (they reach the metadata's JSON); :class:`InputError`
        for an option of the wrong type (the Python API takes any value: ``dynamic="no"`` is truthy)."""
        kinds = {"bool": ("true or false", lambda v: isinstance(v, (bool, np.bool_)), bool),
                 "int": ("an integer", is_integer, int),
                 "int | None": ("an integer", lambda v: v is None or is_integer(v), lambda v: v if v is None else int(v)),
                 "float": ("a number", is_finite_number, float), "str": ("a string", lambda v: isinstance(v, str), str),
                 "Path | None": ("a path", lambda v: v is None or isinstance(v, Path), lambda v: v)}
        plain = {}
        for f in fields(self):
            kind = kinds.get(str(f.type))
            value = getattr(self, f.name)
            if kind is not None:
                if not kind[1](value):
                    raise InputError(f"export option {f.name} must be {kind[0]}, not {value!r}")
                plain[f.name] = kind[2](value)
        return replace(self, **plain)

    def changed_from_default(self) -> set[str]:
        """Names of the options set away from their default values."""
        return {f.name for f in fields(self) if getattr(self, f.name) != f.default}


def check_opset(opset: Any) -> None:
    """Refuse an ONNX opset the exporter does not write (:data:`MIN_OPSET`..:data:`MAX_OPSET`)."""
    if not (is_integer(opset) and MIN_OPSET <= opset <= MAX_OPSET):
        raise InputError(f"ONNX opset {opset} is not supported for export; use {MIN_OPSET}..{MAX_OPSET}")


def check_nms_options(options: ExportOptions) -> None:
    """Refuse in-graph NMS settings out of range (``conf`` / ``iou`` in [0, 1], ``max_det`` >= 1)."""
    if options.nms:  # a graph keeps a fixed number of boxes: no uncapped max_det
        check_settings(options.conf, options.iou, options.max_det, names=("conf", "iou"), uncapped=False)


def folder_stem(folder: Path, format_name: str) -> str:
    """``yolox_s_openvino`` -> ``yolox_s``: the name of the files a folder format writes in ``folder`` (the
    folder's name without ``_<format>``)."""
    name, suffix = folder.name, f"_{format_name}"
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name


@dataclass(frozen=True)
class FormatInfo:
    """A format's capability row."""

    name: str
    suffix: str  # appended to the source stem: ".onnx", "_openvino", "_ncnn", ".engine"
    is_dir: bool = False
    package: str | None = None
    extra: str | None = None
    supports: frozenset[str] = frozenset()
    accepts_onnx: bool = False  # can convert an existing ONNX file (e.g. the authors' released models)
    aliases: tuple[str, ...] = ()
    description: str = ""
    # Folder formats: glob patterns of every file the folder holds. ``--force`` replaces an existing folder
    # only when all its entries match (a previous artefact), never a folder holding anything else.
    # File formats: the names the artefact may have (the suffixes the runtimes open it by).
    artefact_files: tuple[str, ...] = ()
    backend: str = ""  # the runtimes backend that opens the artefacts (and verifies them); "" = the format's name

    def foreign_entries(self, folder: Path) -> list[str]:
        """Names of the entries of an existing ``folder`` this format does not write (none: it may be replaced).
        ``{stem}`` in a pattern of :attr:`artefact_files` stands for :func:`folder_stem` of the folder."""
        patterns = [pattern.format(stem=folder_stem(folder, self.name)) for pattern in self.artefact_files]
        return sorted(p.name for p in folder.iterdir() if p.is_dir() or not any(p.match(q) for q in patterns))

    def other_named_artefacts(self, entries: list[str]) -> bool:
        """Whether ``entries`` (:meth:`foreign_entries`) are whole artefacts of this format under other stems
        (``fp32.xml`` and ``fp32.bin`` in an OpenVINO folder named otherwise), each with all its files."""
        stems = {Path(e).stem for e in entries}
        whole = {p.format(stem=s) for s in stems for p in self.artefact_files if "{stem}" in p}
        return bool(whole) and whole == set(entries)

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when the package is installed, else ``(False, reason)`` (without importing it)."""
        reason = missing_reason(self.package, f"exporting to {self.name}", self.extra)
        return reason is None, reason or ""

    def require(self) -> None:
        """Raise :class:`BackendUnavailable` unless the package is installed and imports."""
        reason = import_reason(self.package, f"exporting to {self.name}", self.extra)
        if reason is not None:
            raise BackendUnavailable(reason)


@dataclass
class ExportSource:
    """What is exported: a torch model, or an existing ONNX file (then ``model`` is ``None``).

    The driver sets ``model`` to the deployment form (:func:`~yolox_deploy.nn.deploy.deploy_model`) and keeps
    the model as loaded in ``reference``.
    ``meta`` describes the source (labels, strides, preprocessing, and for ONNX its input size and whether
    it decodes). ``name`` is the stem used for default output names.
    """

    meta: ModelMeta
    name: str
    model: Any = None
    onnx_path: Path | None = None
    weights: Path | None = None
    reference: Any = None  # the model to verify against, when ``model`` is a transformed copy of it


@dataclass
class ExportResult:
    """Where the artefact is, what it says about itself, and the verification report (if run)."""

    path: Path
    meta: ModelMeta
    files: list[Path] = field(default_factory=list)
    verification: Any = None
    seconds: float = 0.0


_FORMATS: dict[str, type[Exporter]] = {}


def register_format(name: str, *, suffix: str, is_dir: bool = False, package: str | None = None,
                    extra: str | None = None, supports: tuple[str, ...] = (), accepts_onnx: bool = False,
                    aliases: tuple[str, ...] = (), description: str = "",
                    artefact_files: tuple[str, ...] = (), backend: str | None = None,
                    ) -> Callable[[type[Exporter]], type[Exporter]]:
    """Class decorator adding an exporter to the registry with its capability row."""

    def wrap(cls: type[Exporter]) -> type[Exporter]:
        cls.info = FormatInfo(name, suffix, is_dir, package, extra, frozenset(supports), accepts_onnx, aliases,
                              description or (cls.__doc__ or "").strip().splitlines()[0], tuple(artefact_files),
                              backend or name)
        _FORMATS[name] = cls
        return cls

    return wrap


def registered_formats() -> dict[str, type[Exporter]]:
    return dict(_FORMATS)


class Exporter(abc.ABC):
    """Writes one artefact kind.

    ``export`` receives the source, the options and a *temporary* destination (a file path, or an existing
    empty folder for ``is_dir`` formats) in a staging folder of its own, and returns the artefact's
    :class:`ModelMeta`. Files it writes beside a file artefact in that folder (TensorRT's sidecar and
    calibration cache) move into place with it and are listed in ``ExportResult.files``.
    """

    info: ClassVar[FormatInfo]

    def __init__(self, options: ExportOptions, output: Path | None = None) -> None:
        self.options = options
        self.output = output  # where the driver will put the artefact; exporters still write only to ``dest``

    @classmethod
    def availability(cls) -> str:
        """What a user of this installation is told about the format in listings: ``""`` when it can be
        written here, else why not."""
        ok, why = cls.info.available()
        return "" if ok else f"unavailable: {why}"

    @classmethod
    def require(cls) -> None:
        """Raise :class:`BackendUnavailable` before any work when this format cannot be written here.

        A format that does useful work without its package (TensorRT keeps its ONNX step for ``trtexec``)
        overrides this and reports the missing package from ``export`` instead.
        """
        cls.info.require()

    @classmethod
    def require_for(cls, options: ExportOptions) -> None:
        """Raise :class:`BackendUnavailable` before any work when ``options`` need a package not installed
        here beyond the format's own (e.g. the INT8 quantiser). Default: nothing more."""
        return None

    @classmethod
    def check_device(cls, options: ExportOptions) -> None:
        """Refuse, before any work, a verification that could not run: the format's runtime backend is not
        installed (while the format's own package is), or the device is one it cannot use."""
        from ..runtimes import registered_backends

        runner = registered_backends().get(cls.info.backend)
        if runner is None:
            return
        usable, reason = runner.info.importable()
        if not usable and cls.info.available()[0]:
            raise BackendUnavailable(f"{reason}: verification runs the artefact with it; or export with --no-verify")
        if usable:
            runner.check_device(options.device)

    def check_before(self, source: ExportSource) -> None:
        """Refuse, before any work, what is known only once the source is loaded and the output named.
        Default: nothing."""
        return None

    @abc.abstractmethod
    def export(self, source: ExportSource, dest: Path) -> ModelMeta:
        """Write the artefact to ``dest`` and return its metadata."""

    def artefact_meta(self, source: ExportSource) -> ModelMeta:
        """The metadata the artefact will carry, from the source and the options.

        An ONNX source with NMS in its graph keeps its own NMS settings (``max_det``, ``nms_conf``,
        ``nms_iou`` and the tensor the NMS reads): the graph is converted as it is, whatever the options say.
        """
        o = self.options
        if source.model is None and source.meta.nms_in_graph:
            max_det, extra = source.meta.max_det, dict(source.meta.extra)
        elif o.nms:
            max_det = o.max_det
            extra = {**source.meta.extra, "nms_conf": o.conf, "nms_iou": o.iou, NMS_HEAD_KEY: HEAD_OUTPUT}
        else:
            max_det, extra = None, dict(source.meta.extra)
        return source.meta.with_(
            input_size=tuple(o.img_size), batch=None if o.dynamic else o.batch, dynamic_hw=o.dynamic_hw,
            decode_in_graph=o.decode_in_graph or o.nms, nms_in_graph=o.nms, max_det=max_det,
            precision=o.precision, format=self.info.name, extra=extra,
        )
