"""Checkpoint I/O: the authors' format (``{"model": state_dict, ...}``), bare state dicts, and ours.

Checkpoints are untrusted input: they are read with ``torch.load(weights_only=True)``. Ours add
``model_name``, ``class_names`` and ``category_ids`` next to ``"model"`` (the authors' tools ignore unknown
keys), so a fine-tuned checkpoint knows its variant, its labels and their dataset category ids.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.coco import category_ids_problem
from ..errors import CheckpointError, InputError, WriteError
from ..hub import resolve_weights
from ..structures import as_class_names
from ..utils.files import atomic_write, check_readable
from ..utils.sizes import parse_img_size
from ..utils.values import is_integer
from ..zoo import VARIANTS, canonical_name
from .yolox import YOLOX, build_model

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")  # what torch.save files are named (the torch backend opens them)
CLASS_HEAD_PREFIX = "head.cls_preds."


@dataclass
class Checkpoint:
    """A checkpoint read from disk: the model state dict and whatever else it carried."""

    state_dict: dict[str, torch.Tensor]
    model_name: str | None = None
    class_names: tuple[str, ...] | None = None
    category_ids: tuple[int, ...] | None = None  # the training dataset's id of each class (yolox-train)
    input_size: tuple[int, int] | None = None  # the size the model was trained at (checkpoints of yolox-train)
    extra: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the file it was read from

    @property
    def num_classes(self) -> int | None:
        w = self.state_dict.get(f"{CLASS_HEAD_PREFIX}0.weight")
        return int(w.shape[0]) if w is not None and w.dim() else None

    def __repr__(self) -> str:  # a summary: the tensors (and an optimizer's state in extra) run to megabytes
        return (f"Checkpoint(model_name={self.model_name!r}, tensors={len(self.state_dict)}, "
                f"num_classes={self.num_classes}, input_size={self.input_size}, extra={sorted(self.extra)})")


def _record_failing_crc(path: Path) -> str | None:
    """What is damaged in a zip checkpoint (what torch.save writes), else None: the first record whose data does
    not match the CRC-32 its header stores, or whose header zipfile cannot read back (torch's reader passes over
    some: a changed name, version or method), or that the directory marks a folder (MS-DOS attribute 0x10: torch
    reads it as empty, its tensor as whatever memory held); or the directory itself. torch.load reads the records
    without checking them, so a bit flipped in a tensor loads as a wrong weight. Records stored with CRC 0
    (``torch.serialization.set_crc32_options(False)``) and files that are no zip archive (the pre-1.6 format) are
    not checked."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        archive = zipfile.ZipFile(path)
    except Exception:  # torch read the file: any failure here is damage (BadZipFile, UnicodeDecodeError, ...)
        return "its zip directory cannot be read back"
    with archive:
        for info in archive.infolist():
            if info.external_attr & 0x10 and not info.is_dir():
                return f"its record {info.filename} is marked as a folder"
            if info.CRC == 0 or info.is_dir():
                continue
            try:
                with archive.open(info) as f:  # zipfile compares the CRC-32 when the record has been read
                    while f.read(1 << 22):
                        pass
            except Exception:  # BadZipFile, OSError, EOFError; a damaged header: UnicodeDecodeError, zlib.error, ...
                return f"its record {info.filename} does not match its CRC-32 or its header"
    return None


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _strip_wrappers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the prefixes of the wrappers a model was saved inside, in any nesting: ``module.``
    (DataParallel, DDP) and ``_orig_mod.`` (``torch.compile``); then a ``model.`` holder's."""
    while True:
        stripped = _strip_prefix(_strip_prefix(sd, "module."), "_orig_mod.")
        if stripped is sd:
            return _strip_prefix(sd, "model.")
        sd = stripped


def parses_as_onnx(path: Path) -> bool:
    """Whether ``path`` parses as an ONNX model (onnx installed); for a message, on a file torch refused."""
    try:
        import onnx

        return len(onnx.load_model(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # not installed, or not ONNX: any failure means no
        return False


def check_weights_argument(weights: Any) -> None:
    """Refuse a ``weights`` argument that is neither a path (checkpoint or artefact) nor a YOLOX model."""
    if not isinstance(weights, (str, os.PathLike, YOLOX)):
        raise InputError(f"weights are a checkpoint or artefact path (or a YOLOX model), not {type(weights).__name__}")


def _numpy_numbers_allowed() -> contextlib.AbstractContextManager:
    """Let the weights-only unpickler rebuild numpy numbers: the authors' trainer saves COCOeval's
    ``numpy.float64`` as ``best_ap`` / ``curr_ap``. A numpy scalar pickles as ``multiarray.scalar(dtype, bytes)``
    (under numpy 2's module name or numpy 1's) with its dtype; these rebuild a number from bytes and run
    nothing else. Arrays and other numpy objects stay refused."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: numpy numbers stay refused
        return contextlib.nullcontext()
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar
    numeric = (np.bool_, np.integer, np.floating)
    dtypes = [t for t in vars(getattr(np, "dtypes", object)).values()
              if isinstance(t, type) and issubclass(getattr(t, "type", type(None)), numeric)]
    return safe_globals([(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"),
                         np.dtype, *dtypes])


def read_checkpoint(path: str | os.PathLike, model: str | None = None) -> Checkpoint:
    """Read a checkpoint file safely. Raises :class:`CheckpointError` with a one-line reason. A bare released
    name (``"yolox-s"``, ``"yolox_s.pth"`` with no such file here) reads the authors' checkpoint, fetched into
    the cache on first use (:mod:`yolox_deploy.hub`); one of another variant than ``model`` is refused first."""
    p = Path(resolve_weights(path, model=model))
    if not p.exists():
        raise InputError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes)")
    check_readable(p)  # permissions: not "damaged", as torch's own error would have it
    try:
        with warnings.catch_warnings(), _numpy_numbers_allowed():
            warnings.simplefilter("ignore")  # pickle-protocol chatter from the weights-only unpickler
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, KeyError, IndexError, TypeError, UnicodeDecodeError) as e:
        # the last four: bytes that are not a pickle at all (a text file) trip the unpickler's own lookups
        with open(p, "rb") as f:
            head = f.read(4)
        # a text file reads as pickle opcodes too ('c' is GLOBAL): only a zip archive or a binary pickle (what
        # torch.save writes) holds Python objects
        if "unsupported global" in str(e).lower() and (head.startswith(b"PK") or head.startswith(b"\x80")):
            raise CheckpointError(f"{p} holds Python objects, not only weights; refusing to unpickle it "
                                  "(checkpoints are loaded with weights_only=True)") from None
        if p.suffix.lower() == ".onnx" or parses_as_onnx(p):
            raise CheckpointError(f"{p} is an ONNX model, not a PyTorch checkpoint: run it as it is (the Detector and "
                                  "yolox-detect open .onnx files), or export from the .pth it was made from") from None
        raise CheckpointError(f"{p} is not a PyTorch checkpoint (unreadable pickle data)") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError, struct.error,
            AssertionError) as e:  # the last two: a damaged file of the pre-1.6 (non-zip) format
        if "TorchScript" in str(e):
            raise CheckpointError(f"{p} is a TorchScript archive (torch.jit.save), not a checkpoint of weights; save "
                                  "the model's state_dict() with torch.save instead") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.split(". ")[0].rstrip(".")  # PyTorch's first sentence, not its paragraph of advice
        raise CheckpointError(f"{p} is not a readable PyTorch checkpoint ({first}); the file is damaged or "
                              "incomplete") from None

    damaged = _record_failing_crc(p)
    if damaged is not None:
        raise CheckpointError(f"{p} is damaged: {damaged} (the file changed after it was written); fetch or copy "
                              "it again")

    extra: dict[str, Any] = {}
    # the weights under the first of these keys (the authors' "model" holds their EMA weights already)
    key = next((k for k in ("model", "state_dict", "ema", "state_dict_ema")
                if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    if key is not None:
        sd = obj[key]
        extra = {k: v for k, v in obj.items() if k != key}
    else:
        sd = obj
    if (not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values())
            or not all(isinstance(k, str) for k in sd)):
        raise CheckpointError(f"{p} does not contain a model state dict (expected {{'model': state_dict}}, "
                              "'state_dict' or 'ema', or a bare state dict of tensors)")
    sd = _strip_wrappers(sd)
    names = extra.pop("class_names", None)
    cat_ids = extra.pop("category_ids", None)
    model_name = extra.pop("model_name", None)
    size = extra.pop("input_size", None)
    if model_name is not None and not isinstance(model_name, str):
        raise CheckpointError(f"{p} names its model {model_name!r}, not a variant name such as 'yolox-s'")
    if names is not None and (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{p} holds class names that are not a list of strings")
    if cat_ids is not None:
        problem = category_ids_problem(cat_ids, len(cat_ids) if isinstance(cat_ids, (list, tuple)) else 0)
        if problem:
            raise CheckpointError(f"{p}: {problem}")
    if size is not None:
        try:
            size = parse_img_size(size)
        except InputError:
            raise CheckpointError(f"{p} records an input size that is not one ({size!r})") from None
    return Checkpoint(sd, model_name=model_name, class_names=tuple(names) if names else None,
                      category_ids=tuple(cat_ids) if cat_ids else None, input_size=size, extra=extra, source=p)


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def identify_variant(sd: dict[str, torch.Tensor], *, closest: bool = False) -> str | None:
    """The zoo variant whose module tree a state dict fits (ignoring the class count), or ``None``. With
    ``closest``, failing that, the variant sharing at least 90 % of its keys and shapes with the state dict
    (a file with a key or two extra or missing), whose mismatch message then names them."""
    w = sd.get(f"{CLASS_HEAD_PREFIX}0.weight")
    num_classes = int(w.shape[0]) if w is not None and w.dim() else 80
    target = _shapes(sd)
    best, best_share = None, 0.0
    for name in VARIANTS:
        with torch.device("meta"):
            candidate = _shapes(build_model(name, num_classes).state_dict())
        if candidate == target:
            return name
        shared = sum(1 for k, v in candidate.items() if target.get(k) == v)
        share = shared / max(len(candidate), len(target))
        if share > best_share:
            best, best_share = name, share
    return best if closest and best_share >= 0.9 else None


def _mismatch_message(model: YOLOX, ckpt: Checkpoint) -> str:
    want = _shapes(model.state_dict())
    have = _shapes(ckpt.state_dict)
    model_name = model.spec.name if model.spec else "the model"
    if ckpt.num_classes is not None and ckpt.num_classes != model.num_classes:
        rest_want = {k: v for k, v in want.items() if not k.startswith(CLASS_HEAD_PREFIX)}
        rest_have = {k: v for k, v in have.items() if not k.startswith(CLASS_HEAD_PREFIX)}
        if rest_want == rest_have:
            return (f"checkpoint has {ckpt.num_classes} classes, model has {model.num_classes}; drop num_classes "
                    "(--num-classes) "
                    f"to use the checkpoint's, or fine-tune it for {model.num_classes} classes with yolox-train "
                    "(which takes the class head over by class name where it can, else initialises it); in "
                    "Python, ignore_class_head=True loads everything but the class head")
    found = identify_variant(ckpt.state_dict)
    if found is not None and found != model_name:
        return f"checkpoint is for {found}, model is {model_name}"
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]}: checkpoint {have[wrong[0]]}, "
                     f"model {want[wrong[0]]})")
    return f"checkpoint does not fit {model_name}: " + "; ".join(parts)


def _keep_identity_batchnorms(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Keep folded (identity) BatchNorms identities, whatever eps the file was written for.

    Checkpoints converted from deployed graphs store every BN as weight 1, mean 0, variance ``1 - eps'``.
    Under the training eps (1e-3) that would scale each layer by ``1/sqrt(1 - eps' + 1e-3)``; giving such a
    layer the variance ``1 - eps`` makes it the identity it was written as, in its state dict (saved with it:
    no eps of its own that a save would lose or a later load into the same module would keep). The file's own
    tensors decide, in the precision they were written in: a model already in half precision rounds
    ``1 - eps'`` to exactly 1 when it is copied in, which says nothing about the file. In a half-precision file
    ``1 - eps'`` is exactly 1, so a variance of 1 qualifies there; in full precision that is a BatchNorm that
    never saw data, left as it is.
    """
    for name, m in model.named_modules():
        if not isinstance(m, nn.BatchNorm2d) or m.running_var is None:
            continue
        var, mean, weight = (sd.get(f"{name}.{k}") for k in ("running_var", "running_mean", "weight"))
        if var is None or mean is None or weight is None or var.numel() == 0:
            continue
        reduced_precision = var.dtype in (torch.float16, torch.bfloat16)
        gap = 1.0 - var[0].item()
        if ((0.0 < gap or (reduced_precision and gap == 0.0)) and gap < 0.01 and torch.all(var == var[0])
                and torch.all(mean == 0) and torch.all(weight == 1)):
            with torch.no_grad():
                m.running_var.fill_(1.0 - m.eps)


def _refuse_fused(model: YOLOX, hint: str) -> None:
    """Checkpoints hold the BatchNorms a fused model no longer has: :class:`InputError` (ending in ``hint``)."""
    if model.is_fused:
        raise InputError("this model is fused (BatchNorms folded into convolutions, as fuse() and deploy_model() "
                         f"make it for inference); {hint}")


def load_checkpoint(model: YOLOX, path: str | os.PathLike | Checkpoint, *, ignore_class_head: bool = False,
                    ) -> Checkpoint:
    """Load a checkpoint into ``model`` strictly.

    ``ignore_class_head=True`` loads everything but the class-specific layers (``head.cls_preds.*``), for
    fine-tuning on another label set; those layers keep their initialisation. Raises
    :class:`CheckpointError` naming what differs (variant, class count, keys).
    """
    _refuse_fused(model, "load the checkpoint before fusing it")
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path, model.spec.name if model.spec else None)
    own = model.state_dict()
    # a counter of BatchNorm updates for a layer the model does not have carries no weight (the shape check
    # below passes over these counters, which older checkpoints lack)
    sd = {k: v for k, v in ckpt.state_dict.items() if k in own or not k.endswith("num_batches_tracked")}
    want = _shapes(own)
    if ignore_class_head:
        sd = {k: v for k, v in sd.items() if not k.startswith(CLASS_HEAD_PREFIX)}
        want = {k: v for k, v in want.items() if not k.startswith(CLASS_HEAD_PREFIX)}
    name = ckpt.source or "the checkpoint"
    if _shapes(sd) != want:
        raise CheckpointError(f"{name}: {_mismatch_message(model, ckpt)}")
    odd = next((k for k, v in sd.items() if v.layout != torch.strided or v.device.type == "meta"), None)
    if odd is not None:
        kind = "a tensor on the meta device (no values)" if sd[odd].device.type == "meta" else \
            f"a {str(sd[odd].layout).replace('torch.', '')} tensor"
        raise CheckpointError(f"{name}: {odd} is {kind}, not dense weights; save the trained model's state_dict()")
    try:
        model.load_state_dict(sd, strict=not ignore_class_head)
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{name} does not load into {model.spec.name if model.spec else 'the model'}: "
                              f"{last}") from None
    _keep_identity_batchnorms(model, sd)
    if not ignore_class_head:
        for what, value in (("class_names", ckpt.class_names), ("category_ids", ckpt.category_ids)):
            if not value:
                continue
            if len(value) == model.num_classes:
                setattr(model, what, value)
            else:
                log.warning("the checkpoint's %d %s do not fit its %d-class head; they are not used",
                            len(value), what.replace("_", " "), model.num_classes)
    model.input_size = ckpt.input_size
    return ckpt


def load_model(path: str | os.PathLike, model: str | None = None, *, num_classes: int | None = None,
               class_names: tuple[str, ...] | None = None, ignore_class_head: bool = False) -> YOLOX:
    """Build the right variant for a checkpoint and load it (eval mode, on the CPU).

    The variant comes from ``model``, else from the checkpoint's own ``model_name``, else from the shapes
    of its state dict. ``num_classes`` defaults to the checkpoint's.
    """
    if num_classes is not None and not (is_integer(num_classes) and num_classes >= 1):
        raise InputError(f"the number of classes must be an integer >= 1, got {num_classes!r}")
    class_names = as_class_names(class_names)
    ckpt = read_checkpoint(path, model)
    name = canonical_name(model) if model else _recorded_variant(ckpt)
    if name is None:
        name = identify_variant(ckpt.state_dict, closest=True)
        if name is None:
            raise CheckpointError(f"cannot tell which YOLOX variant {path} is for; pass the model name "
                                  "(--model yolox-s)")
    n = num_classes if num_classes is not None else ckpt.num_classes or 80
    if class_names is not None and len(class_names) != n:
        raise InputError(f"{len(class_names)} class names given for a model with {n} classes")
    net = build_model(name, n, class_names=class_names)
    try:
        load_checkpoint(net, ckpt, ignore_class_head=ignore_class_head)
    except CheckpointError:
        found = identify_variant(ckpt.state_dict) if model is None and ckpt.model_name else None
        if found is not None and found != name:  # the file contradicts itself; the user named nothing
            raise CheckpointError(f"{path} records its model as {name} but holds {found} weights; pass "
                                  f"--model {found} (model={found!r})") from None
        raise
    if class_names is not None:  # the caller's names, over those the checkpoint records
        net.class_names = class_names
    return net.eval()


def _recorded_variant(ckpt: Checkpoint) -> str | None:
    """The variant a checkpoint records, in its canonical spelling (None when it records none); a name no
    variant has is refused, naming the file."""
    if ckpt.model_name is None:
        return None
    try:
        return canonical_name(ckpt.model_name)
    except InputError:
        raise CheckpointError(f"{ckpt.source} records an unknown model {ckpt.model_name!r}; pass the model name "
                              "(--model yolox-s)") from None


def save_checkpoint(model: YOLOX, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``{"model": state_dict, "model_name", "class_names", "category_ids", "input_size", **extra}``
    atomically (the authors' format, which reads only ``"model"``). ``extra`` holds what the weights-only
    unpickler (``torch.load(path, weights_only=True)``) reads back (tensors, numbers, strings, None, and lists,
    tuples and dicts of them); anything else, or a fused model (its BatchNorms folded away: no module tree of
    the authors fits it), is refused before anything is written."""
    _refuse_fused(model, "save the model before fusing it")
    reserved = sorted(set(extra) & {"model_name", "class_names", "category_ids", "input_size"})
    if reserved:  # the model's own, written from it: another value would make the file contradict itself
        raise InputError(f"save_checkpoint writes {', '.join(reserved)} from the model; set them on the model "
                         "(or build it for that variant) instead of passing them")
    for key, value in extra.items():
        odd = _not_weights_only(value)
        if odd is not None:
            raise InputError(f"cannot save {key!r} in a checkpoint: it holds a {odd}, which loading with "
                             "weights_only=True refuses; store tensors, numbers, strings or lists / dicts of them")
    payload: dict[str, Any] = {"model": model.state_dict()}
    if model.spec is not None:
        payload["model_name"] = model.spec.name
    if model.class_names is not None:
        payload["class_names"] = list(model.class_names)
    if model.category_ids is not None:
        payload["category_ids"] = list(model.category_ids)
    if model.input_size is not None:
        payload["input_size"] = list(model.input_size)
    payload.update(extra)
    with atomic_write(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:  # what is saved was checked above: torch reports a failed write (a full disk) so
            raise WriteError(path, f"the disk may be full (torch.save: {str(e).splitlines()[0]})") from None
    return Path(path)


def _not_weights_only(value: Any) -> str | None:
    """The type name of the first thing in ``value`` that the weights-only unpickler refuses, or None."""
    if isinstance(value, np.generic):  # numpy numbers pass for Python's (np.float64 is a float) but pickle apart
        return type(value).__name__
    # exact types: a subclass (an IntEnum or str Enum member, a tensor subclass) pickles as its class
    if value is None or type(value) in (torch.Tensor, nn.Parameter, str, bytes, int, float, complex, bool, torch.Size,
                                        torch.dtype, torch.device):
        return None
    if type(value) in (list, tuple, set):  # not subclasses: a namedtuple or a defaultdict pickles as its class
        return next((odd for v in value if (odd := _not_weights_only(v)) is not None), None)
    if type(value) in (dict, collections.OrderedDict):
        return next((odd for kv in value.items() for v in kv if (odd := _not_weights_only(v)) is not None), None)
    return type(value).__name__
