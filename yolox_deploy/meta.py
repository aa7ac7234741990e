"""What an artefact must say about itself so a runtime needs no other flag.

A :class:`ModelMeta` travels with every artefact: as ONNX ``metadata_props``, OpenVINO ``rt_info`` or a
sidecar JSON (NCNN, TensorRT); checkpoints record the parts of it a model knows (variant, labels and their
category ids, the input size they were evaluated at). It is the contract between ``export/`` (writes it) and
``runtimes/`` (reads it): a runtime never needs the exporter; an exporter runs what it wrote through the
runtime to verify it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .data.coco import category_ids_problem, default_class_names, known_category_ids
from .errors import ArtefactError, InputError
from .utils.sizes import num_anchors, parse_img_size
from .utils.values import is_finite_number, is_integer, is_number

META_KEY = "yolox_deploy"  # the key under which the JSON is stored in ONNX / OpenVINO metadata
SCHEMA_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """The input contract: how a BGR uint8 image becomes the model's float input.

    YOLOX (current): letterbox with ``pad_value``, BGR, float 0-255, no normalisation. Legacy checkpoints
    (before YOLOX 0.1.1): RGB, divided by 255, then ImageNet mean/std (``Preprocess.legacy()``).
    """

    color: str = "bgr"
    scale: float = 1.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    pad_value: int = 114

    def __post_init__(self) -> None:
        if self.color not in ("bgr", "rgb"):
            raise ValueError(f"color must be 'bgr' or 'rgb', got {self.color!r}")

    @classmethod
    def legacy(cls) -> Preprocess:
        return cls(color="rgb", scale=1 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    @property
    def is_identity(self) -> bool:
        """True when the model takes the letterboxed BGR pixels as they are (the current YOLOX contract)."""
        return self.color == "bgr" and self.scale == 1.0 and self.mean is None and self.std is None


@dataclass(frozen=True)
class ModelMeta:
    """Everything a runtime needs to know about an artefact.

    ``input_size`` is ``(height, width)``. ``batch`` is the fixed batch size, or ``None`` when dynamic.
    ``decode_in_graph``: the output holds decoded boxes (cx, cy, w, h in input pixels) rather than raw
    offsets. ``nms_in_graph``: the artefact emits ``num_dets, boxes, scores, labels`` (xyxy, input pixels).
    ``category_ids``: the training dataset's category id of each class, when the model recorded them.
    """

    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    model: str | None = None
    strides: tuple[int, ...] = (8, 16, 32)
    decode_in_graph: bool = False
    nms_in_graph: bool = False
    max_det: int | None = None
    batch: int | None = 1
    dynamic_hw: bool = False
    precision: str = "fp32"
    preprocess: Preprocess = field(default_factory=Preprocess)
    format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    category_ids: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dataset_category_ids(self) -> tuple[int, ...] | None:
        """The dataset category id of each class: those recorded, else COCO's for COCO's 80 classes, else None."""
        return known_category_ids(self.class_names, self.category_ids)

    def with_(self, **changes: Any) -> ModelMeta:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    # --- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema"] = SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> ModelMeta:
        """Metadata as an artefact stores it, every field checked (artefacts are input: a hand-edited or damaged
        value must not reach a runtime); raises :class:`ArtefactError` naming the first bad field."""
        if not isinstance(d, dict):
            raise ArtefactError(f"artefact metadata is not a JSON object but {type(d).__name__}")
        d = dict(d)
        schema = d.pop("schema", SCHEMA_VERSION)
        if not is_integer(schema) or schema < 1:
            raise ArtefactError(f"artefact metadata has an invalid schema {schema!r}")
        if schema > SCHEMA_VERSION:
            raise ArtefactError(f"artefact metadata has schema {schema}, written by a newer yolox-deploy (this one "
                                f"reads up to {SCHEMA_VERSION}); upgrade it")
        missing = [k for k in ("class_names", "input_size") if k not in d]
        if missing:
            raise ArtefactError(f"artefact metadata lacks {' and '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        unknown = {k: d.pop(k) for k in list(d) if k not in known}
        try:
            pre = d.pop("preprocess", None) or {}
            if not isinstance(pre, dict):
                raise ValueError("preprocess is not an object")
            pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})
            meta = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}, preprocess=pre)
            if unknown:  # kept in extra, and checked there as extra's own entries (where they win)
                if not isinstance(meta.extra, dict):
                    raise ValueError(f"extra must be an object, got {meta.extra!r}")
                meta = meta.with_(extra={**meta.extra, **unknown})
            _check_fields(meta)
        except (TypeError, ValueError) as e:
            raise ArtefactError(f"artefact metadata is malformed: {e}") from None
        return meta

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ArtefactError(f"artefact metadata is not valid JSON ({e})") from None

    @classmethod
    def default(cls, num_classes: int, input_size: tuple[int, int], **kw: Any) -> ModelMeta:
        """Metadata for an artefact that carries none (e.g. the authors' released ONNX files)."""
        return cls(class_names=default_class_names(num_classes), input_size=tuple(input_size), **kw)


PRECISIONS = ("fp32", "fp16", "int8")
NCNN_BIN_BYTES = "ncnn_bin_bytes"  # extra: the size of the .bin an NCNN export wrote beside its .param
NCNN_BIN_SHA256 = "ncnn_bin_sha256"  # extra: and its SHA-256 (hex): another export's .bin of the same size
OPENVINO_BIN_SHA256 = "openvino_bin_sha256"  # extra: the SHA-256 of the .bin an OpenVINO export wrote beside its .xml


def _check_fields(m: ModelMeta) -> None:
    """Raise ValueError for the first field of ``m`` whose type or value no artefact of ours can have."""
    def positive_ints(values: Any) -> bool:
        return isinstance(values, tuple) and bool(values) and all(is_integer(v) and v > 0 for v in values)

    if not m.class_names or not all(isinstance(n, str) for n in m.class_names) or not isinstance(m.class_names, tuple):
        raise ValueError(f"class_names must be a list of strings, got {m.class_names!r}")
    if m.category_ids is not None and (problem := category_ids_problem(m.category_ids, len(m.class_names))):
        raise ValueError(problem)
    if not (positive_ints(m.input_size) and len(m.input_size) == 2):
        raise ValueError(f"input_size must be [height, width], got {m.input_size!r}")
    try:
        parse_img_size(m.input_size)  # the sizes any input may have: multiples of 32, at most MAX_SIDE
    except InputError as e:
        raise ValueError(f"input_size {list(m.input_size)}: {e}") from None
    if not positive_ints(m.strides) or list(m.strides) != sorted(set(m.strides)):
        raise ValueError(f"strides must be increasing positive integers, got {m.strides!r}")
    for name in ("decode_in_graph", "nms_in_graph", "dynamic_hw"):
        if not isinstance(getattr(m, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(m, name)!r}")
    for name in ("batch", "max_det"):
        value = getattr(m, name)
        if value is not None and not (is_integer(value) and value > 0):
            raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
    if m.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {m.precision!r}")
    for name in ("model", "format"):
        if getattr(m, name) is not None and not isinstance(getattr(m, name), str):
            raise ValueError(f"{name} must be a string or null, got {getattr(m, name)!r}")
    if not isinstance(m.extra, dict):
        raise ValueError(f"extra must be an object, got {m.extra!r}")
    for name in ("nms_conf", "nms_iou"):
        value = m.extra.get(name)
        if name in m.extra and not (is_number(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"extra.{name} must be a number in [0, 1], got {value!r}")
    value = m.extra.get(NCNN_BIN_BYTES)
    if value is not None and not (is_integer(value) and value > 0):
        raise ValueError(f"extra.{NCNN_BIN_BYTES} must be a positive integer, got {value!r}")
    for name in (NCNN_BIN_SHA256, OPENVINO_BIN_SHA256):
        value = m.extra.get(name)
        if value is not None and not (isinstance(value, str) and len(value) == 64
                                      and all(c in "0123456789abcdef" for c in value)):
            raise ValueError(f"extra.{name} must be 64 lower-case hex digits, got {value!r}")
    p = m.preprocess
    if not (is_finite_number(p.scale) and p.scale > 0):
        raise ValueError(f"preprocess.scale must be a positive number, got {p.scale!r}")
    for name in ("mean", "std"):
        value = getattr(p, name)
        if value is not None and not (isinstance(value, tuple) and len(value) == 3
                                      and all(is_finite_number(v) for v in value)):
            raise ValueError(f"preprocess.{name} must be three numbers or null, got {value!r}")
    if p.std is not None and 0 in p.std:
        raise ValueError(f"preprocess.std must not hold 0, got {p.std!r}")
    if not (is_integer(p.pad_value) and 0 <= p.pad_value <= 255):
        raise ValueError(f"preprocess.pad_value must be an integer in 0..255, got {p.pad_value!r}")


NMS_OUTPUTS = ("num_dets", "boxes", "scores", "labels")


def _static(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _check_channels_first(input_shape: list[Any], artefact: str) -> None:
    """Refuse an input that is not ``[N, 3, H, W]``: an NHWC ``[N, H, W, 3]`` one (its height and width symbolic
    too, as tf2onnx writes them), or no image at all."""
    channels = _static(input_shape[1]) if len(input_shape) == 4 else None
    if len(input_shape) != 4 or channels not in (None, 3) or (channels is None and _static(input_shape[3]) == 3):
        raise ArtefactError(f"{artefact}: input must be [N, 3, H, W] (channels first), has shape {list(input_shape)}")


def infer_meta(input_shape: list[Any], output_names: list[str], output_shape: list[Any], artefact: str,
               **kw: Any) -> ModelMeta:
    """Metadata for an artefact that carries none, from its graph's shapes (any runtime's view of them).

    ``input_shape`` is ``[N, 3, H, W]`` and ``output_shape`` that of the first output ``[N, A, 5 + C]``;
    symbolic or unknown dimensions are anything but a positive int. The output is assumed raw (undecoded),
    as in the authors' released files, unless ``decode_in_graph=True`` comes in ``kw``. Raises
    :class:`ArtefactError` when the shapes are not those of a YOLOX graph or do not say enough.
    """
    _check_channels_first(input_shape, artefact)
    if tuple(output_names[:4]) == NMS_OUTPUTS:
        raise ArtefactError(f"{artefact}: an NMS graph without yolox-deploy metadata; re-export it with yolox-export")
    batch, h, w = _static(input_shape[0]), _static(input_shape[2]), _static(input_shape[3])
    if (h is None or w is None) and len(output_shape) == 3:  # a head whose width a run at that size tells
        raise ArtefactError(f"{artefact}: input height/width are dynamic and there is no metadata; pass img_size")
    width = _static(output_shape[-1]) if len(output_shape) == 3 else None
    if width is None or width < 6:
        raise ArtefactError(f"{artefact}: cannot read the class count from output {output_names[0]!r} "
                            f"of shape {list(output_shape)} (expected [N, anchors, 5 + classes])")
    meta = ModelMeta.default(width - 5, (h, w), batch=batch, **kw)
    rows = _static(output_shape[1])
    anchors = num_anchors((h, w), meta.strides)
    if rows is not None and rows != anchors:  # e.g. a transposed [N, 5 + C, anchors] head, read as 3544 classes
        shape = "[N, 5 + classes, anchors]" if width == anchors else "not [N, anchors, 5 + classes]"
        raise ArtefactError(f"{artefact}: output {output_names[0]!r} of shape {list(output_shape)} has {rows} rows, not "
                            f"the {anchors} anchors of a {h}x{w} input ({shape}); a YOLOX head is "
                            "[N, anchors, 5 + classes]")
    return meta


def meta_from_graph(input_shape: list[Any], output_names: list[str], output_shape: list[Any], artefact: str, *,
                    img_size: tuple[int, int] | None = None, default_hw: tuple[int, int] | None = None,
                    legacy: bool = False, **kw: Any) -> ModelMeta:
    """:func:`infer_meta` for a graph whose height/width may be symbolic (any runtime's view of its shapes).

    Symbolic height/width take ``img_size``, else ``default_hw`` (e.g. a TensorRT profile's optimum), and
    mark the metadata ``dynamic_hw``; ``legacy`` sets the legacy input contract. ``kw`` go to ``infer_meta``.
    """
    _check_channels_first(list(input_shape), artefact)  # before a symbolic height is filled in
    shape = list(input_shape)
    dynamic_hw = len(shape) == 4 and not (_static(shape[2]) and _static(shape[3]))
    fill = img_size or default_hw
    if dynamic_hw and fill is not None:
        shape[2:4] = [d if _static(d) else s for d, s in zip(shape[2:4], fill)]
    meta = infer_meta(shape, output_names, output_shape, artefact, **kw).with_(dynamic_hw=dynamic_hw)
    return meta.with_(preprocess=Preprocess.legacy()) if legacy else meta


def check_against_graph(meta: ModelMeta, input_shape: list[Any], output_names: list[str], artefact: str, *,
                        decodes: bool = False) -> None:
    """Refuse metadata that contradicts the graph it travels with (any runtime's view of its shapes): a fixed
    batch or input size other than the graph's, NMS outputs the graph does not have (or the reverse), or a
    raw head output where the caller knows the graph decodes (``decodes``)."""
    problems = []
    if len(input_shape) == 4:
        n, h, w = (_static(input_shape[i]) for i in (0, 2, 3))
        if n is not None and meta.batch != n:
            problems.append(f"batch {meta.batch} (the graph's is {n})")
        if h is not None and w is not None:
            if (h, w) != tuple(meta.input_size):
                problems.append(f"input size {meta.input_size[0]}x{meta.input_size[1]} (the graph's is {h}x{w})")
            elif meta.dynamic_hw:
                problems.append("a dynamic input size (the graph's is fixed)")
    if (tuple(output_names[:4]) == NMS_OUTPUTS) != meta.nms_in_graph:
        problems.append("NMS in the graph" if meta.nms_in_graph else "no NMS in the graph (the graph has it)")
    if decodes and not meta.decode_in_graph:
        problems.append("a raw head output (the graph decodes it)")
    if problems:
        raise ArtefactError(f"{artefact}: its metadata does not describe its graph: it says {'; '.join(problems)}; "
                            "re-export it")


def stored_meta(text: str, input_shape: list[Any], output_names: list[str], artefact: str) -> ModelMeta:
    """Our metadata as an artefact stores it (JSON), checked field by field and against the graph's shapes."""
    try:
        meta = ModelMeta.from_json(text)
    except ArtefactError as e:
        raise ArtefactError(f"{artefact}: {e}; re-export it") from None
    check_against_graph(meta, input_shape, output_names, artefact)
    return meta


def sidecar_path(artefact: str | Path) -> Path:
    """Where the metadata of a file-based artefact (.engine, .param) lives: ``<artefact>.json``."""
    p = Path(artefact)
    return p.with_name(p.name + ".json")


def read_sidecar(artefact: str | Path) -> ModelMeta | None:
    """The metadata next to a file-based artefact (``<artefact>.json``), or None when there is none.

    An unreadable or malformed sidecar raises :class:`ArtefactError` naming the file.
    """
    path = sidecar_path(artefact)
    if not path.is_file():
        return None
    try:
        return ModelMeta.from_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ArtefactError(f"{path} is not a text (UTF-8 JSON) file; re-export the model or delete the file") from None
    except OSError as e:
        raise ArtefactError(f"cannot read {path}: {e.strerror or e}") from None
    except ArtefactError as e:
        raise ArtefactError(f"{path}: {e}; re-export the model or delete the file") from None
