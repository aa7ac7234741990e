"""NCNN backend: a ``*_ncnn/`` folder (``model.ncnn.param`` + ``model.ncnn.bin``) or a ``.param`` file.

The ``.bin`` is the file next to the ``.param`` with the same stem. Metadata comes from the sidecar
``<param>.json`` that ``yolox-export`` writes (:func:`~yolox_deploy.meta.sidecar_path`). Without it (a model
converted by other tools) the backend infers what it can: input size from ``img_size`` or the graph's
``Input`` layer, classes from ``num_classes`` / ``class_names`` or the output width of one run on a blank
image; the output is taken as decoded when the graph holds the decode's ``exp`` (as every yolox-export NCNN
graph that decodes does; a raw head has none), else as raw (a ``decode_in_graph`` that says otherwise is
refused), and the input size as fixed.

NCNN has no batch dimension: each image of a batch runs through its own ``Extractor`` on the one shared
``Net`` and the outputs are stacked, so any batch size is accepted.

Files are checked before NCNN sees them (magic number, the layer and blob lines, operators NCNN knows, a
``.bin`` at least as large as the weights the graph declares, and of the size the sidecar records) so a
damaged or mismatched artefact is an :class:`~yolox_deploy.errors.ArtefactError` naming the file, not a
message from inside NCNN.

Options:

- ``threads``: NCNN worker threads (default: NCNN's choice, the physical big cores; one in a process forked
  after NCNN ran on several, where a Detector opened before the fork on several is refused: :mod:`.openmp`);
- ``half``: ``None`` (default) follows the artefact: FP32 artefacts run in FP32 throughout (NCNN's FP16
  storage/packing/arithmetic switched off explicitly), FP16 artefacts keep FP16 storage and packing but
  compute in FP32; ``True`` adds FP16 arithmetic (faster on ARMv8.2+, less exact); ``False`` forces FP32;
- ``img_size``, ``num_classes``, ``class_names``, ``decode_in_graph``, ``legacy``: for artefacts without
  metadata.

Devices: ``cpu``, or ``vulkan`` / ``gpu`` / ``vulkan:N`` when NCNN was built with Vulkan and a GPU exists.

Threads: ``Net.create_extractor`` is thread-safe and an ``Extractor`` is used for one inference only (NCNN's
maintainer in Tencent/ncnn#4774 and #242), so on the CPU concurrent calls share the ``Net`` without a
lock. Vulkan extractors of one ``Net`` share its GPU allocators (Tencent/ncnn#1061), so Vulkan calls are
serialised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtefactError, BackendUnavailable, InputError
from ..meta import NCNN_BIN_BYTES, NCNN_BIN_SHA256, ModelMeta, Preprocess, read_sidecar, sidecar_path
from ..utils.arrays import to_numpy
from ..utils.native import silenced_stderr
from ..utils.sizes import level_shapes, parse_img_size
from .base import Backend, check_weights_digest, one_model_file, register_backend
from .openmp import ForkedPool

PARAM_MAGIC = 7767517
POOL = ForkedPool("NCNN")
_TOKEN = re.compile(r'(?:[^\s"]+|"[^"]*")+')

# Layers whose weights are in the .bin: (num_output key, bias key, weight count key). Weights are stored with
# a 4-byte type tag and at least one byte each (int8), biases as float32.
_WEIGHTED = {
    "Convolution": (0, 5, 6), "ConvolutionDepthWise": (0, 5, 6), "Deconvolution": (0, 5, 6),
    "DeconvolutionDepthWise": (0, 5, 6), "Convolution1D": (0, 5, 6), "ConvolutionDepthWise1D": (0, 5, 6),
    "Convolution3D": (0, 5, 6), "InnerProduct": (0, 1, 2),
}


@dataclass(frozen=True)
class NcnnLayer:
    """One line of a ``.param`` file: ``type name n_in n_out inputs... outputs... key=value...``."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, str] = field(default_factory=dict)

    def int_param(self, key: int, default: int = 0) -> int:
        try:
            return int(self.params.get(key, default))
        except ValueError:
            raise ArtefactError(f"layer {self.name}: parameter {key}={self.params[key]!r} is not an integer") from None


@dataclass(frozen=True)
class NcnnGraph:
    """The parsed ``.param`` file."""

    path: Path
    layers: tuple[NcnnLayer, ...]
    blob_count: int

    @property
    def input_blobs(self) -> list[str]:
        return [t for layer in self.layers if layer.type == "Input" for t in layer.tops]

    @property
    def output_blobs(self) -> list[str]:
        """Blobs produced and never consumed, in file order."""
        used = {b for layer in self.layers for b in layer.bottoms}
        return [t for layer in self.layers for t in layer.tops if t not in used]

    def input_hw(self) -> tuple[int, int] | None:
        """``(h, w)`` from the ``Input`` layer's shape parameters (``0=w 1=h 2=c``), when it states them."""
        for layer in self.layers:
            if layer.type == "Input":
                w, h = layer.int_param(0), layer.int_param(1)
                return (h, w) if h > 0 and w > 0 else None
        return None

    def flattened_cells(self) -> list[int]:
        """The cell counts of the fixed 2-D ``Reshape`` layers (``0=w 1=h``, both positive): in a YOLOX head, each
        level's ``[5 + C, h, w]`` flattened to ``[5 + C, h * w]``, fixed to the input size the graph was made for."""
        return [layer.int_param(0) for layer in self.layers if layer.type == "Reshape" and set(layer.params) == {0, 1}
                and layer.int_param(0) > 0 and layer.int_param(1) > 0]

    def decodes(self) -> bool:
        """Whether the graph decodes its boxes: the decode's ``exp`` of the sizes (a ``UnaryOp`` of type 7).
        A raw YOLOX head has none (its activations are sigmoids and SiLU / Swish)."""
        return any(layer.type == "UnaryOp" and layer.int_param(0) == 7 for layer in self.layers)

    def min_weight_bytes(self) -> int:
        """A lower bound of the ``.bin`` size the layers imply (weights at one byte, tags, FP32 biases)."""
        total = 0
        for layer in self.layers:
            if layer.type in _WEIGHTED:
                n_out, bias_key, count_key = _WEIGHTED[layer.type]
                total += 4 + layer.int_param(count_key)
                if layer.int_param(bias_key):
                    total += 4 * layer.int_param(n_out)
            elif layer.type == "MemoryData":
                dims = [layer.int_param(k) for k in (0, 1, 11, 2)]
                total += 4 * int(np.prod([d for d in dims if d > 0]))
        return total


def read_param(path: str | Path) -> NcnnGraph:
    """Parse and check an NCNN ``.param`` text file; :class:`ArtefactError` naming the file when it is not one."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ArtefactError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ArtefactError(f"{p} is not an NCNN param file (binary content; expected text)") from None
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        raise ArtefactError(f"{p} is not an NCNN param file (first line must be the magic number {PARAM_MAGIC})")
    try:
        layer_count, blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise ArtefactError(f"{p}: line 2 must hold the layer and blob counts") from None
    body = [(i + 3, line) for i, line in enumerate(lines[2:]) if line.strip()]
    if layer_count <= 0 or len(body) != layer_count:
        raise ArtefactError(f"{p} declares {layer_count} layers but holds {len(body)}: the file is truncated or damaged")
    layers = [_parse_layer(p, number, line) for number, line in body]
    produced: set[str] = set()
    for layer in layers:
        missing = [b for b in layer.bottoms if b not in produced]
        if missing:
            raise ArtefactError(f"{p}: layer {layer.name} reads blob {missing[0]!r} that no earlier layer writes")
        produced.update(layer.tops)
    if len(produced) > blob_count:
        raise ArtefactError(f"{p} declares {blob_count} blobs but its layers write {len(produced)}")
    graph = NcnnGraph(p, tuple(layers), blob_count)
    if len(graph.input_blobs) != 1:
        raise ArtefactError(f"{p}: expected one Input layer (the image), found {len(graph.input_blobs)}")
    if not graph.output_blobs:
        raise ArtefactError(f"{p}: the graph has no output blob")
    return graph


def _parse_layer(p: Path, number: int, line: str) -> NcnnLayer:
    tokens = _TOKEN.findall(line)
    bad = ArtefactError(f"{p}, line {number}: not an NCNN layer line: {line.strip()[:80]!r}")
    if len(tokens) < 4:
        raise bad
    try:
        n_in, n_out = int(tokens[2]), int(tokens[3])
    except ValueError:
        raise bad from None
    if n_in < 0 or n_out < 0 or len(tokens) < 4 + n_in + n_out:
        raise bad
    blobs = tokens[4:4 + n_in + n_out]
    params: dict[int, str] = {}
    for token in tokens[4 + n_in + n_out:]:
        key, sep, value = token.partition("=")
        try:
            params[int(key)] = value
        except ValueError:
            raise bad from None
        if not sep or not value:
            raise bad
    return NcnnLayer(tokens[0], tokens[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params)


def unknown_layer_types(graph: NcnnGraph) -> list[str]:
    """Layer types NCNN does not implement (e.g. ``Tensor.slice``, ``torch.arange`` left by pnnx), sorted."""
    try:
        import ncnn

        known = lambda t: ncnn.layer_to_index(t) >= 0  # noqa: E731
    except ImportError:  # without ncnn, flag what pnnx writes for operators it could not map
        known = lambda t: "." not in t and "::" not in t  # noqa: E731
    return sorted({layer.type for layer in graph.layers if not known(layer.type)})


def locate(path: str | Path) -> tuple[Path, Path]:
    """``(param, bin)`` of an NCNN artefact given as its folder or its ``.param`` file."""
    p = Path(path)
    if p.is_dir():
        params = sorted(p.glob("*.ncnn.param")) or sorted(q for q in p.glob("*.param")
                                                            if not q.name.endswith(".pnnx.param"))
        p = one_model_file(p, params, kind="NCNN models", hint="open the .param file you mean",
                           missing=f"no NCNN model in folder {p} (expected model.ncnn.param and model.ncnn.bin)")
    elif not p.is_file():
        raise ArtefactError(f"NCNN model not found: {p}")
    weights = p.with_suffix(".bin")
    if not weights.is_file():
        raise ArtefactError(f"{p.name} needs its weights {weights.name} next to it in {p.parent}; the file is missing")
    return p, weights


def _device(device: str) -> int | None:
    """``cpu`` -> ``None``; ``vulkan``, ``gpu``, ``vulkan:1``, ``1`` -> a Vulkan device index."""
    d = str(device).strip().lower()
    if d == "cpu":
        return None
    if d.isdigit():
        return int(d)
    name, _, index = d.partition(":")
    if name in ("vulkan", "gpu") and (not index or index.isdigit()):
        return int(index or 0)
    raise InputError(f"the ncnn backend runs on 'cpu' or 'vulkan[:N]' (a Vulkan GPU), not {device!r}")


@register_backend("ncnn", suffixes=(".param",), package="ncnn", extra="ncnn", devices=("cpu", "vulkan"),
                  folder_pattern="*.param")
class NcnnBackend(Backend):
    """NCNN param/bin (from yolox-export or other converters) on the CPU or a Vulkan GPU."""

    option_names = frozenset({"half", "threads"})

    @classmethod
    def _check_device(cls, device: str) -> None:
        gpu = _device(device)
        if gpu is not None:
            import ncnn

            with silenced_stderr():  # ncnn prints each failed attempt to load a Vulkan driver
                count = ncnn.get_gpu_count() if hasattr(ncnn, "get_gpu_count") else 0
            if gpu >= count:
                raise BackendUnavailable(f"no Vulkan GPU {gpu} for NCNN ({count} found: no Vulkan driver or GPU "
                                         "on this machine, or ncnn built without Vulkan); run it on the CPU (device cpu)")

    def _load(self) -> None:
        import ncnn

        self._ncnn = ncnn
        param, weights = locate(self.path)
        graph = read_param(param)
        unknown = unknown_layer_types(graph)
        if unknown:
            raise ArtefactError(f"{param} uses layers NCNN does not implement ({', '.join(unknown)}); "
                                "re-export it with yolox-export --format ncnn")
        need = graph.min_weight_bytes()
        size = weights.stat().st_size
        if size < need:
            raise ArtefactError(f"{weights} holds {size} bytes but {param.name} needs at least {need}: "
                                "the weights are truncated or belong to another model")
        self.param_path, self.bin_path = param, weights
        uses_expressions = any(v.startswith('"') for layer in graph.layers for v in layer.params.values())
        self._version_hint = (f" (its shape expressions need NCNN from 2025-05 on; this is {ncnn.__version__})"
                              if uses_expressions else "")
        self.input_name = graph.input_blobs[0]
        self.output_name = "out0" if "out0" in graph.output_blobs else graph.output_blobs[0]

        meta = read_sidecar(param)
        extra = meta.extra if meta is not None else {}
        recorded = extra.get(NCNN_BIN_BYTES)
        if recorded is not None and recorded != size:
            raise ArtefactError(f"{weights} holds {size} bytes, not the {recorded} exported with {param.name}: "
                                "the weights belong to another export; re-export the model or copy its .bin")
        check_weights_digest(weights, extra.get(NCNN_BIN_SHA256), param)
        if meta is not None and not meta.nms_in_graph and meta.decode_in_graph != graph.decodes():
            says = "decodes" if meta.decode_in_graph else "does not decode"
            raise ArtefactError(f"{param}: its sidecar says the graph {says} its boxes, and the graph "
                                f"{'does not' if meta.decode_in_graph else 'does'}; the sidecar belongs to another "
                                "export: re-export the model")
        self.net = self._open_net(param, weights, meta)
        self.meta = meta if meta is not None else self._infer_meta(graph)

    @property
    def compute_precision(self) -> str:
        """``fp16`` where NCNN keeps FP16 storage (an FP16 artefact, or ``half=True``) and the device does it:
        activations rounded to FP16 between layers, the arithmetic FP16 too only with ``half=True``. Only
        NCNN's ARM (FP16 conversion in hardware) and Vulkan layers do; on x86 its layers that YOLOX uses run
        FP32 whatever the flags (outputs equal to the bit), so that is ``fp32``, as is everything else."""
        self._check_open()
        o = self.net.opt
        arm = self._ncnn.cpu_support_arm_vfpv4() or self._ncnn.cpu_support_arm_asimdhp()
        return "fp16" if o.use_fp16_storage and (o.use_vulkan_compute or arm) else "fp32"

    def _open_net(self, param: Path, weights: Path, meta: ModelMeta | None) -> Any:
        ncnn = self._ncnn
        opts = self.options
        gpu = _device(self.device)
        net = ncnn.Net()
        o = net.opt
        threads = POOL.threads(opts.get("threads"))
        if threads:  # 0 or None: NCNN's choice
            o.num_threads = threads
        half = opts.get("half")
        storage = bool(half) if half is not None else (meta is not None and meta.precision == "fp16")
        o.use_fp16_storage = o.use_fp16_packed = storage
        o.use_fp16_arithmetic = bool(half)
        o.use_bf16_storage = o.use_bf16_packed = False
        o.use_vulkan_compute = False
        if gpu is not None:
            o.use_vulkan_compute = True
            net.set_vulkan_device(gpu)
            self.thread_safe = False  # extractors share the Net's GPU allocators
        if net.load_param(str(param)) != 0:
            raise ArtefactError(f"NCNN could not load {param}; re-export it{self._version_hint}")
        if net.load_model(str(weights)) != 0:
            raise ArtefactError(f"NCNN could not load the weights {weights} (truncated or from another model)")
        return net

    def _infer_meta(self, graph: NcnnGraph) -> ModelMeta:
        """Metadata for an artefact without sidecar: see the module docstring."""
        opts = self.options
        where = f"{graph.path} has no metadata ({sidecar_path(graph.path).name})"
        stated = graph.input_hw()
        hw = parse_img_size(opts["img_size"]) if opts.get("img_size") else stated
        if stated is not None and hw != stated:  # NCNN runs it anyway and reads past its fixed reshapes
            raise InputError(f"{graph.path} was made for {stated[0]}x{stated[1]} input (its Input layer), not "
                             f"{hw[0]}x{hw[1]}; drop the image size (--img-size)")
        if hw is None:
            raise ArtefactError(f"{where} and its graph does not state the input size; pass img_size (--img-size)")
        cells, levels = graph.flattened_cells(), [h * w for h, w in level_shapes(hw)]
        if stated is None and len(cells) == len(levels) and sorted(cells) != sorted(levels):  # NCNN would read past them
            raise InputError(f"{graph.path} was made for another input size than {hw[0]}x{hw[1]} (its head flattens "
                             f"{cells} cells per level, not {levels}); give the size it was exported for (--img-size)")
        names = opts.get("class_names")
        num_classes = len(names) if names else opts.get("num_classes")
        if num_classes is None:
            out = self._run_one(np.zeros((3, *hw), np.float32))
            if out.ndim != 2 or out.shape[1] < 6:
                raise ArtefactError(f"{where} and its output {list(out.shape)} is not [anchors, 5 + classes]; "
                                    "pass num_classes")
            num_classes = out.shape[1] - 5
        meta = ModelMeta.default(int(num_classes), hw, batch=None, dynamic_hw=False, format="ncnn",
                                 decode_in_graph=graph.decodes(),
                                 preprocess=Preprocess.legacy() if opts.get("legacy") else Preprocess())
        return meta.with_(class_names=tuple(names)) if names else meta

    def _run_one(self, image: np.ndarray) -> np.ndarray:
        """One ``[3, H, W]`` float32 C-contiguous image -> the output blob as an array (a view of NCNN's Mat).

        The input is copied into NCNN-owned memory (``clone``, ~0.3 ms at 416x416): a Mat that only wraps
        the numpy buffer crashes NCNN when the first layer works in place (e.g. a scalar BinaryOp).
        """
        return self._run_mat(self._ncnn.Mat(image).clone())

    def _run_mat(self, mat: Any) -> np.ndarray:
        threads = self.net.opt.num_threads
        if threads > 1 and POOL.inherited:  # opened before the fork: NCNN would wait for its pool for ever
            raise InputError(POOL.refusal(f"{self.param_path.name} opened before the fork on {threads} threads"))
        POOL.started(threads)
        ex = self.net.create_extractor()
        try:
            ex.input(self.input_name, mat)
            ret, out = ex.extract(self.output_name)
        finally:
            ex.clear()
        if ret != 0:
            raise ArtefactError(f"NCNN failed to run {self.param_path} (extract returned {ret})")
        arr = np.asarray(out)
        return arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr

    def _run_all(self, images: np.ndarray, run: Any) -> list[Any]:
        """``run`` on each image of the batch, outputs stacked."""
        first = run(images[0])
        out = np.empty((images.shape[0], *first.shape), np.float32)
        out[0] = first
        for i in range(1, images.shape[0]):
            out[i] = run(images[i])
        return [out]

    def _infer(self, batch: Any) -> list[Any]:
        x = np.ascontiguousarray(to_numpy(batch), dtype=np.float32)
        return self._run_all(x, self._run_one)

    def _infer_canvas(self, canvases: Any) -> list[Any]:
        """Canvases become NCNN Mats with ``Mat.from_pixels`` (NCNN's own uint8 HWC -> float CHW); option
        ``canvas_in_graph=False`` converts them in numpy instead."""
        if not self._runtime_converts_canvases:
            return super()._infer_canvas(canvases)
        c = np.ascontiguousarray(to_numpy(canvases))
        bgr = self._ncnn.Mat.PixelType.PIXEL_BGR
        return self._run_all(c,
                             lambda image: self._run_mat(self._ncnn.Mat.from_pixels(image, bgr, image.shape[1],
                                                                                     image.shape[0])))

    def _close(self) -> None:
        self.net.clear()
        del self.net
