"""What each benchmark row runs: which backend, on which device, from which weights, through which artefact.

Everything is looked up in the registries (``runtimes.registered_backends()``, ``export.registered_formats()``)
so a backend or format added later is benchmarked without a change here:

- a backend that opens checkpoints itself (``.pth`` among its suffixes: the torch backend) runs the model
  directly; any other one runs the artefact of the export format with its name, or else of the file format
  whose suffix it opens (``onnx`` -> ``.onnx`` -> ``onnxruntime``);
- artefacts are exported once per (model, weights, format, precision, batch, size, device) into a cache
  folder, verified against the torch model where the weights allow it (see ``ModelSource.verifiable``), and
  reused on the next run.

Weights: ``<weights_dir>/yolox_<v>.pth`` when present (real weights, AP can be measured), else the variant
built with seeded random weights (latency does not depend on weight values; post-processing time does a
little, since random weights produce almost no boxes above the confidence threshold).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import BackendUnavailable, InputError, YoloxError
from ..utils.files import file_sha256, remove_entry, write_text_atomic
from ..zoo import ModelSpec, get_spec

log = logging.getLogger(__name__)

# Spellings users type for backends whose registered names differ.
BACKEND_ALIASES = {"trt": "tensorrt", "ort": "onnxruntime", "ov": "openvino", "pytorch": "torch"}
RANDOM_SEED = 0


def canonical_backend(name: str) -> str:
    """``trt`` -> ``tensorrt``, ``ort`` -> ``onnxruntime``; other names as typed (lower case)."""
    key = name.strip().lower()
    return BACKEND_ALIASES.get(key, key)


def backend_status(name: str) -> tuple[bool, str]:
    """``(True, "")`` when the backend is registered and its package importable, else ``(False, reason)``."""
    from ..runtimes import IMPORT_ERRORS, registered_backends

    backends = registered_backends()
    if name in backends:
        return backends[name].info.available()
    if name in IMPORT_ERRORS:
        return False, f"the {name} backend failed to load ({IMPORT_ERRORS[name]})"
    known = ", ".join(sorted(backends))
    return False, f"no backend named {name!r} is registered (registered: {known})"


def known_backend_names() -> list[str]:
    """Registered backends plus built-in ones whose module did not load (reported as not available)."""
    from ..runtimes import BUILTIN_BACKENDS, registered_backends

    names = list(registered_backends())
    return names + [n for n in BUILTIN_BACKENDS if n not in names]


def format_for_backend(backend: str) -> str | None:
    """The export format whose artefacts ``backend`` runs (its registered ``FormatInfo.backend``); ``None``
    when no format feeds it and it runs checkpoints directly (the torch backend).

    Raises :class:`BackendUnavailable` when neither.
    """
    from ..export import registered_formats
    from ..nn.checkpoint import CHECKPOINT_SUFFIXES
    from ..runtimes import registered_backends

    for name, fmt in registered_formats().items():
        if fmt.info.backend == backend:
            return name
    cls = registered_backends().get(backend)
    if cls is not None and set(CHECKPOINT_SUFFIXES) & set(cls.info.suffixes):
        return None
    raise BackendUnavailable(f"no registered export format produces artefacts for the {backend} backend")


def pick_device(backend: str, requested: str) -> str:
    """The device a row runs on.

    ``auto``: ``cuda`` when torch sees a GPU and the backend as installed runs there (ONNX Runtime without its
    CUDA provider does not), else ``cpu`` when it runs there, else the backend's first device. ``cuda`` for a
    CPU-only backend (OpenVINO, NCNN) falls back to ``cpu``; ``cpu`` for a GPU-only backend is refused with a
    reason.
    """
    from ..runtimes import registered_backends

    cls = registered_backends().get(backend)
    devices = tuple(d.lower() for d in cls.info.devices) if cls is not None else ("cpu",)
    req = requested.strip().lower()
    kind = req.split(":")[0]
    if req == "auto":
        if "cuda" in devices and torch.cuda.is_available() and ("cpu" not in devices or _runs_on(cls, "cuda")):
            return "cuda"
        return "cpu" if "cpu" in devices else devices[0]
    if kind in devices:
        return requested
    if kind == "cuda" and "cpu" in devices:
        return "cpu"
    raise BackendUnavailable(f"the {backend} backend runs on {', '.join(devices)}, not {requested}")


def _runs_on(cls: Any, device: str) -> bool:
    """Whether the backend as installed here can use ``device`` (its own check, without opening an artefact)."""
    try:
        cls.check_device(device)
    except YoloxError:
        return False
    return True


# --- weights ---------------------------------------------------------------------------------------------
@dataclass
class ModelSource:
    """The weights a variant is benchmarked with: a checkpoint file, or a seeded random model."""

    spec: ModelSpec
    checkpoint: Path | None
    seed: int = RANDOM_SEED
    _model: Any = None
    _fingerprint: str | None = None

    @property
    def real(self) -> bool:
        return self.checkpoint is not None

    @property
    def label(self) -> str:
        return self.checkpoint.name if self.checkpoint else f"random (seed {self.seed})"

    def verifiable(self, precision: str) -> bool:
        """Whether an export in ``precision`` can be verified against the torch model. FP32 always (the head
        outputs are compared); reduced precision compares the anchors that score, and random weights have none."""
        return self.real or precision == "fp32"

    def model(self) -> Any:
        """The eval-mode torch model (loaded or built once)."""
        if self._model is None:
            from ..nn.checkpoint import load_model
            from ..nn.yolox import build_model

            if self.checkpoint is not None:
                self._model = load_model(self.checkpoint, self.spec.name)
            else:
                state = torch.random.get_rng_state()
                torch.manual_seed(self.seed)
                try:
                    self._model = build_model(self.spec.name).eval()
                finally:
                    torch.random.set_rng_state(state)
        return self._model

    def fingerprint(self) -> str:
        """Identifies the weights in cache keys: a content hash of the checkpoint, or the seed."""
        if self.checkpoint is None:
            return f"random{self.seed}"
        if self._fingerprint is None:
            self._fingerprint = file_sha256(self.checkpoint).hexdigest()[:12]
        return self._fingerprint


def checkpoint_for(spec: ModelSpec, weights_dir: Path | None) -> Path | None:
    """``<weights_dir>/<weights file>`` (``yolox_s.pth``...) or ``<weights_dir>/yolox_<v>.pth`` if it exists."""
    if weights_dir is None:
        return None
    stem = spec.name.replace("-", "_")
    for name in (spec.weights_file, f"{stem}.pth"):
        if name and (weights_dir / name).is_file():
            return weights_dir / name
    return None


def model_source(name: str, weights_dir: Path | None, seed: int = RANDOM_SEED) -> ModelSource:
    spec = get_spec(name)
    return ModelSource(spec, checkpoint_for(spec, weights_dir), seed)


# --- artefact cache --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArtefactRequest:
    model: str
    format: str
    precision: str
    batch: int
    img_size: tuple[int, int]
    device: str = "cpu"
    decode_in_graph: bool = True

    def folder_name(self, fingerprint: str) -> str:
        h, w = self.img_size
        dev = self.device.replace(":", "")
        decode = "" if self.decode_in_graph else "-raw"
        return f"{self.model}-{self.format}-{h}x{w}-b{self.batch}-{self.precision}-{dev}{decode}-{fingerprint}"


def export_options(req: ArtefactRequest, calib_images: Path | None, verify: bool = True,
                   verify_image: Path | None = None) -> dict[str, Any]:
    """Keyword options of :func:`yolox_deploy.export.export` for a request; ``verify_image``: a photo to
    verify on besides the synthetic scene (when ``verify``)."""
    opts: dict[str, Any] = {"img_size": req.img_size, "batch": req.batch, "verify": verify, "device": req.device}
    if verify and verify_image is not None:
        opts["verify_image"] = verify_image
    if req.precision == "fp16":
        opts["half"] = True
    elif req.precision == "int8":
        if calib_images is None:
            raise InputError("INT8 needs calibration images (--images or --calib-images)")
        opts["int8"] = True
        opts["calib_images"] = calib_images
    elif req.precision != "fp32":
        raise InputError(f"unknown precision {req.precision!r}; use fp32, fp16 or int8")
    if not req.decode_in_graph:
        opts["decode_in_graph"] = False
    return opts


def calibration_fingerprint(folder: Path) -> str:
    """The names, sizes and modification times of a calibration folder's images, hashed: another set of
    images, or one of them changed, calibrates another INT8 artefact."""
    from ..io.images import list_images

    h = hashlib.sha1()
    for p in list_images(folder):
        if not p.exists():  # a link whose image is gone: calibration leaves it out too
            continue
        st = p.stat()
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def cached_artefact(source: ModelSource, req: ArtefactRequest, cache_dir: Path,
                    calib_images: Path | None = None, verify_image: Path | None = None) -> tuple[Path, bool]:
    """Export ``source`` for ``req`` into ``cache_dir`` once; ``(artefact path, reused)``.

    A cache entry is a folder named after the request, the weights' fingerprint and (INT8) the calibration
    images' fingerprint, holding the artefact (and its sidecars) plus ``request.json``; it is reused only when
    that record matches, the exporting yolox-deploy version included. A failed export leaves no entry, and
    the staging an export killed outright left in one is removed by the next.
    """
    from .. import __version__
    from ..export import export, format_class

    info = format_class(req.format).info
    fingerprint = source.fingerprint()
    wanted: dict[str, Any] = {"request": {**req.__dict__, "img_size": list(req.img_size)}, "weights": source.label,
                              "fingerprint": fingerprint, "yolox_deploy": __version__}
    if req.precision == "int8" and calib_images is not None:
        calibration = calibration_fingerprint(calib_images)
        wanted["calibration"] = {"folder": str(Path(calib_images).resolve()), "fingerprint": calibration}
        fingerprint = f"{fingerprint}-c{calibration[:8]}"
    folder = cache_dir / req.folder_name(fingerprint)
    artefact = folder / f"{req.model.replace('-', '_')}{info.suffix}"
    record = folder / "request.json"
    if artefact.exists() and record.is_file():
        try:
            if json.loads(record.read_text()) == wanted:
                return artefact, True
        except (json.JSONDecodeError, OSError):
            pass
    opts = export_options(req, calib_images, verify=source.verifiable(req.precision), verify_image=verify_image)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.part"):  # the staging of an export that was killed (SIGKILL, power loss)
        remove_entry(stale)
    log.info("exporting %s -> %s (%s, batch %d, %dx%d)", req.model, req.format, req.precision, req.batch,
             *req.img_size)
    try:
        export(source.model(), req.format, artefact, force=True, **opts)
    except BaseException:
        if made and not any(folder.iterdir()):
            folder.rmdir()
        raise
    write_text_atomic(record, json.dumps(wanted, indent=2))
    return artefact, False


def write_calibration_images(images: list[Any], folder: Path) -> Path:
    """Write in-memory images as PNGs (for INT8 calibration when the run uses synthetic images)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        path = folder / f"calib_{i:03d}.png"
        if not path.exists():  # the same images each run: kept, so the calibration fingerprint stays
            tmp = folder / f".calib_{i:03d}.part.png"
            cv2.imwrite(str(tmp), im)
            os.replace(tmp, path)
    ours = {f"calib_{i:03d}.png" for i in range(len(images))}
    for stale in folder.glob("calib_*.png"):  # a longer earlier run's: not this run's calibration set
        if stale.name not in ours:
            stale.unlink()
    return folder
