"""Export a YOLOX checkpoint (or an existing ONNX file) to a deployable artefact.

    from yolox_deploy.export import export
    result = export("yolox_s.pth", "onnx", model="yolox-s", img_size=640, dynamic=True)

Formats register themselves (see :mod:`.base`); this module only drives them: validate the options against
the format's capability row, load the source, write into a staging folder, verify, then move into place.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..hub import released_variant, weights_folder
from ..io.images import read_image
from ..meta import ModelMeta
from ..nn.deploy import deploy_model
from ..structures import as_class_names
from ..utils.files import (
    REPLACEABLE_NAME_MAX,
    STALE_STAGING_SECONDS,
    check_creatable,
    move_into,
    remove_stale_parts,
    staging_folder,
    temp_prefix,
    too_long_to_replace,
)
from ..utils.plugins import import_builtins
from ..utils.text import listed
from ..utils.values import is_integer
from .base import (
    INT8_WITH_HALF,
    OPTIONAL_FEATURES,
    Exporter,
    ExportOptions,
    ExportResult,
    ExportSource,
    FormatInfo,
    check_nms_options,
    check_opset,
    register_format,
    registered_formats,
)
from .calibration import check_calibration_folder
from .source import load_source

log = logging.getLogger(__name__)

BUILTIN_FORMATS = ("onnx", "openvino", "ncnn", "tensorrt")
IMPORT_ERRORS: dict[str, str] = import_builtins(__name__, BUILTIN_FORMATS)

__all__ = ["ExportOptions", "ExportResult", "ExportSource", "Exporter", "FormatInfo", "export", "format_class",
           "register_format", "registered_formats"]


def format_class(name: str) -> type[Exporter]:
    """The exporter for a format name or alias (``trt`` -> ``tensorrt``, ``ov`` -> ``openvino``)."""
    if not isinstance(name, str):
        raise InputError(f"an export format is named by a string (onnx, openvino, ncnn, tensorrt), not {name!r}")
    key = name.strip().lower()
    for cls in registered_formats().values():
        if key == cls.info.name or key in cls.info.aliases:
            return cls
    names = sorted(n for c in registered_formats().values() for n in (c.info.name, *c.info.aliases))
    raise InputError(f"unknown export format {name!r}; choose one of: {', '.join(names)}")


def _check_options(info: FormatInfo, options: ExportOptions, requested: frozenset[str], onnx_source: bool) -> None:
    """Refuse, before any work, options out of range and options that do not apply (``requested``: the names
    the caller set; an option left at its default is never refused). ``onnx_source``: the weights are an
    ONNX file, whose own graph decides what its NMS settings may be (checked once it is read)."""
    _check_applicable(info, options, requested, onnx_source)
    if options.batch < 1:
        raise InputError(f"batch must be >= 1, got {options.batch}")
    if options.max_batch is not None and options.max_batch < options.batch:
        raise InputError(f"max batch {options.max_batch} is smaller than batch {options.batch}")
    if options.dynamic_hw and not options.dynamic:
        raise InputError("dynamic height/width needs a dynamic batch too (--dynamic)")
    if not options.workspace > 0:
        raise InputError(f"--workspace is the TensorRT builder's memory pool in GiB; it must be > 0, got "
                         f"{options.workspace:g}")
    if options.calib_method not in ("entropy", "minmax"):
        raise InputError(f"calibration method must be 'entropy' or 'minmax', got {options.calib_method!r}")
    check_nms_options(options)
    if options.int8:
        if not (is_integer(options.calib_count) and options.calib_count >= 1):
            raise InputError(f"calibration image count must be >= 1, got {options.calib_count}")
        if options.calib_images is None:
            raise InputError("INT8 needs calibration images: pass --calib-images DIR (a folder of ~100 images)")
        check_calibration_folder(options.calib_images)
    if options.verify_image is not None:
        if not options.verify:
            raise InputError("--verify-image is the image the verification runs on; it cannot go with --no-verify")
        if not Path(options.verify_image).is_file():
            raise InputError(f"{options.verify_image} is a folder; --verify-image takes one image"
                             if Path(options.verify_image).is_dir()
                             else f"verification image not found: {options.verify_image}")
        read_image(options.verify_image)  # a corrupt image is refused now, not after the export
    check_opset(options.opset)


def _flags(names: Sequence[str]) -> str:
    """``["max_det", "iou"]`` -> ``"--max-det, --iou"`` (option names as the CLI spells them)."""
    return ", ".join("--" + n.replace("_", "-") for n in names)


def _flags_are(names: Sequence[str]) -> str:
    """``["max_det", "iou"]`` -> ``"--max-det, --iou are"`` (the flags and their verb)."""
    return _flags(names) + (" is" if len(names) == 1 else " are")


def _check_applicable(info: FormatInfo, options: ExportOptions, requested: frozenset[str], onnx_source: bool) -> None:
    """Refuse requested options the format does not support, or that only apply together with another one."""
    changed = options.changed_from_default()
    asked = {o for o in OPTIONAL_FEATURES if o in changed or (o in requested and getattr(options, o))}
    unsupported = sorted(o for o in asked if o not in info.supports)
    if unsupported:
        raise InputError(f"the {info.name} format does not support {_flags(unsupported)}")
    if options.int8 and options.half and INT8_WITH_HALF not in info.supports:
        raise InputError(f"the {info.name} format takes --half or --int8, not both: its INT8 artefact keeps the "
                         "layers it does not quantise in FP32")
    if options.max_batch is not None and not options.dynamic:
        raise InputError("--max-batch is the top of a dynamic batch profile; it needs --dynamic")
    calib = [o for o in ("calib_images", "calib_count", "calib_method") if o in requested]
    if calib and not options.int8:
        raise InputError(f"{_flags_are(calib)} for INT8 calibration; add --int8")
    nms = [o for o in ("conf", "iou", "max_det") if o in requested]
    if nms and not options.nms and not onnx_source:  # an ONNX source's own NMS decides (_check_onnx_source_nms)
        raise InputError(f"{_flags_are(nms)} for the NMS inside the graph; add --nms (without it, thresholds "
                         "are chosen at run time, e.g. yolox-detect --conf)")
    if options.nms and "decode_in_graph" in requested and not options.decode_in_graph:
        raise InputError("--nms decodes the boxes in the graph; it cannot be combined with --no-decode-in-graph")


def _writable(folder: Path) -> bool:
    """False for folders we may not or should not write into (no write permission bits, even for root)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def default_output(source: ExportSource, info: FormatInfo, options: ExportOptions) -> Path:
    """``<dir of weights>/<stem><suffix>``, e.g. ``yolox_s.onnx``, ``yolox_s_openvino/``, ``yolox_s.engine``
    (``<stem>_deploy.onnx`` for an ONNX made from an ONNX file, wherever it is written: never the source, and
    one name whether the source's folder or the current one takes it).

    In the current folder instead when the weights' folder is not writable (a shared, read-only model store)
    or is the cache that released checkpoints are fetched into.
    """
    folder = source.weights.parent if source.weights is not None else Path.cwd()
    if not _writable(folder) or _is_weights_cache(folder):
        folder = Path.cwd()
    stem = source.name
    if options.precision != "fp32" and info.name != "onnx":
        stem = f"{stem}_{options.precision}"
    if source.onnx_path is not None and info.name == "onnx":
        stem = f"{stem}_deploy"
    return folder / f"{stem}{info.suffix}"


def _is_weights_cache(folder: Path) -> bool:
    """Whether ``folder`` is the released weights' cache (False where no cache folder can be found)."""
    try:
        return folder.resolve() == weights_folder().resolve()
    except InputError:
        return False


def export(weights: Any, format: str, output: str | os.PathLike | None = None, *, model: str | None = None,
           num_classes: int | None = None, class_names: Sequence[str] | None = None, legacy: bool = False,
           img_size: int | Sequence[int] | str | None = None, **options: Any) -> ExportResult:
    """Export ``weights`` (a checkpoint path, an ONNX path or a YOLOX module) to ``format``.

    Keyword options are the fields of :class:`ExportOptions`; those given (not ``None``) are the request, and
    one that does not apply (to the format, to the other options, or to an ONNX source, whose graph fixes
    its input size, batch and NMS) is refused before any work. Nothing is written unless every step,
    verification included, succeeds; an existing output is kept unless ``force=True``, and is replaced only
    by an artefact of its own kind (a file by a file, a format's folder by the same format's folder).
    """
    cls = format_class(format)
    info = cls.info
    class_names = as_class_names(class_names)
    options = {k: v for k, v in options.items() if v is not None}
    if img_size is not None:
        from ..utils.sizes import parse_img_size

        options["img_size"] = parse_img_size(img_size)
    for key in ("calib_images", "verify_image"):
        if isinstance(options.get(key), (str, os.PathLike)):  # other kinds are refused by check_types
            options[key] = Path(options[key])
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise InputError(f"output is the path of the artefact to write, not {output!r}")
    requested = frozenset(options)
    try:
        opts = ExportOptions(**options)
    except TypeError as e:
        raise InputError(f"unknown export option: {e}") from None
    opts = opts.checked()
    if isinstance(weights, (str, os.PathLike)) and released_variant(weights) is None and not Path(weights).exists():
        raise InputError(f"weights not found: {weights}")  # before anything is said about the output
    onnx_source = isinstance(weights, (str, os.PathLike)) and Path(weights).suffix.lower() == ".onnx"
    _check_options(info, opts, requested, onnx_source)
    if onnx_source and output is not None and Path(output).resolve() == Path(weights).resolve():
        raise InputError(f"output {output} would overwrite the input model; give another output")
    out = _check_output(Path(output), info, opts.force) if output is not None else None
    cls.require()
    cls.require_for(opts)

    source = load_source(weights, model=model, num_classes=num_classes, class_names=class_names, legacy=legacy,
                         img_size=tuple(opts.img_size) if "img_size" in requested else None)
    if source.model is not None:
        # exporters trace the deployment form; verification compares with the model as loaded
        source.reference = source.model
        source.model = deploy_model(source.model, half=opts.half)
    if source.model is None:
        if not info.accepts_onnx:
            raise InputError(f"the {info.name} format cannot be made from an ONNX file; export from the checkpoint")
        opts = _options_for_onnx_source(source, info, opts, requested)
    elif img_size is None:
        opts = replace(opts, img_size=tuple(source.meta.input_size))

    if out is None:
        out = _check_output(default_output(source, info, opts), info, opts.force)
    if opts.verify:
        from .verify import calibration_verification_image, check_source_runnable, check_verifiable

        check_verifiable(info.name, opts)
        check_source_runnable(source)
        if opts.int8 and opts.verify_image is None:
            opts = replace(opts, verify_image=calibration_verification_image(source, opts))
        cls.check_device(opts)  # verification runs the artefact there, after the (slow) build

    t0 = time.perf_counter()
    exporter = cls(opts, output=out)
    exporter.check_before(source)
    # what an export of this name killed (SIGKILL, out of memory) left, once nothing in it has moved for a day
    remove_stale_parts(out.parent, f"{glob.escape(temp_prefix(out.name))}*.part", STALE_STAGING_SECONDS)
    with staging_folder(out.parent, prefix=temp_prefix(out.name), target=out) as staging:
        staged = staging / out.name
        if info.is_dir:
            staged.mkdir()
        meta = exporter.export(source, staged)
        verification = None
        if opts.verify:
            from .verify import verify_artefact

            verification = verify_artefact(staged, source, opts, meta)
        if not opts.force and (out.exists() or out.is_symlink()):  # made by another process while this one ran
            raise InputError(f"{out} already exists (it was made while this export ran); pass --force (force=True) "
                             "to overwrite it")
        final = move_into(sorted(staging.iterdir()), out.parent)
    return ExportResult(out, meta, files=final, verification=verification, seconds=time.perf_counter() - t0)


# --- where the artefact goes ---------------------------------------------------------------------------------
def _check_output(out: Path, info: FormatInfo, force: bool) -> Path:
    """Refuse, before any work, an output that names nothing, is of the other kind (a folder where the format
    writes a file, or the reverse), is a file without the format's suffix, is a folder holding more than this
    format's files, exists without ``force``, or lies below a file or an unwritable folder. Returns ``out``."""
    if out.name in ("", ".", ".."):
        raise InputError(f"output {str(out)!r} does not name the artefact; give its own path, "
                         f"e.g. {out / ('model' + info.suffix)}")
    if out.is_symlink():  # a link (current -> v1) stays a link: the artefact it points to is the one replaced
        out = Path(os.path.realpath(out))
    kind = "folder" if info.is_dir else "file"
    if out.exists() and out.is_dir() != info.is_dir:
        hint = f"; give the {kind} path, e.g. {out / ('model' + info.suffix)}" if out.is_dir() else ""
        raise InputError(f"{out} is {'a folder' if out.is_dir() else 'a file'} and the {info.name} format "
                         f"writes a {kind}, so it cannot replace it{hint}")
    named = any(fnmatch.fnmatch(out.name.lower(), p) for p in info.artefact_files)
    if not info.is_dir and info.artefact_files and not named:
        names = " or ".join(p.replace("*", "NAME") for p in info.artefact_files)
        raise InputError(f"{info.name} artefacts are named {names} (the runtimes recognise them by that), "
                         f"not {out.name}")
    if info.is_dir and out.suffix.lower() in _model_file_suffixes(info):
        raise InputError(f"{info.name} artefacts are folders (e.g. {out.with_name(out.stem + info.suffix)}), and "
                         f"{out.name} would be a folder named like a model file; give a folder name")
    if out.exists():
        foreign = info.foreign_entries(out) if info.is_dir else []
        if foreign:
            if info.other_named_artefacts(foreign):
                raise InputError(f"{out} holds an {info.name} artefact of another name ({listed(foreign)}; this "
                                 f"export would name its files after the folder), so it is not replaced; choose "
                                 "another output, or remove it")
            raise InputError(f"{out} holds files the {info.name} format does not write ({listed(foreign)}), "
                             "so it is not replaced; choose another output")
        if not force:
            raise InputError(f"{out} already exists; pass --force (force=True) to overwrite it")
        if too_long_to_replace(out.name):
            raise InputError(f"{out} cannot be replaced: its name is longer than {REPLACEABLE_NAME_MAX} bytes (the "
                             "old artefact steps aside under a longer name while the new one moves in); give "
                             "another output")
    check_creatable(out)
    return out


def _model_file_suffixes(info: FormatInfo) -> set[str]:
    """The suffixes of model files: those the runtimes open, and those of the files in ``info``'s folders."""
    from ..runtimes import registered_backends

    return ({s for backend in registered_backends().values() for s in backend.info.suffixes}
            | {Path(p).suffix.lower() for p in info.artefact_files})


# --- an ONNX file as the source ------------------------------------------------------------------------------
def _options_for_onnx_source(source: ExportSource, info: FormatInfo, opts: ExportOptions,
                             requested: frozenset[str]) -> ExportOptions:
    """An existing ONNX fixes its input size, batch, NMS and opset: refuse requests that would change them,
    and an NMS graph for a format that cannot hold it.

    Its boxes follow ``decode_in_graph`` like a checkpoint's: a raw graph gets the decode step appended (the
    default; its input size must then be fixed), a graph that decodes cannot be made raw again.
    """
    m, name = source.meta, source.onnx_path.name
    if m.nms_in_graph and "nms" not in info.supports:
        raise InputError(f"{name} has NMS in its graph, which the {info.name} format cannot hold (its NMS runs in "
                         "the pipeline); export from the checkpoint, or from an ONNX exported without --nms")
    if m.nms_in_graph and m.extra.get("nms_plugin") == "tensorrt" and info.name != "tensorrt":
        raise InputError(f"{name} holds TensorRT's NMS plugin (EfficientNMS_TRT), from which only a TensorRT engine "
                         f"can be made; export the {info.name} artefact from the checkpoint")
    if "img_size" in requested and tuple(opts.img_size) != tuple(m.input_size) and not m.dynamic_hw:
        raise InputError(f"{name} is a {m.input_size[0]}x{m.input_size[1]} model; "
                         "its input size cannot change; export from the checkpoint instead")
    dynamic = m.batch is None
    batch_words = "a dynamic batch" if dynamic else f"a fixed batch of {m.batch}"
    if ("dynamic" in requested and opts.dynamic != dynamic
            or "batch" in requested and not dynamic and opts.batch != m.batch):
        raise InputError(f"{name} has {batch_words}, which cannot change; export from the checkpoint instead")
    if "dynamic_hw" in requested and opts.dynamic_hw != m.dynamic_hw:
        raise InputError(f"{name} has a {'dynamic' if m.dynamic_hw else 'fixed'} input size, which cannot change; "
                         "export from the checkpoint instead")
    rewrites = [o for o in ("opset", "simplify") if o in requested and (o == "opset" or opts.simplify)]
    if rewrites:
        raise InputError(f"{_flags_are(rewrites)} for the ONNX made from a checkpoint; {name} keeps its own graph")
    _check_onnx_source_nms(name, m, opts, requested)
    return replace(opts, img_size=tuple(opts.img_size if "img_size" in requested else m.input_size),
                   batch=m.batch or opts.batch, dynamic=dynamic, dynamic_hw=m.dynamic_hw,
                   decode_in_graph=_onnx_source_decodes(name, m, opts, requested), nms=m.nms_in_graph)


def _onnx_source_decodes(name: str, m: ModelMeta, opts: ExportOptions, requested: frozenset[str]) -> bool:
    """Whether the artefact of an ONNX source decodes: always when the source does, else per the options."""
    if m.decode_in_graph or m.nms_in_graph:
        if "decode_in_graph" in requested and not opts.decode_in_graph:
            raise InputError(f"{name} decodes the boxes in its graph, which cannot be undone; export from the "
                             "checkpoint with --no-decode-in-graph for a raw output")
        return True
    if opts.decode_in_graph and m.dynamic_hw:
        raise InputError(f"{name} has a raw output and a dynamic input size, so the decode step cannot be added "
                         "(it needs a fixed grid); pass --no-decode-in-graph to keep the raw output")
    return opts.decode_in_graph


def _check_onnx_source_nms(name: str, m: ModelMeta, opts: ExportOptions, requested: frozenset[str]) -> None:
    """NMS cannot be added to an ONNX source, and the NMS settings of one that has it cannot change."""
    if not m.nms_in_graph:
        asked = [o for o in ("conf", "iou", "max_det") if o in requested]
        if opts.nms or asked:
            what = f"{_flags_are(asked)} for the NMS inside a graph; " if asked and not opts.nms else ""
            raise InputError(f"{what}cannot add NMS to an existing ONNX file ({name} has none); export from the "
                             "checkpoint with --nms")
        return
    own = {"conf": m.extra.get("nms_conf"), "iou": m.extra.get("nms_iou"), "max_det": m.max_det}
    differ = [k for k in own if k in requested and getattr(opts, k) != own[k]]
    if differ:
        raise InputError(f"{name} has NMS in its graph (conf {own['conf']}, iou {own['iou']}, max det "
                         f"{own['max_det']}), which {_flags(differ)} cannot change; export from the checkpoint instead")
