"""ONNX export: the format itself, and :func:`write_onnx`, the intermediate ONNX of OpenVINO and TensorRT.

Graph contract (what every runtime backend relies on):

- input ``images`` ``[B, 3, H, W]`` float32, BGR 0-255 letterboxed (or per the metadata's preprocessing);
  ``B`` is fixed, or the symbolic ``batch`` with ``--dynamic``; ``H, W`` are symbolic (``height``, ``width``)
  with ``--dynamic-hw``, and the decode grid then follows the real input size;
- output ``output`` ``[B, A, 5 + C]``: per anchor ``cx, cy, w, h`` in input pixels (decoded in the graph,
  the default) or the raw offsets (``--no-decode-in-graph``), then ``obj`` and ``C`` class probabilities;
- with ``--nms``, four outputs instead: ``num_dets [B, 1]`` int32, ``boxes [B, K, 4]`` float32 xyxy in input
  pixels, ``scores [B, K]`` float32, ``labels [B, K]`` int32 (``K = max_det``; rows past ``num_dets`` are 0),
  sorted by decreasing score. They are the detections of the Python path (``ops.postprocess``): score =
  obj x the arg-max class probability, only that class per anchor, NMS per class, top ``max_det``.
- ``metadata_props``: :data:`~yolox_deploy.meta.META_KEY` -> :meth:`ModelMeta.to_json` (what runtimes read),
  plus readable keys (``model``, ``names``, ``imgsz``, ``stride``, ...) for people and other tools.

The NMS tail is appended to the exported graph with ``onnx.helper`` (no torch custom op): standard ONNX
``NonMaxSuppression`` fed with per-class scores that are zero except at each anchor's arg-max class, or the
TensorRT ``EfficientNMS_TRT`` plugin node (``nms_plugin="tensorrt"``), which only TensorRT can run.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, ExportError, InputError
from ..meta import META_KEY, NMS_OUTPUTS, ModelMeta
from ..utils.files import atomic_write
from ..utils.onnxgraph import graph_inputs, tensor_dims
from .base import (
    HEAD_OUTPUT,
    MIN_OPSET,
    NMS_HEAD_KEY,
    Exporter,
    ExportOptions,
    ExportSource,
    check_nms_options,
    check_opset,
    register_format,
)

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = HEAD_OUTPUT
NMS_PLUGINS = ("onnx", "tensorrt")
TRT_NMS_OP = "EfficientNMS_TRT"
TRT_NMS_DOMAIN = ""  # TensorRT's parser finds plugins by op name; ONNX Runtime's TensorRT EP knows it in ""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("writing ONNX needs the 'onnx' package (pip install 'yolox-deploy[onnx]')") from None
    return onnx


@register_format("onnx", suffix=".onnx", package="onnx", extra="onnx",
                 supports=("dynamic", "dynamic_hw", "nms", "decode_in_graph", "opset", "simplify"), accepts_onnx=True,
                 artefact_files=("*.onnx",), backend="onnxruntime")
class OnnxExporter(Exporter):
    """ONNX (opset 11-20): fixed or dynamic batch and size, decode and NMS optionally in the graph.

    From an existing ONNX file (the authors' releases) it writes a copy carrying our metadata, with the decode
    step appended when the file's output is raw (unless ``--no-decode-in-graph``).
    """

    def export(self, source: ExportSource, dest: Path) -> ModelMeta:
        return write_onnx(source, self.options, dest)


# --- the library function ----------------------------------------------------------------------------
def write_onnx(source: ExportSource, options: ExportOptions, path: Path, *, nms_plugin: str = "onnx") -> ModelMeta:
    """Write the ONNX of ``source`` to ``path`` (atomically) and return the :class:`ModelMeta` embedded in it.

    A torch source is exported with the TorchScript exporter (``options``: ``img_size``, ``batch``,
    ``dynamic``, ``dynamic_hw``, ``decode_in_graph``, ``nms`` with ``conf``/``iou``/``max_det``, ``opset``,
    ``simplify``). An ONNX source (``source.onnx_path``) keeps its graph and output names; only our metadata
    is added, plus the decode and NMS tails when ``options`` ask for them and the graph lacks them (a raw
    graph can only be decoded when its input size is fixed). ``nms_plugin`` picks the NMS tail: ``"onnx"``
    (standard ``NonMaxSuppression``) or ``"tensorrt"`` (``EfficientNMS_TRT``); it matters only with ``nms``.
    A torch source gives an FP32 ONNX (``precision="fp32"``); an ONNX source keeps its precision (an FP16 file
    stays FP16 and says so). The returned metadata says ``format="onnx"``.
    """
    onnx = _onnx()
    if nms_plugin not in NMS_PLUGINS:
        raise ValueError(f"nms_plugin must be one of {NMS_PLUGINS}, got {nms_plugin!r}")
    check_nms_options(options)
    if source.onnx_path is not None:
        model, meta = _from_onnx_file(source, options)
    else:
        model, meta = _from_torch(source, options)
    if options.nms and not meta.nms_in_graph:  # both sources come back decoded when nms is asked for
        head = model.graph.output[0].name
        append_nms(model, conf=options.conf, iou=options.iou, max_det=options.max_det, plugin=nms_plugin,
                   batch=meta.batch)
        meta = meta.with_(nms_in_graph=True, max_det=options.max_det,
                          extra={**meta.extra, "nms_conf": options.conf, "nms_iou": options.iou,
                                 "nms_plugin": nms_plugin, NMS_HEAD_KEY: head})
    set_metadata(model, meta)
    if not (meta.nms_in_graph and meta.extra.get("nms_plugin") == "tensorrt"):
        # the plugin node has no ONNX schema; everything else must pass, types included (full_check)
        _check(model, full=True, refused=lambda why: ExportError(f"the ONNX graph made for {Path(path).name} fails the "
                                                                 f"ONNX checker: {why}"))
    path = Path(path)
    with atomic_write(path) as tmp:
        onnx.save(model, str(tmp))
    log.info("ONNX graph: %s, opset %d", _describe(meta), opset_of(model))
    return meta


def _check(model: Any, *, full: bool, refused: Callable[[str], Exception]) -> None:
    """``onnx.checker.check_model`` (with shape and type inference when ``full``); its complaint, cut to its
    first line, goes to ``refused`` for the exception to raise."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise refused(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None


def _describe(meta: ModelMeta) -> str:
    size = "dynamic HxW" if meta.dynamic_hw else f"{meta.input_size[0]}x{meta.input_size[1]}"
    batch = "dynamic batch" if meta.batch is None else f"batch {meta.batch}"
    graph = "decode+NMS" if meta.nms_in_graph else "decode" if meta.decode_in_graph else "raw head"
    return f"{batch}, {size}, {graph}"


def opset_of(model: Any) -> int:
    """The default-domain opset of an ONNX model."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# --- torch source ------------------------------------------------------------------------------------
def _from_torch(source: ExportSource, o: ExportOptions) -> tuple[Any, ModelMeta]:
    import torch

    onnx = _onnx()
    check_opset(o.opset)
    if o.dynamic_hw and not o.dynamic:
        raise InputError("dynamic height/width needs a dynamic batch too (--dynamic)")
    decode = o.decode_in_graph or o.nms
    h, w = o.img_size
    model = source.model.cpu().float().eval()
    dummy = torch.zeros(max(o.batch, 2) if o.dynamic else o.batch, 3, h, w)
    axes: dict[str, dict[int, str]] = {}
    if o.dynamic:
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        if o.dynamic_hw:
            axes[INPUT_NAME].update({2: "height", 3: "width"})
            axes[OUTPUT_NAME][1] = "anchors"
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), model.decoding(decode):
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
            torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=o.opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=axes or None, do_constant_folding=True)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    proto = onnx.load_from_string(buf.getvalue())

    meta = source.meta.with_(
        input_size=(h, w), batch=None if o.dynamic else o.batch, dynamic_hw=o.dynamic_hw, decode_in_graph=decode,
        nms_in_graph=False, max_det=None, precision="fp32", format="onnx",
    )
    _fix_head_output(proto, meta)
    if o.simplify:
        proto = simplify(proto)
        _fix_head_output(proto, meta)
    return proto, meta


def _fix_head_output(model: Any, meta: ModelMeta) -> None:
    """Give ``output`` its full shape ``[B, A, 5 + C]`` (the exporter leaves the last dims symbolic)."""
    from ..utils.sizes import num_anchors

    anchors: int | str = "anchors" if meta.dynamic_hw else num_anchors(meta.input_size, meta.strides)
    batch: int | str = "batch" if meta.batch is None else meta.batch
    _set_shape(model.graph.output[0], [batch, anchors, 5 + meta.num_classes])


def _set_shape(value_info: Any, dims: list[int | str]) -> None:
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = int(d)


def io_signature(model: Any) -> tuple[list[tuple[str, list[int | str]]], list[str]]:
    """``([(input name, dims)], [output names])`` of the graph's real inputs (initializers excluded)."""
    inputs = [(i.name, tensor_dims(i, unknown="?")) for i in graph_inputs(model.graph)]
    return inputs, [o.name for o in model.graph.output]


# --- simplification ----------------------------------------------------------------------------------
def _run_simplifier(model: Any) -> tuple[Any, str]:
    """Run onnxslim, else onnxsim; raises ImportError when neither is installed."""
    try:
        import onnxslim
    except ImportError:
        onnxslim = None
    if onnxslim is not None:
        return onnxslim.slim(model), "onnxslim"
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    return simplified, "onnxsim"


def simplify(model: Any) -> Any:
    """The model simplified by onnxslim (else onnxsim), or unchanged with a warning when that fails.

    The simplified graph must keep the inputs (names, fixed sizes, symbolic sizes) and output names.
    """
    before = io_signature(model)
    try:
        simplified, tool = _run_simplifier(model)
    except ImportError:
        log.warning("no ONNX simplifier installed (pip install onnxslim); keeping the graph as exported")
        return model
    except Exception as e:  # a simplifier bug must not cost the export
        log.warning("ONNX simplification failed (%s: %s); keeping the graph as exported", type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "")
        return model
    after = io_signature(simplified)
    if not _same_signature(before, after):
        log.warning("the simplified graph changed its inputs/outputs (%s -> %s); keeping the graph as exported",
                    before, after)
        return model
    log.info("simplified with %s: %d -> %d nodes", tool, len(model.graph.node), len(simplified.graph.node))
    return simplified


def _same_signature(a: tuple[list, list[str]], b: tuple[list, list[str]]) -> bool:
    (ins_a, outs_a), (ins_b, outs_b) = a, b
    if outs_a != outs_b or [n for n, _ in ins_a] != [n for n, _ in ins_b]:
        return False
    for (_, da), (_, db) in zip(ins_a, ins_b, strict=True):
        if len(da) != len(db):
            return False
        for x, y in zip(da, db, strict=True):
            if isinstance(x, int) != isinstance(y, int) or (isinstance(x, int) and x != y):
                return False
    return True


# --- ONNX source -------------------------------------------------------------------------------------
def onnx_to_convert(source: ExportSource, options: ExportOptions, path: Path,
                    write: Callable[[ExportSource, ExportOptions, Path], Any] | None = None) -> Path:
    """The ONNX file a format that converts ONNX (OpenVINO, NCNN, TensorRT) reads: an ONNX source as it is,
    unless its raw output gets the decode step (``decode_in_graph``); otherwise the graph ``write``
    (:func:`write_onnx`) puts at ``path``."""
    if onnx_source_as_is(source, options):
        return Path(source.onnx_path)
    (write or write_onnx)(source, options, path)
    return path


def onnx_source_as_is(source: ExportSource, options: ExportOptions) -> bool:
    """Whether :func:`onnx_to_convert` hands over the source's ONNX file itself (no ONNX step is written)."""
    m = source.meta
    return source.onnx_path is not None and not (options.decode_in_graph and not (m.decode_in_graph or m.nms_in_graph))


def _from_onnx_file(source: ExportSource, o: ExportOptions) -> tuple[Any, ModelMeta]:
    onnx = _onnx()
    path = Path(source.onnx_path)
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise InputError(f"{path.name} is not a readable ONNX model ({type(e).__name__})") from None
    # the size asked for (a dynamic-size source's default size; a fixed one's own, checked before)
    meta = source.meta.with_(format="onnx", input_size=tuple(o.img_size))
    if meta.nms_in_graph:
        return model, meta
    _check(model, full=False, refused=lambda why: InputError(f"{path.name} does not pass the ONNX checker ({why}): "
                                                             "export it again from its checkpoint"))
    decode = (o.decode_in_graph or o.nms) and not meta.decode_in_graph
    if decode and meta.dynamic_hw:
        raise InputError(f"{path.name} has a raw output and a dynamic input size, so its grid cannot be "
                         "added; export from the checkpoint to decode in the graph")
    if decode or o.nms:
        float32_head(model)  # the steps appended compute in float32 (an FP16 graph's head is cast up)
    if decode:
        append_decode(model, meta.input_size, meta.strides)
        meta = meta.with_(decode_in_graph=True)
    return model, meta


# --- graph surgery -----------------------------------------------------------------------------------
class _Graph:
    """Appends nodes and constants to a graph under one name prefix."""

    def __init__(self, model: Any, prefix: str) -> None:
        self.onnx = _onnx()
        self.model = model
        self.graph = model.graph
        self.prefix = prefix
        self.opset = opset_of(model)
        taken = {n.name for n in self.graph.node} | {t for n in self.graph.node for t in n.output}
        taken |= {i.name for i in self.graph.initializer} | {i.name for i in self.graph.input}
        self._taken = taken
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        name = f"{self.prefix}/{hint}_{self._count}"
        while name in self._taken:
            self._count += 1
            name = f"{self.prefix}/{hint}_{self._count}"
        self._taken.add(name)
        return name

    def const(self, value: Any, dtype: Any, hint: str = "const") -> str:
        name = self.name(hint)
        arr = np.asarray(value, dtype=dtype)
        self.graph.initializer.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, outputs: list[str] | None = None,
           domain: str = "", **attrs: Any) -> Any:
        outs = outputs or [self.name(op_type.lower()) for _ in range(n_out)]
        node = self.onnx.helper.make_node(op_type, inputs, outs, name=self.name(op_type), domain=domain, **attrs)
        self.graph.node.append(node)
        return outs[0] if len(outs) == 1 else outs

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.const([start], np.int64), self.const([end], np.int64),
                                 self.const([axis], np.int64)])

    def reduce_sum(self, x: str, axis: int) -> str:
        if self.opset >= 13:
            return self.op("ReduceSum", [x, self.const([axis], np.int64)], keepdims=1)
        return self.op("ReduceSum", [x], axes=[axis], keepdims=1)


def float32_head(model: Any) -> None:
    """Cast the graph's first output to float32 where it is another type (an FP16 graph): the decode and NMS
    steps appended to it compute in float32. It keeps its name."""
    onnx = _onnx()
    out = model.graph.output[0]
    if out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
        return
    g = _Graph(model, "head")
    head = g.name("head")
    _rename_tensor(model, out.name, head)
    g.op("Cast", [head], outputs=[out.name], to=onnx.TensorProto.FLOAT)
    out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def append_decode(model: Any, input_hw: tuple[int, int], strides: tuple[int, ...]) -> None:
    """Decode a raw float32 head output ``[B, A, 5 + C]`` in the graph (fixed input size: the grid is a
    constant; opset >= 11).

    Same arithmetic as :func:`yolox_deploy.ops.decode.decode_with_grid`, clamps included. The graph output
    keeps its name and shape.
    """
    from ..ops.decode import WH_LOGIT_MAX, XY_LOGIT_LIMIT, make_grid
    from ..utils.sizes import level_shapes, num_anchors

    g = _Graph(model, "decode")
    if g.opset < MIN_OPSET:
        raise InputError(f"the decode step needs ONNX opset >= {MIN_OPSET}; this graph has opset {g.opset}: export "
                         "from the checkpoint, or keep the output raw (--no-decode-in-graph)")
    out = model.graph.output[0]
    grid, stride = make_grid(level_shapes(input_hw, tuple(strides)), tuple(strides))
    raw = g.name("raw")
    _rename_tensor(model, out.name, raw)
    xy = g.op("Clip", [g.slice(raw, 0, 2, 2), g.const(-XY_LOGIT_LIMIT, np.float32), g.const(XY_LOGIT_LIMIT, np.float32)])
    xy = g.op("Mul", [g.op("Add", [xy, g.const(grid.numpy()[None], np.float32, "grid")]),
                      g.const(stride.numpy()[None], np.float32, "stride")])
    wh = g.op("Clip", [g.slice(raw, 2, 4, 2), "", g.const(WH_LOGIT_MAX, np.float32)])
    wh = g.op("Mul", [g.op("Exp", [wh]), g.const(stride.numpy()[None], np.float32, "stride")])
    g.op("Concat", [xy, wh, g.slice(raw, 4, np.iinfo(np.int64).max, 2)], outputs=[out.name], axis=2)
    dims = tensor_dims(out, unknown="?")
    if len(dims) == 3 and isinstance(dims[1], int) and dims[1] != num_anchors(input_hw, strides):
        raise InputError(f"output {out.name!r} has {dims[1]} anchors, not those of a {input_hw[0]}x{input_hw[1]} input")


def _rename_tensor(model: Any, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def append_nms(model: Any, *, conf: float, iou: float, max_det: int, plugin: str = "onnx",
               batch: int | None = None) -> None:
    """Replace a decoded head output ``[B, A, 5 + C]`` by the four NMS outputs (see the module docstring).

    ``plugin="onnx"``: standard ``NonMaxSuppression`` + ``TopK`` (opset >= 11, any batch, ONNX Runtime and
    OpenVINO). ``plugin="tensorrt"``: one ``EfficientNMS_TRT`` node (TensorRT only). ``batch``: the fixed
    batch size, ``None`` when dynamic (only used for the declared output shapes).
    """
    onnx = _onnx()
    g = _Graph(model, "nms")
    if g.opset < MIN_OPSET:
        raise InputError(f"the NMS tail needs ONNX opset >= {MIN_OPSET}; this graph has opset {g.opset}")
    head = model.graph.output[0]
    dims = tensor_dims(head, unknown="?")
    num_classes = dims[2] - 5 if len(dims) == 3 and isinstance(dims[2], int) else None
    if num_classes is None or num_classes < 1:
        raise ExportError(f"cannot add NMS: output {head.name!r} has shape {dims}, expected [B, A, 5 + C]")
    pred = head.name
    k = int(max_det)

    # Per anchor: xyxy box, arg-max class and its score (as ops.postprocess).
    xy, wh = g.slice(pred, 0, 2, 2), g.slice(pred, 2, 4, 2)
    half = g.op("Div", [wh, g.const(2.0, np.float32)])
    boxes = g.op("Concat", [g.op("Sub", [xy, half]), g.op("Add", [xy, half])], axis=2)     # [B, A, 4]
    cls = g.slice(pred, 5, np.iinfo(np.int64).max, 2)                                     # [B, A, C]
    label = g.op("ArgMax", [cls], axis=2, keepdims=1)                                      # [B, A, 1]
    score = g.op("Mul", [g.slice(pred, 4, 5, 2), g.op("GatherElements", [cls, label], axis=2)])  # [B, A, 1]
    is_top = g.op("Equal", [label, g.const(np.arange(num_classes).reshape(1, 1, -1), np.int64, "classes")])

    batch_dim: int | str = "batch" if batch is None else batch
    out_types = {"num_dets": (onnx.TensorProto.INT32, [batch_dim, 1]),
                 "boxes": (onnx.TensorProto.FLOAT, [batch_dim, k, 4]),
                 "scores": (onnx.TensorProto.FLOAT, [batch_dim, k]),
                 "labels": (onnx.TensorProto.INT32, [batch_dim, k])}
    # each anchor's score at its arg-max class, -1 (below any threshold) at the others: the plugin keeps scores
    # >= its threshold, so 0 would keep every other class of every anchor at --conf 0
    class_scores = g.op("Where", [is_top, score, g.const(-1.0, np.float32)])               # [B, A, C]
    if plugin == "tensorrt":
        for name, last in ((boxes, 4), (class_scores, num_classes)):  # the plugin's input shapes, declared
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, [dims[0] or "batch", dims[1] or "anchors", last]))
        g.op(TRT_NMS_OP, [boxes, class_scores], outputs=list(NMS_OUTPUTS), domain=TRT_NMS_DOMAIN,
             background_class=-1, box_coding=0, iou_threshold=float(iou), max_output_boxes=k,
             plugin_version="1", score_activation=0, class_agnostic=0, score_threshold=float(conf))
        if TRT_NMS_DOMAIN and all(o.domain != TRT_NMS_DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(TRT_NMS_DOMAIN, 1))
    else:
        _onnx_nms_tail(g, pred, boxes, score, class_scores, conf, iou, k)
    del model.graph.output[:]
    for name in NMS_OUTPUTS:
        elem, shape = out_types[name]
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, shape))


def _onnx_nms_tail(g: _Graph, pred: str, boxes: str, score: str, class_scores: str, conf: float, iou: float,
                   k: int) -> None:
    # NonMaxSuppression keeps scores strictly above its threshold; the Python path keeps score >= conf.
    threshold = np.nextafter(np.float32(conf), np.float32(-np.inf))
    selected = g.op("NonMaxSuppression", [boxes, g.op("Transpose", [class_scores], perm=[0, 2, 1]),
                                          g.const([k], np.int64), g.const([iou], np.float32),
                                          g.const([threshold], np.float32)], center_point_box=0)  # [N, 3]
    sel_b = g.slice(selected, 0, 1, 1)                                                    # [N, 1] image
    sel_c = g.slice(selected, 1, 2, 1)                                                    # [N, 1] class
    sel_a = g.slice(selected, 2, 3, 1)                                                    # [N, 1] anchor
    score_2d = g.op("Reshape", [score, g.const([0, -1], np.int64)])                       # [B, A]
    sel_score = g.op("GatherND", [score_2d, g.op("Concat", [sel_b, sel_a], axis=1)])     # [N]

    # One row per image: the scores of its selections, -1 elsewhere, K more -1 so TopK always has K.
    shape = g.op("Shape", [pred])
    n_img = g.op("Gather", [shape, g.const(0, np.int64)], axis=0)                          # scalar B
    images = g.op("Reshape", [g.op("Range", [g.const(0, np.int64), n_img, g.const(1, np.int64)]),
                              g.const([-1, 1], np.int64)])                                # [B, 1]
    row_of = g.op("Equal", [images, g.op("Reshape", [sel_b, g.const([1, -1], np.int64)])])  # [B, N]
    cand = g.op("Where", [row_of, g.op("Reshape", [sel_score, g.const([1, -1], np.int64)]),
                          g.const(-1.0, np.float32)])                                     # [B, N]
    pad_shape = g.op("Concat", [g.slice(shape, 0, 1, 0), g.const([k], np.int64)], axis=0)
    pad = g.op("Expand", [g.const([[-1.0]], np.float32), pad_shape])                      # [B, K]
    top_scores, top_idx = g.op("TopK", [g.op("Concat", [cand, pad], axis=1), g.const([k], np.int64)],
                               n_out=2, axis=1, largest=1, sorted=1)                      # [B, K] each
    valid = g.op("Greater", [top_scores, g.const(-0.5, np.float32)])                      # [B, K]
    zeros_k = g.const(np.zeros(k), np.int64)
    anchor = g.op("Gather", [g.op("Concat", [g.op("Reshape", [sel_a, g.const([-1], np.int64)]), zeros_k], axis=0),
                             top_idx], axis=0)                                            # [B, K]
    label = g.op("Gather", [g.op("Concat", [g.op("Reshape", [sel_c, g.const([-1], np.int64)]), zeros_k], axis=0),
                            top_idx], axis=0)                                             # [B, K]
    index = g.op("Expand", [g.op("Reshape", [anchor, g.const([0, 0, 1], np.int64)]),
                            g.const([1, 1, 4], np.int64)])                                # [B, K, 4]
    picked = g.op("GatherElements", [boxes, index], axis=1)                               # [B, K, 4]
    valid_3d = g.op("Reshape", [valid, g.const([0, 0, 1], np.int64)])
    onnx = g.onnx
    g.op("Cast", [g.reduce_sum(g.op("Cast", [valid], to=onnx.TensorProto.INT64), 1)], outputs=["num_dets"],
         to=onnx.TensorProto.INT32)
    g.op("Where", [valid_3d, picked, g.const(0.0, np.float32)], outputs=["boxes"])
    g.op("Where", [valid, top_scores, g.const(0.0, np.float32)], outputs=["scores"])
    g.op("Cast", [g.op("Where", [valid, label, g.const(0, np.int64)])], outputs=["labels"], to=onnx.TensorProto.INT32)


# --- metadata ----------------------------------------------------------------------------------------
def readable_metadata(meta: ModelMeta) -> dict[str, str]:
    """The human-readable ``metadata_props`` written next to the machine-readable ``META_KEY`` JSON."""
    from .. import __version__

    pre = meta.preprocess
    props = {
        "model": meta.model or "yolox",
        "names": json.dumps(list(meta.class_names)),
        "imgsz": json.dumps(list(meta.input_size)),
        "stride": str(max(meta.strides)),
        "strides": json.dumps(list(meta.strides)),
        "batch": "dynamic" if meta.batch is None else str(meta.batch),
        "dynamic_hw": json.dumps(meta.dynamic_hw),
        "decode_in_graph": json.dumps(meta.decode_in_graph),
        "nms_in_graph": json.dumps(meta.nms_in_graph),
        "precision": meta.precision,
        "preprocess": (f"letterbox pad {pre.pad_value}, {pre.color.upper()}, x{pre.scale:g}"
                       + (f", mean {list(pre.mean)}" if pre.mean else "") + (f", std {list(pre.std)}" if pre.std else "")),
        "color": pre.color,
        "pad_value": str(pre.pad_value),
        "normalize": json.dumps({"scale": pre.scale, "mean": pre.mean, "std": pre.std}),
        "producer": f"yolox-deploy {__version__}",
    }
    if meta.nms_in_graph:
        props["max_det"] = str(meta.max_det)
        props["outputs"] = "num_dets [B,1], boxes [B,K,4] xyxy input pixels, scores [B,K], labels [B,K]"
    elif meta.decode_in_graph:
        props["outputs"] = "output [B,A,5+C]: cx, cy, w, h (input pixels), obj, class probabilities"
    else:
        props["outputs"] = "output [B,A,5+C]: raw tx, ty, tw, th (decode with the grid and strides), obj, class probabilities"
    return props


def set_metadata(model: Any, meta: ModelMeta) -> None:
    """Write ``META_KEY`` -> ``meta.to_json()`` and the readable keys into ``metadata_props`` (replacing them)."""
    props = {META_KEY: meta.to_json(), **readable_metadata(meta)}
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*keep, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"YOLOX detector ({meta.model or 'custom'}), {_describe(meta)}; see metadata '{META_KEY}'"
