"""What an export starts from: a checkpoint, an in-memory model, or an existing ONNX file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ArtefactError, BackendUnavailable, InputError
from ..hub import resolve_weights
from ..meta import META_KEY, ModelMeta, Preprocess, meta_from_graph, stored_meta
from ..nn.checkpoint import check_weights_argument, load_model
from ..nn.deploy import model_meta
from ..nn.yolox import YOLOX
from ..structures import as_class_names
from ..utils.onnxgraph import described_by_graph, graph_inputs, tensor_dims
from ..zoo import get_spec
from .base import ExportSource


def read_onnx_meta(path: str | os.PathLike, img_size: tuple[int, int] | None = None) -> ModelMeta:
    """Metadata of an ONNX file: ours from ``metadata_props``, else inferred from the graph
    (:func:`~yolox_deploy.meta.meta_from_graph`; ``img_size``: the size of a graph whose size is dynamic)."""
    return _read_onnx_meta(path, img_size)[0]


def _read_onnx_meta(path: str | os.PathLike, img_size: tuple[int, int] | None = None) -> tuple[ModelMeta, bool]:
    """:func:`read_onnx_meta` and whether the file records it (False: inferred from the graph)."""
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("reading ONNX files needs the 'onnx' package (pip install 'yolox-deploy[onnx]')") from None
    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / ValueError / OSError for corrupt files
        raise ArtefactError(f"{p} is not a valid ONNX model ({type(e).__name__}: {str(e)[:120]})") from None
    props = {prop.key: prop.value for prop in model.metadata_props}
    graph = model.graph
    inputs = graph_inputs(graph)
    if len(inputs) != 1:
        raise ArtefactError(f"{p.name}: expected one image input, found {len(inputs)}")
    if META_KEY in props:
        return stored_meta(props[META_KEY], tensor_dims(inputs[0]), [o.name for o in graph.output], p.name), True
    meta = meta_from_graph(tensor_dims(inputs[0]), [o.name for o in graph.output], _head_dims(model), p.name,
                           img_size=img_size, format="onnx")
    return meta.with_(**described_by_graph(graph)), False


def _head_dims(model: Any) -> list[Any]:
    """The first output's dims; a width the file leaves symbolic (torch.onnx.export with dynamic axes, not
    simplified) from ONNX's shape inference, which follows the shapes the graph computes."""
    dims = tensor_dims(model.graph.output[0])
    if len(dims) == 3 and not isinstance(dims[2], int):
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph.output[0]
        except Exception:  # noqa: BLE001 - a graph ONNX cannot infer: the shapes as written say what they can
            return dims
        width = tensor_dims(inferred)[2:3]
        if width and isinstance(width[0], int) and width[0] > 0:
            dims[2] = width[0]
    return dims


def _onnx_model_options(name: str, meta: ModelMeta, model: str | None, num_classes: int | None) -> ModelMeta:
    """An ONNX file's graph fixes the class count and, when its metadata records it, the variant: ``model`` /
    ``num_classes`` must agree. A file that does not record its variant (the authors' releases) takes
    ``model`` as what it records from now on."""
    if num_classes is not None and num_classes != meta.num_classes:
        raise InputError(f"{name} has {meta.num_classes} classes, so --num-classes {num_classes} cannot apply; "
                         "export from the checkpoint instead")
    if model is None:
        return meta
    variant = get_spec(model).name  # an unknown name is refused here
    if meta.model is None:
        return meta.with_(model=variant)
    if variant != get_spec(meta.model).name:
        raise InputError(f"{name} is {meta.model}, not {variant}; --model cannot change an ONNX file's graph")
    return meta


def load_source(weights: Any, *, model: str | None = None, num_classes: int | None = None,
                class_names: Sequence[str] | None = None, legacy: bool = False,
                img_size: tuple[int, int] | None = None) -> ExportSource:
    """A checkpoint path, a YOLOX module or an ONNX path -> :class:`ExportSource` (model fused, eval mode).
    ``img_size``: the size of an ONNX file without metadata whose input size is dynamic."""
    check_weights_argument(weights)
    class_names = as_class_names(class_names)
    if isinstance(weights, YOLOX):
        net = weights
        weights_path = None
        name = (net.spec.name if net.spec else "yolox").replace("-", "_")
    else:
        weights_path = Path(resolve_weights(weights, model=model))
        if not weights_path.exists():
            raise InputError(f"weights not found: {weights_path}")
        name = weights_path.stem
        if weights_path.suffix.lower() == ".onnx":
            if weights_path.is_file() and weights_path.stat().st_size == 0:
                raise ArtefactError(f"{weights_path} is empty (0 bytes)")
            meta, recorded = _read_onnx_meta(weights_path, img_size)
            if legacy and recorded and meta.preprocess != Preprocess.legacy():
                raise InputError(f"{weights_path.name} records its input contract (BGR 0-255, as YOLOX 0.1.1 and "
                                 "later); --legacy describes checkpoints and ONNX files without metadata; drop it")
            meta = _onnx_model_options(weights_path.name, meta, model, num_classes)
            if class_names:
                if len(class_names) != meta.num_classes:
                    raise InputError(f"{len(class_names)} class names given, the model has {meta.num_classes} classes")
                meta = meta.with_(class_names=tuple(class_names))
            if legacy:
                meta = meta.with_(preprocess=Preprocess.legacy())
            return ExportSource(meta, name, onnx_path=weights_path, weights=weights_path)
        net = load_model(weights_path, model, num_classes=num_classes,
                         class_names=tuple(class_names) if class_names else None)
    import copy

    fused = copy.deepcopy(net).eval()
    if not fused.is_fused:
        fused.fuse()
    return ExportSource(model_meta(fused, legacy=legacy, class_names=class_names), name, model=fused,
                        weights=weights_path)
