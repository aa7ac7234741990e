"""NCNN export through pnnx: ``<stem>_ncnn/`` with ``model.ncnn.param``, ``model.ncnn.bin`` and the metadata.

    yolox-export --weights yolox_nano.pth --format ncnn                  # decoded boxes, 416x416
    yolox-export --weights yolox_nano.pth --format ncnn --no-decode-in-graph --dynamic --dynamic-hw
                                                                         # raw head, any input size
    yolox-export --weights yolox_nano.onnx --format ncnn                 # the authors' released ONNX, decoded

The folder holds exactly what a runtime needs:

- ``model.ncnn.param`` / ``model.ncnn.bin``: the graph (input blob ``in0``, output blob ``out0``) and its
  weights, FP32 or, with ``--half``, FP16 storage;
- ``model.ncnn.param.json``: the :class:`~yolox_deploy.meta.ModelMeta` sidecar
  (:func:`~yolox_deploy.meta.sidecar_path` of the param file), read by ``runtimes/ncnn.py``; its
  ``extra["ncnn_bin_bytes"]`` and ``extra["ncnn_bin_sha256"]`` record the ``.bin``'s size and digest, so the
  runtime refuses the weights of another export.

How the graph is made: the fused model is traced with TorchScript and converted by the ``pnnx`` executable
bundled with the ``pnnx`` package (called directly, not through ``pnnx.convert``, which ignores pnnx's exit
status and imports the Python module pnnx generates). pnnx's other outputs (``.pnnx.param``, ``.pnnx.bin``,
``_pnnx.py``, ``.pnnx.onnx``, ``_ncnn.py``) stay in a temporary folder.

The graph is changed before conversion, never the files afterwards
(:func:`yolox_deploy.nn.deploy.deploy_model`, which every format's export uses):

- NCNN has no strided slice, so the Focus stem (space-to-depth by four step-2 slices, then a k x k conv) is
  traced as the equivalent single convolution: a 2k x 2k kernel with stride 2 on the image, whose weights
  are the Focus conv's weights rearranged (exact; YOLOv5 made the same change for the same reason);
- with ``--half`` (pnnx ``fp16=1``: FP16 weights in the ``.bin``), the first convolution computes
  ``conv(x * 2**-k, w * 2**k)``: it sees pixels 0-255, so its weights are tiny, and FP16 storage would flush
  a sixth of YOLOX-Nano's to zero (raw output off by ~4 instead of ~0.14; :func:`input_scale_exponent`).

An ONNX input (e.g. the authors' released files) gets the same two rewrites on its ONNX graph
(:func:`prepare_onnx`) before pnnx reads it; a raw one gets the decode step first (:func:`~.onnx.write_onnx`),
unless ``--no-decode-in-graph``.

NCNN has no batch dimension: the graph takes one ``[3, H, W]`` image and the runtime loops over a batch, so
the metadata says ``batch=None`` whatever ``--batch`` / ``--dynamic`` say. Input size: by default the graph
is made for one size (plain NCNN layers any NCNN release runs). With ``--dynamic-hw`` a raw-head graph
(``--no-decode-in-graph``) is converted with a second input shape, so its reshapes follow the input size
(NCNN shape expressions, in NCNN releases from 2025-05 on): it runs at any multiple of 32. A graph that
decodes bakes its anchor grid for one size and cannot be dynamic.
"""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, InputError
from ..meta import NCNN_BIN_BYTES, NCNN_BIN_SHA256, ModelMeta, sidecar_path
from ..nn.deploy import input_scale_exponent, space_to_depth_conv_weight
from ..utils.files import file_sha256
from .base import Exporter, ExportSource, register_format

log = logging.getLogger(__name__)

PARAM_NAME = "model.ncnn.param"
BIN_NAME = "model.ncnn.bin"
PNNX_TIMEOUT_S = 600

def sidecar_for(folder: Path) -> Path:
    """The metadata file of an NCNN export folder."""
    return sidecar_path(folder / PARAM_NAME)


def prepare_onnx(src: Path, dst: Path, half: bool) -> list[str]:
    """Copy an ONNX file for pnnx with the rewrites ``deploy_model`` makes on a torch model.

    A Focus stem (four step-2 Slices -> Concat -> Conv) becomes one strided Conv; with ``half`` the Convs
    reading the image get their input scaled (:func:`input_scale_exponent`). Returns what was changed.
    """
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    notes = []
    if _rewrite_focus(g):
        notes.append("Focus stem as one strided convolution")
    if half and _scale_image_convs(g):
        notes.append("first convolution's input scaled for FP16 weights")
    used = {i for n in g.node for i in n.input}
    keep = [copy.deepcopy(i) for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.save(model, str(dst))
    return notes


class _OnnxGraph:
    """Look-ups over an ONNX graph: constants (initializers and Constant nodes), producers, consumers."""

    def __init__(self, g: Any) -> None:
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.consts = {i.name: i for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = n.attribute[0].t
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inputs = [i.name for i in g.input if i.name not in self.consts]

    def value(self, name: str) -> np.ndarray | None:
        return self._to_array(self.consts[name]) if name in self.consts else None


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _slice_chain(info: _OnnxGraph, name: str) -> tuple[tuple[int, int], list[Any]] | None:
    """``(dy, dx)`` of a chain of step-2 Slices from a graph input to ``name`` (H and W), and its nodes."""
    offsets: dict[int, int] = {}
    nodes = []
    while name not in info.inputs:
        n = info.producer.get(name)
        if n is None or n.op_type != "Slice" or len(n.input) < 5:
            return None
        starts, _, axes, steps = (info.value(i) for i in n.input[1:5])
        if starts is None or axes is None or steps is None or np.any(steps != 2) or len(axes) != len(starts):
            return None
        for ax, st in zip(axes.tolist(), starts.tolist(), strict=True):
            ax = ax + 4 if ax < 0 else ax
            if ax not in (2, 3) or st not in (0, 1) or ax in offsets:
                return None
            offsets[ax] = st
        nodes.append(n)
        name = n.input[0]
    return ((offsets[2], offsets[3]), nodes) if set(offsets) == {2, 3} else None


def _rewrite_focus(g: Any) -> bool:
    from onnx import helper, numpy_helper

    info = _OnnxGraph(g)
    for concat in g.node:
        if concat.op_type != "Concat" or len(concat.input) != 4 or _attrs(concat).get("axis") != 1:
            continue
        chains = [_slice_chain(info, i) for i in concat.input]
        users = info.consumers.get(concat.output[0], [])
        if any(c is None for c in chains) or len(users) != 1 or users[0].op_type != "Conv":
            continue
        conv = users[0]
        attrs = _attrs(conv)
        weight = info.value(conv.input[1])
        offsets = tuple(c[0] for c in chains)
        dead = {n.output[0] for c in chains for n in c[1]} | {concat.output[0], conv.output[0]}
        feeds_others = any(u.output[0] not in dead for c in chains for n in c[1]
                           for u in info.consumers.get(n.output[0], []))
        if (weight is None or feeds_others or len(set(offsets)) != 4 or attrs.get("group", 1) != 1
                or any(d != 1 for d in attrs.get("dilations", [1, 1]))
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        new_weight = space_to_depth_conv_weight(weight, offsets)
        w_name = conv.input[1] + "_focus_as_conv"
        g.initializer.append(numpy_helper.from_array(new_weight, w_name))
        new_conv = helper.make_node(
            "Conv", [chains[0][1][-1].input[0], w_name, *conv.input[2:]], list(conv.output),
            name=(conv.name or "conv") + "_focus_as_conv", kernel_shape=list(new_weight.shape[2:]),
            strides=[2 * s for s in attrs.get("strides", [1, 1])],
            pads=[2 * p for p in attrs.get("pads", [0, 0, 0, 0])], dilations=[1, 1], group=1)
        nodes = [new_conv if n.output[0] == conv.output[0] else copy.deepcopy(n)
                 for n in g.node if n.output[0] == conv.output[0] or n.output[0] not in dead]
        del g.node[:]
        g.node.extend(nodes)
        return True
    return False


def _scale_image_convs(g: Any) -> bool:
    from onnx import helper, numpy_helper

    info = _OnnxGraph(g)
    muls = []
    for image in info.inputs:
        for conv in info.consumers.get(image, []):
            weight = info.value(conv.input[1]) if conv.op_type == "Conv" and conv.input[0] == image else None
            k = input_scale_exponent(weight) if weight is not None else 0
            if not k:
                continue
            scaled, factor = f"{conv.output[0]}_input_scaled", f"{conv.output[0]}_input_scale"
            g.initializer.append(numpy_helper.from_array(np.array(2.0 ** -k, np.float32), factor))
            g.initializer.append(numpy_helper.from_array((weight * 2.0 ** k).astype(weight.dtype), scaled + "_w"))
            conv.input[0], conv.input[1] = scaled, scaled + "_w"
            muls.append(helper.make_node("Mul", [image, factor], [scaled], name=scaled))
    if muls:
        nodes = muls + [copy.deepcopy(n) for n in g.node]
        del g.node[:]
        g.node.extend(nodes)
    return bool(muls)


# --- pnnx -------------------------------------------------------------------------------------------------
def _run_pnnx(model_file: Path, work: Path, shape: tuple[int, int], shape2: tuple[int, int] | None,
              fp16: bool) -> tuple[Path, Path]:
    """Run the pnnx executable on a TorchScript or ONNX file in ``work``; returns (param, bin) paths."""
    import pnnx

    stem = work / "model"
    cmd = [pnnx.EXEC_PATH, model_file.name, f"inputshape=[1,3,{shape[0]},{shape[1]}]f32",
           f"fp16={int(fp16)}", "device=cpu", "optlevel=2",
           f"pnnxparam={stem}.pnnx.param", f"pnnxbin={stem}.pnnx.bin", f"pnnxpy={stem}_pnnx.py",
           f"pnnxonnx={stem}.pnnx.onnx", f"ncnnparam={stem}.ncnn.param", f"ncnnbin={stem}.ncnn.bin",
           f"ncnnpy={stem}_ncnn.py"]
    if shape2 is not None:
        cmd.append(f"inputshape2=[1,3,{shape2[0]},{shape2[1]}]f32")
    log.debug("pnnx: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ExportError(f"could not run pnnx ({e})") from None
    text = (proc.stdout or "") + (proc.stderr or "")
    log.debug("pnnx output:\n%s", text)
    param, weights = Path(f"{stem}.ncnn.param"), Path(f"{stem}.ncnn.bin")
    if proc.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = " | ".join(line for line in text.strip().splitlines()[-5:])
        raise ExportError(f"pnnx failed (exit {proc.returncode}): {tail[-400:]}")
    return param, weights


def _check_layers(param: Path) -> None:
    """Every layer of the produced graph must be one NCNN implements (pnnx leaves the ones it cannot map)."""
    from ..errors import ArtefactError
    from ..runtimes.ncnn import read_param, unknown_layer_types

    try:
        graph = read_param(param)
    except ArtefactError as e:
        raise ExportError(f"pnnx wrote an unreadable graph: {e}") from None
    unknown = unknown_layer_types(graph)
    if unknown:
        raise ExportError(f"pnnx left operators NCNN does not implement: {', '.join(unknown)}; "
                          "this model cannot run on NCNN as traced")


def second_shape(size: tuple[int, int]) -> tuple[int, int]:
    """Another input size, different in both sides, that tells pnnx which dimensions follow the input."""
    return tuple(v // 2 // 32 * 32 if v >= 128 else v + 32 for v in size)  # type: ignore[return-value]


def _check_onnx_source(source: ExportSource) -> None:
    """pnnx converts an ONNX file at one input shape of one image: refuse a source with another batch or a
    dynamic input size up front (pnnx would fail on the shape, or fix a size the metadata calls dynamic)."""
    m, name = source.meta, source.onnx_path.name
    if m.batch not in (None, 1):
        raise InputError(f"{name} has a fixed batch of {m.batch} and NCNN runs one image at a time; export the "
                         "NCNN folder from the checkpoint, or from an ONNX of batch 1 or a dynamic batch")
    if m.dynamic_hw:
        raise InputError(f"{name} has a dynamic input size, which NCNN cannot take from an ONNX file; export the "
                         "NCNN folder from the checkpoint (--dynamic --dynamic-hw --no-decode-in-graph for any "
                         "size), or from an ONNX of a fixed size")


@register_format("ncnn", suffix="_ncnn", is_dir=True, package="pnnx", extra="ncnn",
                 supports=("dynamic", "dynamic_hw", "half", "decode_in_graph"), accepts_onnx=True,
                 description="NCNN param/bin folder via pnnx (CPU, Vulkan), for ARM and mobile",
                 artefact_files=(PARAM_NAME, BIN_NAME, f"{PARAM_NAME}.json"))
class NcnnExporter(Exporter):
    """NCNN param/bin folder via pnnx (CPU, Vulkan), for ARM and mobile."""

    def export(self, source: ExportSource, dest: Path) -> ModelMeta:
        o = self.options
        if o.nms:
            raise InputError("the ncnn format cannot hold NMS in its graph; NMS runs in the pipeline")
        size = tuple(o.img_size)
        dynamic_hw = o.dynamic_hw
        if source.model is None:
            _check_onnx_source(source)
        elif dynamic_hw and o.decode_in_graph:
            raise InputError("this ncnn export cannot take other input sizes (a graph that decodes bakes its anchor "
                             "grid); add --no-decode-in-graph")
        if o.batch != 1:
            log.info("ncnn has no batch dimension: the graph takes one image, the runtime loops over a batch")
        meta = self.artefact_meta(source).with_(batch=None, dynamic_hw=dynamic_hw, format=self.info.name)

        with tempfile.TemporaryDirectory(prefix="yolox_pnnx_") as tmp:
            work = Path(tmp)
            if source.model is not None:
                model_file = work / "model.pt"
                self._trace(source.model, size, model_file)
            else:
                from .onnx import onnx_to_convert

                model_file = work / "model.onnx"
                for note in prepare_onnx(onnx_to_convert(source, o, work / "decoded.onnx"), model_file, o.half):
                    log.info("%s for NCNN: %s", source.onnx_path.name, note)
            param, weights = _run_pnnx(model_file, work, size, second_shape(size) if dynamic_hw else None,
                                       fp16=o.half)
            _check_layers(param)
            try:
                shutil.move(str(param), dest / PARAM_NAME)
                shutil.move(str(weights), dest / BIN_NAME)
            except OSError as e:  # e.g. a full disk; the error names the source in the temporary folder
                raise ExportError(f"could not write the NCNN model into {(self.output or dest).parent}: "
                                  f"{e.strerror or e}") from None
        # the runtime refuses another .bin: another export's weights (FP16, raw head) load and run
        meta = meta.with_(extra={**meta.extra, NCNN_BIN_BYTES: (dest / BIN_NAME).stat().st_size,
                                 NCNN_BIN_SHA256: file_sha256(dest / BIN_NAME).hexdigest()})
        sidecar_for(dest).write_text(meta.to_json())  # dest is a staging folder, moved into place whole
        return meta

    def _trace(self, model: Any, size: tuple[int, int], path: Path) -> None:
        import torch

        # ``model`` is already the deployment form (the export driver applies deploy_model)
        example = torch.zeros(1, 3, *size)
        with warnings.catch_warnings(), torch.no_grad(), model.decoding(self.options.decode_in_graph):
            warnings.simplefilter("ignore")  # TracerWarnings about shape-derived Python values
            traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(path))
