"""``Detector``: one pipeline over every backend.

    images -> letterbox (batched uint8 canvases) -> backend.infer -> decode (unless in graph)
    -> batched NMS (unless in graph) -> scale back to image pixels -> Detections

The artefact's metadata decides input size, labels, what the graph already does and the preprocessing
contract; arguments only override what an artefact without metadata cannot know. Post-processing runs where
the backend's outputs live: in numpy with OpenCV's NMS on the CPU, as torch ops on the GPU for CUDA backends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TypeVar, Union

import numpy as np

from ..errors import ArtefactError, InputError
from ..hub import resolve_weights
from ..io.images import check_image_path, ensure_bgr, is_pil_image, pil_to_bgr, read_image
from ..meta import ModelMeta
from ..ops.letterbox import letterbox_batch, scale_boxes
from ..ops.postprocess import RawDetections, check_settings, postprocess, split_nms_outputs
from ..structures import Detections, as_class_names, name_table
from ..utils.arrays import to_numpy
from ..utils.sizes import num_anchors, parse_img_size
from ..utils.values import is_integer
from ..zoo import canonical_name
from .base import Backend, artefact_label, backend_class, find_backend, refuse_copying, with_input_size
from .streaming import StreamResult

log = logging.getLogger(__name__)
DEFAULT_CONF, DEFAULT_NMS = 0.25, 0.45  # score and NMS IoU thresholds, as the authors' demos


class _DefaultMaxDet(int):
    """The default ``max_det``: an int that is told apart from the same number given (``is``), so an NMS graph
    with a lower cap warns of an explicit ``max_det=300`` and not of the default."""


DEFAULT_MAX_DET = _DefaultMaxDet(300)  # detections per image, as the authors' evaluation
ImageLike = Union[str, os.PathLike, np.ndarray, Any]  # Any: a PIL image
T = TypeVar("T")


def _load_one(item: ImageLike, index: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return ensure_bgr(item, name=f"image {index}")
    return pil_to_bgr(item, name=f"image {index}") if is_pil_image(item) else read_image(item)


def _is_image_like(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike, np.ndarray)) or is_pil_image(item)


def source_items(source: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    """A path, an array, a PIL image or an iterable of them -> the list of items, each checked to be one of
    those, and paths to name image files (:func:`check_image_path`); nothing is read yet
    (:func:`load_images` reads them)."""
    if _is_image_like(source):
        items = [source]
    elif isinstance(source, (bytes, bytearray, memoryview, Mapping)) or not isinstance(source, Iterable):
        raise InputError(f"expected an image path, a BGR uint8 array, a PIL image or a list of them, got "
                         f"{type(source).__name__}")
    else:
        items = list(source)
    for i, item in enumerate(items):
        if not _is_image_like(item):
            raise InputError(f"image {i}: expected a path, a BGR uint8 array or a PIL image, got {type(item).__name__}")
        if isinstance(item, (str, os.PathLike)):
            check_image_path(item)  # a missing file late in a list, before the batches ahead of it run
    return items


def load_images(source: ImageLike | Iterable[ImageLike], start: int = 0) -> list[np.ndarray]:
    """A path, an array or a list of them -> list of BGR uint8 arrays (``start``: the first one's index, in
    messages)."""
    return [_load_one(item, start + i) for i, item in enumerate(source_items(source))]


def open_backend(weights: Any, backend: str | None = None, device: str = "cpu", **options: Any) -> Backend:
    """Open ``weights`` (a path or an in-memory model) with the named backend or the one its kind implies."""
    from ..nn.checkpoint import check_weights_argument
    from ..nn.yolox import YOLOX

    check_weights_argument(weights)
    weights = weights if isinstance(weights, YOLOX) else resolve_weights(weights, model=options.get("model"))
    if backend:
        cls = backend_class(backend)
        if isinstance(weights, YOLOX) and cls.info.name != "torch":
            raise InputError(f"a YOLOX model in memory runs on the torch backend, not {cls.info.name}; drop backend, "
                             "or export the model (yolox_deploy.export) and open the artefact")
        path = Path(weights) if isinstance(weights, (str, os.PathLike)) else None
        if path is not None and path.is_file() and cls.info.suffixes and path.suffix.lower() not in cls.info.suffixes:
            raise InputError(f"the {cls.info.name} backend opens {' / '.join(cls.info.suffixes)} files"
                             f"{' or their folders' if cls.info.folder_pattern else ''}, not {path.name}; drop "
                             f"--backend, or export the model to that format (yolox-export)")
    elif isinstance(weights, YOLOX):
        cls = backend_class("torch")
    else:
        cls = find_backend(weights)
    return cls(weights if isinstance(weights, YOLOX) else Path(weights), device=device, **options)


class _Setting:
    """A Detector setting of :meth:`Detector._settings`: read as taken, set through it (checked as the
    constructor checks it; on an NMS graph, what cannot apply is said and not taken)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, detector: Detector | None, owner: type | None = None) -> Any:
        return self if detector is None else getattr(detector, f"_{self.name}")

    def __set__(self, detector: Detector, value: Any) -> None:
        detector._changed(**{self.name: value})


class Detector:
    """Detect objects with any YOLOX artefact: ``.pth``, ``.onnx``, ``.engine``, ``*_openvino/``, ``*_ncnn/``, or
    the name of a released variant (``"yolox-s"``: the authors' COCO checkpoint, fetched once into the cache).

    >>> det = Detector("yolox_nano.onnx")
    >>> [dets] = det("dog.jpg")
    >>> dets.xyxy, dets.scores, dets.names

    Arguments: ``model`` (the variant, for checkpoints and artefacts that do not record one), ``backend``
    (override the one the file implies), ``device`` (``cpu``, ``cuda[:N]``; ONNX Runtime's TensorRT provider
    ``tensorrt[:N]``; OpenVINO ``GPU``/``NPU``/``AUTO``; NCNN ``vulkan[:N]``), ``conf`` / ``nms`` thresholds
    (default 0.25 / 0.45; an artefact with NMS inside runs its own, which ``conf`` and ``max_det`` can only
    tighten), ``class_agnostic`` NMS, ``max_det`` per image (``None``: no cap), ``clip`` boxes to the image (the
    authors' COCO protocol does not), ``batch_size`` (for dynamic-batch artefacts; fixed-batch ones get
    padded batches), ``img_size`` (dynamic-size artefacts; must match a fixed one), ``class_names`` /
    ``num_classes`` for artefacts without labels, and backend options (``half``, ``legacy``, ``threads``...).
    ``conf``, ``nms``, ``class_agnostic``, ``max_det``, ``clip`` and ``batch_size`` may also be set later, checked
    as here.
    A list of paths is read a batch at a time.
    """

    def __init__(self, weights: Any, *, model: str | None = None, backend: str | None = None,
                 device: str = "cpu", conf: float | None = None, nms: float | None = None, class_agnostic: bool = False,
                 max_det: int | None = DEFAULT_MAX_DET, clip: bool = True, batch_size: int | None = None,
                 img_size: int | Sequence[int] | str | None = None, class_names: Sequence[str] | None = None,
                 num_classes: int | None = None, **options: Any) -> None:
        check_settings(conf, nms, max_det, names=("conf", "nms"))  # all before the runtime opens
        for name, value in (("class_agnostic", class_agnostic), ("clip", clip)):
            _check_flag(name, value)
        if num_classes is not None and (not is_integer(num_classes) or num_classes < 1):
            raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if batch_size is not None:
            _check_batch_size(batch_size)
        size = parse_img_size(img_size) if img_size is not None else None
        class_names = as_class_names(class_names)
        self.backend = open_backend(weights, backend, device, model=model, img_size=size,
                                    class_names=class_names,
                                    num_classes=num_classes, **options)
        try:
            meta = self._apply_overrides(self.backend.meta, size, class_names, num_classes)
            if model is not None:  # names the variant of an artefact that does not record or show it
                name = canonical_name(model)
                if meta.model and name != meta.model:
                    raise InputError(f"{self.artefact_name} is {meta.model}, not {name}; drop model (--model): the artefact's "
                                     "metadata or weights say which variant it is")
                meta = meta.with_(model=name)
            self.meta = self.backend.meta = meta
            graph = self.meta.extra if self.meta.nms_in_graph else {}  # an NMS graph's own thresholds are the defaults
            self._settings(conf=float(conf if conf is not None else graph.get("nms_conf", 0.0) if graph else DEFAULT_CONF),
                           nms=float(nms if nms is not None else graph.get("nms_iou", DEFAULT_NMS)),
                           class_agnostic=class_agnostic, max_det=max_det)
            self.clip = bool(clip)
            self.batch_size = batch_size if batch_size is not None else self.meta.batch or 1
            self._cache: _Tables | None = None
        except BaseException:  # an argument refused only now: the opened runtime is not left behind
            self.backend.close()
            raise

    # --- settings: given to the constructor or set later, checked alike ----------------------------------
    def _settings(self, *, conf: float, nms: float, class_agnostic: bool, max_det: int | None) -> None:
        """Check and take the thresholds, NMS kind and cap. An artefact with NMS inside runs it with the
        thresholds it was exported with: the Detector can only raise the score threshold and lower ``max_det``
        (it does); the settings that cannot apply are said in one warning and not taken, so the attributes
        show what runs. The default ``max_det`` quietly becomes the graph's cap, as ``conf`` and ``nms``
        default to the graph's."""
        for name, value in (("conf", conf), ("nms", nms)):
            if value is None:
                raise InputError(f"{name} is a threshold in [0, 1], not None")
        check_settings(conf, nms, max_det, names=("conf", "nms"))
        _check_flag("class_agnostic", class_agnostic)
        conf, nms, class_agnostic = float(conf), float(nms), bool(class_agnostic)
        if self.meta.nms_in_graph:
            extra, cap, cannot = self.meta.extra, self.meta.max_det, []
            floor = float(extra.get("nms_conf", 0.0))
            if conf < floor:
                cannot.append(f"conf {conf:g} (the graph keeps scores >= {floor:g})")
            if "nms_iou" in extra and nms != extra["nms_iou"]:
                cannot.append(f"NMS IoU {nms:g} (the graph's is {extra['nms_iou']:g})")
            if class_agnostic:
                cannot.append("class-agnostic NMS (the graph's is per class)")
            if cap is not None and max_det is not DEFAULT_MAX_DET and (max_det is None or max_det > cap):
                cannot.append(f"max_det {'None (no cap)' if max_det is None else max_det} (the graph keeps at most {cap})")
            if cannot:
                log.warning("%s runs NMS inside its graph; not applied: %s. Export without --nms to choose them here.",
                            self.artefact_name, "; ".join(cannot))
            conf, nms, class_agnostic = max(conf, floor), float(extra.get("nms_iou", nms)), False
            max_det = max_det if cap is None else min(max_det or cap, cap)
        self._conf, self._nms, self._class_agnostic, self._max_det = conf, nms, class_agnostic, max_det

    def _changed(self, **setting: Any) -> None:
        self._settings(**{"conf": self._conf, "nms": self._nms, "class_agnostic": self._class_agnostic,
                          "max_det": self._max_det, **setting})

    conf = _Setting("Score threshold (0-1): detections scoring below it are dropped.")
    nms = _Setting("NMS IoU threshold (0-1).")
    class_agnostic = _Setting("Whether NMS suppresses boxes across classes.")
    max_det = _Setting("Detections kept per image, the best first (None: no cap).")

    @property
    def clip(self) -> bool:
        """Whether boxes are clipped to the image."""
        return self._clip

    @clip.setter
    def clip(self, value: bool) -> None:
        _check_flag("clip", value)
        self._clip = bool(value)

    @property
    def batch_size(self) -> int:
        """Images per backend call (a fixed-batch artefact's own)."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        _check_batch_size(value)
        if self.meta.batch and value != self.meta.batch:
            raise InputError(f"this artefact was exported for batches of {self.meta.batch}, not {value}; "
                             "re-export it with --dynamic (or --batch N), or keep its batch size")
        self._batch_size = int(value)

    @staticmethod
    def _apply_overrides(meta: ModelMeta, size: tuple[int, int] | None, class_names: Sequence[str] | None,
                         num_classes: int | None) -> ModelMeta:
        """The artefact's metadata with the caller's size and labels, each checked against what it was made for."""
        meta = with_input_size(meta, size, "this artefact")
        if num_classes is not None and num_classes != meta.num_classes:
            raise InputError(f"the model has {meta.num_classes} classes, not {num_classes}; drop num_classes "
                             "(--num-classes)")
        if class_names is not None:
            if len(class_names) != meta.num_classes:
                raise InputError(f"{len(class_names)} class names given, the model has {meta.num_classes} classes")
            meta = meta.with_(class_names=tuple(class_names))
        return meta

    # --- the pipeline --------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox images (BGR uint8 ``[H, W, 3]``; other arrays are converted as :func:`ensure_bgr` says)
        into one canvas batch (uint8 ``[N, H, W, 3]``, padded to a fixed artefact batch). ``(canvases,
        ratios)``. The backend makes the model input from it (layout, type, the artefact's normalisation),
        inside its runtime where it can."""
        images = [ensure_bgr(im, name=f"image {i}") for i, im in enumerate(images)]
        return letterbox_batch(images, self.meta.input_size, self.meta.preprocess.pad_value, batch_size=self.meta.batch)

    def infer(self, batch: np.ndarray) -> list[Any]:
        """The bare backend call on a canvas batch (or on a float model input ``[N, 3, H, W]``)."""
        return self.backend.infer(batch)

    def postprocess(self, outputs: list[Any], ratios: np.ndarray,
                    image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Backend outputs of a batch -> one :class:`Detections` per real (non-padding) image."""
        n = len(image_sizes)
        if self.meta.nms_in_graph:  # sorted by score: the Detector's threshold and cap are a cut
            per_image = [_cut(raw, self.conf, self.max_det) for raw in split_nms_outputs(*outputs[:4])[:n]]
        else:
            self._check_head(tuple(outputs[0].shape))
            pred = outputs[0][:n]
            hw = None if self.meta.decode_in_graph else self.meta.input_size
            per_image = postprocess(pred, self.conf, self.nms, class_agnostic=self.class_agnostic,
                                    max_det=self.max_det, input_hw=hw, strides=self.meta.strides)
        return [self._to_detections(raw, ratio, size) for raw, ratio, size in zip(per_image, ratios, image_sizes)]

    def _check_head(self, shape: tuple[int, ...]) -> None:
        """Refuse a head output ``[N, anchors, 5 + classes]`` other than the metadata's size, strides and labels
        imply (metadata that does not describe its graph would otherwise give wrong boxes or labels)."""
        want = self._tables().head
        if len(shape) != 3 or shape[1:] != want:
            m = self.meta
            raise ArtefactError(f"{self.artefact_name}: the artefact's output has shape {list(shape)}, not the [N, {want[0]}, "
                                f"{want[1]}] its metadata implies ({m.input_size[0]}x{m.input_size[1]}, strides "
                                f"{list(m.strides)}, {m.num_classes} classes): the metadata, or the image size and "
                                "classes given for an artefact without it, does not describe the graph; re-export "
                                "it, or give the size and classes it was made for")

    def _to_detections(self, raw: RawDetections, ratio: float, image_hw: tuple[int, int]) -> Detections:
        boxes = scale_boxes(raw.boxes, float(ratio), image_hw if self.clip else None)
        tables = self._tables()
        return Detections.from_arrays(to_numpy(boxes), to_numpy(raw.scores), to_numpy(raw.class_ids),
                                      tables.names, image_hw, tables.category_ids)

    @property
    def artefact_name(self) -> str:
        """The artefact's file or folder name, for messages (``the model`` for one given in memory)."""
        return artefact_label(self.backend.path)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The model's class names, by class id (from the artefact, or given)."""
        return self.meta.class_names

    @property
    def category_ids(self) -> tuple[int, ...] | None:
        """The dataset category id of each class: recorded by yolox-train, COCO's for COCO's 80 classes (the
        authors' weights), else None. Detections carry them (``Detections.category_ids``, ``to_coco``)."""
        return self.meta.dataset_category_ids

    def _tables(self) -> _Tables:
        """What each call reads from the metadata, made again only when the metadata changes."""
        cached = self._cache
        if cached is None or cached.meta is not self.meta:
            m, ids = self.meta, self.category_ids
            cached = self._cache = _Tables(m, name_table(m.class_names),
                                           None if ids is None else np.asarray(ids, dtype=np.int64),
                                           (num_anchors(m.input_size, m.strides), 5 + m.num_classes))
        return cached

    def run_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect on images (arrays, as :meth:`preprocess` takes them) that fit in one batch (none: no
        detections)."""
        if not len(images):
            return []
        batch, ratios = self.preprocess(images)
        return self.postprocess(self.infer(batch), ratios, [np.shape(im)[:2] for im in images])

    def __call__(self, source: ImageLike | Sequence[ImageLike]) -> list[Detections]:
        """Detections for a path, a BGR array, a PIL image, or a list of them (one ``Detections`` per image, in
        order)."""
        items = source_items(source)
        results: list[Detections] = []
        for start in range(0, len(items), self.batch_size):  # read a batch at a time: memory of one batch
            results.extend(self.run_batch(load_images(items[start:start + self.batch_size], start)))
        return results

    predict = __call__

    def iter_batches(self, images: Iterable[T]) -> Iterator[list[T]]:
        """Group an iterable (images, stream frames) into lists of ``batch_size``; the last may be shorter. When
        the iterable fails (a corrupt file in a folder), the items read before it come as a batch first."""
        items = iter(images)
        chunk: list[T] = []
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except Exception:
                if chunk:
                    yield chunk
                raise
            chunk.append(item)
            if len(chunk) == self.batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def stream(self, source: str | os.PathLike | int, *, queue_size: int = 2) -> Iterator[StreamResult]:
        """Detections for every frame of a video file, camera index, stream address (``rtsp://``...) or folder, in order.

        Three stages overlap: a reader thread decodes and letterboxes the next batch, a worker thread runs
        the backend, and this generator post-processes the previous batch. Closing the generator early (or
        an error in any stage) stops the threads; the error is re-raised here; closing the Detector stops its
        streams too (a video or camera is released) and their generators raise. A missing source, a pipe, a
        camera index or queue size out of range and a closed Detector are refused by this call, before the
        generator is first asked.
        """
        from .streaming import run_pipeline

        return run_pipeline(self, source, queue_size=queue_size)

    # --- lifetime ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop this Detector's open streams (their reader releases its video or camera) and release the runtime."""
        from .streaming import stop_streams

        stop_streams(self)
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.meta
        return (f"Detector({self.backend.info.name}, model={m.model}, input={m.input_size[0]}x{m.input_size[1]}, "
                f"classes={m.num_classes}, conf={self.conf}, nms={self.nms})")

    def __reduce__(self) -> NoReturn:
        refuse_copying(self)


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} is True or False, not {value!r}")


def _check_batch_size(value: Any) -> None:
    if not is_integer(value) or value < 1:
        raise InputError(f"batch size must be an integer >= 1, got {value!r}")


class _Tables(NamedTuple):
    """A Detector's per-metadata lookups: the label table (object array), the classes' category ids (int64
    array, or None) and the head output shape ``(anchors, 5 + classes)`` the metadata implies."""

    meta: ModelMeta
    names: np.ndarray
    category_ids: np.ndarray | None
    head: tuple[int, int]


def _cut(raw: RawDetections, conf: float, max_det: int | None) -> RawDetections:
    """The leading detections of ``raw`` (sorted by decreasing score) with score >= ``conf``, at most ``max_det``."""
    k = int((raw.scores >= conf).sum())
    k = k if max_det is None else min(k, max_det)
    return RawDetections(raw.boxes[:k], raw.scores[:k], raw.class_ids[:k])

