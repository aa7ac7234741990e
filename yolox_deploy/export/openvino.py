"""OpenVINO IR: ``<stem>_openvino/<stem>.xml`` + ``.bin``, for Intel CPUs, GPUs and NPUs.

The torch model is converted directly (``openvino.convert_model`` on the fused module, decode in the graph
or not), an existing ONNX file (the authors' released models, or ours) by reading it; a raw one gets the
decode step first (:func:`~.onnx.write_onnx`), unless ``--no-decode-in-graph``. The input shape given
to the converter makes batch (and height/width) static or dynamic; the decode's grid is computed from the
feature-map shapes in the graph, so a dynamic-size IR decodes correctly at any size.

Precision: FP32; ``--half`` stores FP16 weights (``save_model(compress_to_fp16=True)``: half the size; the
runtime backend still computes in f32 on CPUs, in f16 on Intel GPUs); ``--int8`` quantises weights and
activations with NNCF post-training quantisation on ``--calib-images`` (:class:`~.calibration.CalibrationData`,
the artefact's own preprocessing); the tail after the last convolutions (sigmoids, box decode, NMS) stays in
floating point.

``--nms`` goes through the ONNX exporter (standard ``NonMaxSuppression``, which OpenVINO runs). The metadata
(:class:`~yolox_deploy.meta.ModelMeta` JSON) is stored in the IR's ``rt_info`` under ``META_KEY``, so
``Detector("x_openvino/")`` needs no other flag; its ``extra["openvino_bin_sha256"]`` records the digest of
the ``.bin`` written beside the XML, so the runtime refuses another export's weights (which OpenVINO reads
without complaint when they have the same size).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from ..errors import BackendUnavailable, ExportError
from ..meta import META_KEY, OPENVINO_BIN_SHA256, ModelMeta
from ..utils.files import file_sha256
from ..utils.packages import import_reason
from ..utils.signals import deferred
from .base import Exporter, ExportOptions, ExportSource, folder_stem, register_format

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "images", "output"
SCATTER_OPS = frozenset({"ScatterNDUpdate", "ScatterUpdate", "ScatterElementsUpdate"})


def _openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable("exporting to OpenVINO needs the 'openvino' package "
                                 "(pip install 'yolox-deploy[openvino]')") from None
    _telemetry_off()
    return ov


def _telemetry_off() -> None:
    """Keep OpenVINO's converter and NNCF from sending usage data (the package's default unless a user opted
    out by hand): each event is posted from a child process, which on a device without network waits for a
    timeout, and which a Ctrl-C during an export turned into a traceback per process. Their consent check
    answers "declined" for the rest of this process."""
    try:
        from openvino_telemetry import Telemetry
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # no telemetry package: nothing is sent
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    if getattr(Telemetry, "_SingletonMetaClass__single_instance", None) is not None:
        Telemetry().consent = False  # an instance made before this keeps its answer otherwise


def ir_stem(dest: Path) -> str:
    """``yolox_s_openvino`` -> ``yolox_s``: the file stem of the IR inside its folder."""
    return folder_stem(dest, "openvino")


def input_shape(meta: ModelMeta) -> list[int]:
    """The converter's input shape: ``[N, 3, H, W]`` with ``-1`` for dynamic dimensions."""
    h, w = meta.input_size
    return [-1 if meta.batch is None else meta.batch, 3, -1 if meta.dynamic_hw else h, -1 if meta.dynamic_hw else w]


def scatter_ops(model: Any) -> list[str]:
    """Names of scatter ops in an ``ov.Model`` (none expected: the decode is written with concatenations)."""
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in SCATTER_OPS]


def convert_torch(model: Any, meta: ModelMeta) -> Any:
    """The fused torch model -> ``ov.Model``, decoding iff ``meta.decode_in_graph``, in FP32.

    The model is traced here without the tracer's self-check (``check_trace=False``): the check reruns the
    traced graph in the TorchScript interpreter and made the conversion of YOLOX-Nano take ~25 s instead of
    ~5 s; the export's verification compares the IR with the torch model anyway.
    """
    import torch

    ov = _openvino()
    model = model.cpu().float().eval()
    h, w = meta.input_size
    example = torch.zeros((meta.batch or 1, 3, h, w), dtype=torch.float32)
    try:
        with torch.no_grad(), model.decoding(meta.decode_in_graph):
            traced = torch.jit.trace(model, example, check_trace=False, strict=False)
        # OpenVINO calls back into Python: an interrupt there was swallowed or made an error; a second Ctrl-C
        # tries at once (held or not, it stops the export when the conversion returns)
        with deferred(insist=True):
            ov_model = ov.convert_model(traced, example_input=example, input=[ov.PartialShape(input_shape(meta))])
    except Exception as e:  # the tracer and the converter raise their own exception types
        raise ExportError(f"OpenVINO could not convert the model ({type(e).__name__}: {str(e)[:300]})") from e
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    if len(ov_model.outputs) == 1:
        ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return ov_model


def convert_onnx(path: Path) -> Any:
    """An ONNX file -> ``ov.Model`` (names and shapes as in the file)."""
    ov = _openvino()
    try:
        with deferred(insist=True):  # a Ctrl-C waits for the conversion, then stops the export (see convert_torch)
            return ov.convert_model(str(path))
    except Exception as e:
        raise ExportError(f"OpenVINO could not convert {path.name} ({type(e).__name__}: {str(e)[:300]})") from e


def quantize_int8(ov_model: Any, meta: ModelMeta, folder: Path, count: int) -> Any:
    """NNCF post-training INT8 quantisation of ``ov_model`` on up to ``count`` images of ``folder``.

    ``mixed`` preset (symmetric weights, asymmetric activations, which suit SiLU's outputs), no model type
    (a CNN), fast bias correction. YOLOX-Nano on coco-tiny val (80 images), calibrated on the 100 unlabelled
    images, on a 2-core Xeon with AVX-512 VNNI: AP 0.3099 (FP32 0.3052) at 5.8 ms per image, where the
    ``performance`` preset (symmetric activations) gave AP 0.3024 at 6.1 ms and FP32 runs 7.8 ms; keeping
    the head's prediction convolutions in FP32 (an ignored scope) gave 0.3043. NNCF places no quantiser
    after the last convolutions (sigmoids, box decode, NMS stay in floating point).
    Batches follow the model's input: a fixed batch ``N`` gets batches of ``N`` (the last completed from
    the first images), a dynamic one single images.
    """
    try:
        import nncf
    except ImportError:
        raise BackendUnavailable("INT8 export to OpenVINO needs the 'nncf' package "
                                 "(pip install 'yolox-deploy[openvino]')") from None
    from .calibration import CalibrationData

    data = CalibrationData(folder, meta, count=count, batch=meta.batch or 1, last="fill", progress=False)
    log.info("INT8: calibrating on up to %d images of %s (NNCF)", data.num_images, folder)
    try:
        return nncf.quantize(ov_model, nncf.Dataset(data), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(data), fast_bias_correction=True)
    except nncf.errors.ValidationError as e:
        raise ExportError(f"INT8 quantisation failed: {e}") from e


def attach_meta(ov_model: Any, meta: ModelMeta) -> None:
    """Store the metadata in the model's ``rt_info`` (``META_KEY`` -> JSON), read back by the runtime."""
    ov_model.set_rt_info(meta.to_json(), META_KEY)


def record_bin_digest(xml: Path, meta: ModelMeta) -> ModelMeta:
    """``meta`` with the SHA-256 of the ``.bin`` beside ``xml`` in its ``extra``, written into the XML's
    ``rt_info`` in place of the metadata saved with the model (the digest exists only once the ``.bin`` does)."""
    meta = meta.with_(extra={**meta.extra, OPENVINO_BIN_SHA256: file_sha256(xml.with_suffix(".bin")).hexdigest()})
    tree = ElementTree.parse(xml)
    entry = tree.getroot().find(f"rt_info/{META_KEY}")
    if entry is None:
        raise ExportError(f"OpenVINO did not write the metadata into {xml.name} (no rt_info/{META_KEY})")
    entry.set("value", meta.to_json())
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    return meta


@register_format("openvino", suffix="_openvino", is_dir=True, package="openvino", extra="openvino",
                 supports=("dynamic", "dynamic_hw", "half", "int8", "nms", "decode_in_graph"), accepts_onnx=True,
                 aliases=("ov",), artefact_files=("{stem}.xml", "{stem}.bin"))
class OpenVINOExporter(Exporter):
    """OpenVINO IR folder (.xml + .bin) for Intel CPU / GPU / NPU; FP32, FP16 or INT8 (NNCF)."""

    @classmethod
    def require_for(cls, options: ExportOptions) -> None:
        reason = import_reason("nncf", "INT8 export to OpenVINO", "openvino") if options.int8 else None
        if reason is not None:
            raise BackendUnavailable(reason)

    def export(self, source: ExportSource, dest: Path) -> ModelMeta:
        ov = _openvino()
        o = self.options
        meta = self.artefact_meta(source)
        with contextlib.ExitStack() as stack:
            ov_model = self._convert(source, meta, stack)
            if o.int8:
                ov_model = quantize_int8(ov_model, meta, Path(o.calib_images), o.calib_count)
            attach_meta(ov_model, meta)
            xml = dest / f"{ir_stem(dest)}.xml"
            try:  # dest is a staging folder, moved into place whole
                ov.save_model(ov_model, str(xml), compress_to_fp16=o.half)
                return record_bin_digest(xml, meta)
            except ExportError:
                raise
            except Exception as e:  # OpenVINO's writer says "iostream error" for a full disk
                raise ExportError(f"could not write the OpenVINO IR into {(self.output or dest).parent} "
                                  f"({type(e).__name__}: {e}); is the disk full?") from e

    def _convert(self, source: ExportSource, meta: ModelMeta, stack: contextlib.ExitStack) -> Any:
        """The source as an ``ov.Model`` (FP32); temporary files live as long as ``stack``."""
        from .onnx import onnx_to_convert

        if source.model is not None and not self.options.nms:
            ov_model = convert_torch(source.model, meta)
            found = scatter_ops(ov_model)
            if found:  # the decode is written without in-place writes; scatter ops would be a regression
                raise ExportError(f"the converted graph has scatter ops ({', '.join(found[:3])}); "
                                  "export with --no-decode-in-graph")
            return ov_model
        # An ONNX source as it is, or the graph the ONNX exporter writes: in-graph NMS (standard
        # NonMaxSuppression, which OpenVINO runs) or the decode step of a raw ONNX source.
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="yolox-ov-")))
        return convert_onnx(onnx_to_convert(source, self.options, tmp / f"{source.name}.onnx"))
