"""Export a YOLOX checkpoint (or an existing ONNX file) to a deployable artefact.

    from yolox_deploy.export import export
    result = export("yolox_s.pth", "onnx", model="yolox-s", img_size=640, dynamic=True)

Formats register themselves (see :mod:`.base`); this module only drives them: validate the options against
the format's capability row, load the source, write into a staging folder, verify, then move into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.images import list_images
from ..nn.deploy import deploy_model
from ..utils.plugins import import_builtins
from .base import (
    OPTIONAL_FEATURES,
    Exporter,
    ExportOptions,
    ExportResult,
    ExportSource,
    FormatInfo,
    register_format,
    registered_formats,
)
from .source import load_source

log = logging.getLogger(__name__)

BUILTIN_FORMATS = ("onnx", "openvino", "ncnn", "tensorrt")
IMPORT_ERRORS: dict[str, str] = import_builtins(__name__, BUILTIN_FORMATS)

__all__ = ["ExportOptions", "ExportResult", "ExportSource", "Exporter", "FormatInfo", "export", "format_class",
           "register_format", "registered_formats"]


def format_class(name: str) -> type[Exporter]:
    """The exporter for a format name or alias (``trt`` -> ``tensorrt``, ``ov`` -> ``openvino``)."""
    key = name.strip().lower()
    for cls in registered_formats().values():
        if key == cls.info.name or key in cls.info.aliases:
            return cls
    names = sorted(n for c in registered_formats().values() for n in (c.info.name, *c.info.aliases))
    raise InputError(f"unknown export format {name!r}; choose one of: {', '.join(names)}")


def _check_options(info: FormatInfo, options: ExportOptions) -> None:
    unsupported = sorted(o for o in options.changed_from_default() & set(OPTIONAL_FEATURES) if o not in info.supports)
    if unsupported:
        flags = ", ".join("--" + o.replace("_", "-") for o in unsupported)
        raise InputError(f"the {info.name} format does not support {flags}")
    if options.batch < 1:
        raise InputError(f"batch must be >= 1, got {options.batch}")
    if options.max_batch is not None and options.max_batch < options.batch:
        raise InputError(f"max batch {options.max_batch} is smaller than batch {options.batch}")
    if options.dynamic_hw and not options.dynamic:
        raise InputError("dynamic height/width needs a dynamic batch too (--dynamic)")
    if options.calib_method not in ("entropy", "minmax"):
        raise InputError(f"calibration method must be 'entropy' or 'minmax', got {options.calib_method!r}")
    if options.int8:
        if options.calib_images is None:
            raise InputError("INT8 needs calibration images: pass --calib-images DIR (a folder of ~100 images)")
        folder = Path(options.calib_images)
        if not folder.is_dir():
            raise InputError(f"calibration folder not found: {folder}")
        if not list_images(folder):
            raise InputError(f"no images in calibration folder {folder}")
    if options.verify_image is not None and not Path(options.verify_image).is_file():
        raise InputError(f"verification image not found: {options.verify_image}")
    if not 7 <= options.opset <= 21:
        raise InputError(f"ONNX opset {options.opset} is out of range (7..21)")


def _writable(folder: Path) -> bool:
    """False for folders we may not or should not write into (no write permission bits, even for root)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def default_output(source: ExportSource, info: FormatInfo, options: ExportOptions) -> Path:
    """``<dir of weights>/<stem><suffix>``, e.g. ``yolox_s.onnx``, ``yolox_s_openvino/``, ``yolox_s.engine``.

    In the current folder instead when the weights' folder is not writable (a shared, read-only model store).
    """
    folder = source.weights.parent if source.weights is not None else Path.cwd()
    if not _writable(folder):
        folder = Path.cwd()
    stem = source.name
    if options.precision != "fp32" and info.name != "onnx":
        stem = f"{stem}_{options.precision}"
    return folder / f"{stem}{info.suffix}"


def export(weights: Any, format: str, output: str | os.PathLike | None = None, *, model: str | None = None,
           num_classes: int | None = None, class_names: Sequence[str] | None = None, legacy: bool = False,
           img_size: int | Sequence[int] | str | None = None, **options: Any) -> ExportResult:
    """Export ``weights`` (a checkpoint path, an ONNX path or a YOLOX module) to ``format``.

    Keyword options are the fields of :class:`ExportOptions`. Nothing is written unless every step,
    verification included, succeeds; an existing output is kept unless ``force=True``.
    """
    cls = format_class(format)
    info = cls.info
    if img_size is not None:
        from ..utils.sizes import parse_img_size

        options["img_size"] = parse_img_size(img_size)
    for key in ("calib_images", "verify_image"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    try:
        opts = ExportOptions(**options)
    except TypeError as e:
        raise InputError(f"unknown export option: {e}") from None
    _check_options(info, opts)
    cls.require()

    source = load_source(weights, model=model, num_classes=num_classes, class_names=class_names, legacy=legacy)
    if source.model is not None:
        # exporters trace the deployment form; verification compares with the model as loaded
        source.reference = source.model
        source.model = deploy_model(source.model, half=opts.half)
    if source.model is None:
        if not info.accepts_onnx:
            raise InputError(f"the {info.name} format cannot be made from an ONNX file; export from the checkpoint")
        opts = _options_for_onnx_source(source, opts, img_size is not None)
    elif img_size is None:
        opts = replace(opts, img_size=tuple(source.meta.input_size))

    out = Path(output) if output is not None else default_output(source, info, opts)
    if source.onnx_path is not None and out.resolve() == source.onnx_path.resolve():
        raise InputError(f"output {out} would overwrite the input model")
    if out.exists() and not opts.force:
        raise InputError(f"{out} already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    exporter = cls(opts, output=out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        staged = staging / out.name
        if info.is_dir:
            staged.mkdir()
        meta = exporter.export(source, staged)
        verification = None
        if opts.verify:
            from .verify import verify_artefact

            verification = verify_artefact(staged, source, opts, meta)
        produced = sorted(staging.iterdir())
        final = [out.parent / p.name for p in produced]
        for p, dest in zip(produced, final):
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            os.replace(p, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, meta, files=final, verification=verification, seconds=time.perf_counter() - t0)


def _options_for_onnx_source(source: ExportSource, opts: ExportOptions, size_given: bool) -> ExportOptions:
    """An existing ONNX fixes input size, batch and what its graph does; refuse requests that change them."""
    m = source.meta
    if size_given and tuple(opts.img_size) != tuple(m.input_size) and not m.dynamic_hw:
        raise InputError(f"{source.onnx_path.name} is a {m.input_size[0]}x{m.input_size[1]} model; "
                         "its input size cannot change; export from the checkpoint instead")
    if opts.nms and not m.nms_in_graph:
        raise InputError("cannot add NMS to an existing ONNX file; export from the checkpoint with --nms")
    return replace(opts, img_size=tuple(m.input_size) if not size_given else opts.img_size,
                   batch=m.batch or opts.batch, dynamic=m.batch is None, dynamic_hw=m.dynamic_hw,
                   decode_in_graph=m.decode_in_graph, nms=m.nms_in_graph)
