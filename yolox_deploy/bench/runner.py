"""Run the benchmark: every (model, backend, precision, batch) row, then the demo head-to-head.

A row that cannot run (backend not installed, format without that precision, device missing) is kept
with ``status = "not available: <reason>"``; an unexpected error becomes ``"failed: <reason>"``. Either way
the run goes on to the next row.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtefactError, BackendUnavailable, CheckpointError, InputError, YoloxError
from ..io.images import list_images
from ..utils.files import check_folder_writable
from ..zoo import canonical_name, get_spec
from .artefacts import (
    ArtefactRequest,
    ModelSource,
    backend_status,
    cached_artefact,
    canonical_backend,
    checkpoint_for,
    format_for_backend,
    known_backend_names,
    model_source,
    pick_device,
    write_calibration_images,
)
from .flops import yolox_complexity
from .host import collect_host_info
from .latency import Clock, CudaClock, PipelineTimes, clock_for, measure_calls, sample_pipeline
from .results import FAILED, NOT_AVAILABLE, BenchReport, BenchRow, DemoComparison
from .tables import published

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
MAX_MODEL_IMAGES = 16   # images in the distinct preprocessed batches kept for the model-alone timing
SYNTHETIC_SIZES = ((480, 640), (640, 480), (720, 1280), (375, 500), (427, 640), (640, 427), (512, 512), (360, 640))


def shared_assets() -> Path | None:
    """``../shared/assets`` next to the working directory or the source checkout, when present."""
    here = Path(__file__).resolve().parents[2]
    for root in (Path.cwd().parent, here.parent):
        p = root / "shared" / "assets"
        if p.is_dir():
            return p
    return None


def default_images() -> Path | None:
    assets = shared_assets()
    p = assets / "images" / "coco-val-unlabeled" if assets else None
    return p if p is not None and p.is_dir() else None


def default_weights_dir() -> Path | None:
    assets = shared_assets()
    p = assets / "weights" if assets else None
    return p if p is not None and p.is_dir() else None


@dataclass
class BenchConfig:
    """What to benchmark and how. ``img_size`` ``None``: each variant's test size (416 Nano/Tiny, else 640).

    ``images``: folder of timing images (cycled; loaded into memory first), ``None`` for synthetic scenes.
    ``weights_dir``: folder with ``yolox_<v>.pth`` files (real weights; others use seeded random weights).
    ``with_eval``: a COCO folder; AP is measured for rows with real weights. ``device``: ``auto``, ``cpu``,
    ``cuda[:N]``. ``conf`` / ``nms``: the Detector's thresholds for the full-pipeline timing. ``threads``:
    passed to the backends that take it; ``backend_options``: runtime options per backend name (e.g.
    ``{"openvino": {"hint": "throughput"}}``), shown next to the backend in the tables. ``demo``: run the
    head-to-head with the authors' ORT demo. ``isolate``: run each row (and the head-to-head) in a fresh
    Python process, so no runtime loaded by an earlier row (its thread pool, its OpenMP copy) disturbs it.
    """

    models: Sequence[str] = ("yolox-nano",)
    backends: Sequence[str] = ("torch",)
    precisions: Sequence[str] = ("fp32",)
    batches: Sequence[int] = (1,)
    img_size: tuple[int, int] | None = None
    iters: int = 100
    warmup: int = 10
    max_seconds: float | None = None
    images: Path | None = None
    max_images: int = 100
    weights_dir: Path | None = None
    with_eval: Path | None = None
    eval_split: str = "val2017"
    output: Path = Path("runs/bench")
    cache_dir: Path | None = None
    calib_images: Path | None = None
    device: str = "auto"
    conf: float = 0.25
    nms: float = 0.45
    threads: int | None = None
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    demo: bool = True
    demo_rounds: int = 4
    isolate: bool = True
    seed: int = 0
    progress: bool = True
    extra_notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # each once, in the order given, whatever the spelling (nano and yolox_nano are one model)
        self.models = list(dict.fromkeys(canonical_name(m) for m in self.models))
        self.backends = list(dict.fromkeys(canonical_backend(b) for b in self.backends))
        self.backend_options = {canonical_backend(k): dict(v) for k, v in self.backend_options.items()}
        self.precisions = list(dict.fromkeys(p.strip().lower() for p in self.precisions))
        for p in self.precisions:
            if p not in PRECISIONS:
                raise InputError(f"unknown precision {p!r}; use {', '.join(PRECISIONS)}")
        self.batches = list(dict.fromkeys(int(b) for b in self.batches))
        if any(b < 1 for b in self.batches):
            raise InputError(f"batch sizes must be >= 1, got {self.batches}")
        if self.iters < 1 or self.warmup < 0:
            raise InputError(f"--iters must be >= 1 and --warmup >= 0 (got {self.iters}, {self.warmup})")
        if not self.models or not self.backends or not self.precisions or not self.batches:
            raise InputError("nothing to benchmark: give at least one model, backend, precision and batch size")
        for p in (self.images, self.weights_dir, self.with_eval, self.calib_images):
            if p is not None and not Path(p).is_dir():
                raise InputError(f"folder not found: {p}")
        if not 0.0 <= self.conf <= 1.0 or not 0.0 <= self.nms <= 1.0:
            raise InputError(f"thresholds must lie in [0, 1]: conf={self.conf}, nms={self.nms}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise InputError(f"--max-time must be > 0 seconds, got {self.max_seconds}")
        check_folder_writable(self.cache)
        if "int8" in self.precisions and self.calib_images is not None and not list_images(self.calib_images):
            raise InputError(f"no images to calibrate INT8 on in {self.calib_images}")
        known = known_backend_names()
        unknown = [b for b in self.backends if b not in known]
        if unknown:
            raise InputError(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(known)}")
        from ..runtimes.base import registered_backends

        devices = (d.lower() for cls in registered_backends().values() for d in cls.info.devices)
        kinds = list(dict.fromkeys(["auto", *devices]))
        kind, _, index = str(self.device).strip().lower().partition(":")
        if kind not in kinds or (index and not index.isdigit()):  # a device missing here is a row's "not available"
            raise InputError(f"unknown device {self.device!r}; the backends run on {', '.join(kinds)} (cuda:N, "
                             "vulkan:N for another GPU)")
        for name, options in self.backend_options.items():
            if name not in known:
                raise InputError(f"--backend-option for an unknown backend {name!r}; known: {', '.join(known)}")
            cls = registered_backends().get(name)
            if cls is not None:  # else its module did not load: its rows say why
                cls.check_options(options)
        if self.with_eval is not None:  # a dataset that cannot be scored is refused now, not after the timing
            from ..eval.coco import open_scorable

            open_scorable(self.with_eval, self.eval_split)

    def check_weights(self) -> dict[str, int]:
        """Each checkpoint the run would take from ``weights_dir`` loads into its variant: a damaged or
        misnamed one is refused before the run, not once per row after the others were timed (called once
        by :func:`run_benchmark`, not by each row's process, which rebuilds the config). Returns each loaded
        checkpoint's class count by model name (the model timed; random weights have 80)."""
        from ..nn.checkpoint import load_model

        classes: dict[str, int] = {}
        for name in self.models:
            path = checkpoint_for(get_spec(name), self.weights_dir)
            if path is not None:
                try:
                    classes[name] = load_model(path, name).num_classes
                except YoloxError as e:
                    message = str(e) if str(path) in str(e) else f"{path}: {e}"
                    raise CheckpointError(f"{message} (from --weights-dir; fix or remove it)") from None
        return classes

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output) / "cache"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("images", "weights_dir", "with_eval", "output", "cache_dir", "calib_images"):
            if d.get(key) is not None:
                d[key] = Path(d[key])
        if d.get("img_size") is not None:
            d["img_size"] = tuple(d["img_size"])
        return cls(**d)


# --- images ----------------------------------------------------------------------------------------------
def load_timing_images(folder: Path | None, limit: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """The timing images in memory (decoding is never timed) and a description of where they came from."""
    from ..io.images import read_image
    from ..io.synthetic import synthetic_scene

    if folder is not None:
        files = list_images(folder)[:limit]
        if not files:
            raise InputError(f"no images in {folder}")
        return [read_image(f) for f in files], f"{len(files)} images from {folder}"
    n = max(1, min(limit, 16))
    images = [synthetic_scene(*SYNTHETIC_SIZES[i % len(SYNTHETIC_SIZES)], seed=seed + i) for i in range(n)]
    return images, f"{n} synthetic scenes (io.synthetic, seed {seed})"


def image_groups(images: Sequence[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """Consecutive groups of ``batch`` images covering the list (wrapping around at the end)."""
    n = len(images)
    count = max(1, math.ceil(n / batch))
    return [[images[(g * batch + j) % n] for j in range(batch)] for g in range(count)]


# --- one row ---------------------------------------------------------------------------------------------
class _NotAvailable(Exception):
    pass


def _open_detector(weights: Any, backend: str, device: str, cfg: BenchConfig, source: ModelSource, precision: str,
                   size: tuple[int, int], batch: int, **overrides: Any):
    from ..runtimes.base import backend_class
    from ..runtimes.detector import Detector

    kwargs: dict[str, Any] = {"backend": backend, "device": device, "conf": cfg.conf, "nms": cfg.nms,
                              "batch_size": batch, "model": source.spec.name}
    if cfg.threads is not None and "threads" in backend_class(backend).option_names:
        kwargs["threads"] = cfg.threads
    kwargs.update(cfg.backend_options.get(backend, {}))
    if not isinstance(weights, (str, Path)):  # an in-memory torch model: tell the backend what we want
        kwargs["img_size"] = size
        kwargs.setdefault("half", precision == "fp16")  # unless --backend-option chose
    kwargs.update(overrides)
    return Detector(weights, **kwargs)


def _device_batches(batches: list[np.ndarray], clock: Clock, det: Any) -> tuple[list[Any], bool]:
    """Put the model-alone inputs on the GPU when timing a CUDA backend that accepts device tensors."""
    if not isinstance(clock, CudaClock):
        return batches, False
    import torch

    try:
        staged = [torch.from_numpy(b).to(clock.device) for b in batches]
        det.infer(staged[0])
        clock.sync()
        return staged, True
    except Exception as e:  # the backend takes host arrays only: time it with the host-to-device copy
        log.info("%s takes host arrays (%s); model-alone time includes the copy", det.backend.info.name, e)
        return batches, False


class RowRunner:
    """Runs the rows of one benchmark; keeps what the demo comparison needs (weights of the fastest rows)."""

    def __init__(self, cfg: BenchConfig, images: list[np.ndarray],
                 ap_cache: dict[str, tuple[float, float]] | None = None) -> None:
        self.cfg = cfg
        self.images = images
        self._calib: Path | None = None
        self._eval_data: Any = None
        self.ap_cache: dict[str, tuple[float, float]] = dict(ap_cache or {})

    def calib_folder(self) -> Path:
        if self.cfg.calib_images is not None:
            return Path(self.cfg.calib_images)
        if self.cfg.images is not None:
            return Path(self.cfg.images)
        if self._calib is None:
            self._calib = write_calibration_images(self.images, self.cfg.cache / "calibration")
        return self._calib

    def verification_image(self) -> Path | None:
        """The photo exports of real weights are verified on: the first of ``--images`` (reduced precision
        compares the anchors that score, which the synthetic scene may not give at a small input size);
        None when the run times synthetic images."""
        if self.cfg.images is None:
            return None
        files = list_images(self.cfg.images)
        return files[0] if files else None

    def weights_for(self, source: ModelSource, backend: str, precision: str, batch: int, size: tuple[int, int],
                    device: str, row: BenchRow) -> Any:
        fmt = format_for_backend(backend)
        if fmt is None:
            return source.model()
        from ..export.verify import NoVerificationImage

        req = ArtefactRequest(source.spec.name, fmt, precision, batch, size, device)
        calib = None
        try:
            calib = self.calib_folder() if precision == "int8" else None
            photo = self.verification_image() if source.real else None
            path, reused = cached_artefact(source, req, self.cfg.cache, calib, verify_image=photo)
        except NoVerificationImage:
            raise _NotAvailable(f"INT8 of real weights is verified on a calibration image the model detects something "
                                f"on, and none of {calib} shows anything (synthetic images): give --calib-images "
                                "DIR or --images DIR (photos with objects)") from None
        except (BackendUnavailable, InputError) as e:
            raise _NotAvailable(str(e)) from None
        row.artefact = str(path)
        row.notes.append(("artefact reused from cache" if reused else "artefact exported")
                         + (" (verified)" if source.verifiable(precision) else
                            f" (not verified: random weights score no anchor to compare in {precision})"))
        return path

    def run(self, spec: RowSpec, source: ModelSource) -> BenchRow:
        cfg = self.cfg
        backend, precision, batch, size = spec.backend, spec.precision, spec.batch, spec.img_size
        row = spec.new_row(source, cfg.backend_options.get(backend, {}), cfg.device)
        try:
            row.device = pick_device(backend, cfg.device)
            ok, why = backend_status(backend)
            if not ok:
                raise _NotAvailable(why)
            weights = self.weights_for(source, backend, precision, batch, size, row.device, row)
            self._measure(row, weights, source)
        except (_NotAvailable, BackendUnavailable) as e:
            row.status = f"{NOT_AVAILABLE}: {e}"
        except YoloxError as e:
            row.status = f"{FAILED}: {e}"
            if isinstance(e, ArtefactError) and row.artefact and self._from_cache(row):
                row.status += f" (delete the cache entry {Path(row.artefact).parent} to export it again)"
        except Exception as e:  # a bug in one backend must not end the whole benchmark
            log.warning("%s %s %s b%d failed", row.model, backend, precision, batch, exc_info=True)
            row.status = f"{FAILED}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        log.info("%s %s %s b%d %s: %s", row.model, backend, precision, batch, row.input,
                 f"{row.model_ms.mean:.2f} ms model, {row.pipeline.total.mean:.2f} ms full" if row.ok else row.status)
        return row

    def _from_cache(self, row: BenchRow) -> bool:
        """Whether the row's artefact is an export of this run's cache (rather than a user's file)."""
        cache = Path(self.cfg.cache).resolve()
        return cache in Path(row.artefact).resolve().parents

    def _measure(self, row: BenchRow, weights: Any, source: ModelSource) -> None:
        from ..runtimes.base import asked_precision

        cfg = self.cfg
        with _open_detector(weights, row.backend, row.device, cfg, source, row.precision, row.img_size,
                            row.batch) as det:
            got = det.backend.compute_precision  # an FP16 artefact computed in FP32 is no FP16 row
            asked = asked_precision(row.options)
            if got != row.precision:
                if got != asked:  # not what the artefact is, nor what an option asked for
                    also = f" (its --backend-option asked for {asked})" if asked else ""
                    raise _NotAvailable(f"the {row.backend} backend runs {got}, not {row.precision}, on "
                                        f"{row.device}{also}")
                row.notes.append(f"computes in {got}, as its --backend-option asks")
            elif asked is not None and asked != got:  # the artefact's own precision: a valid row, said as such
                row.notes.append(f"computes in {got}: its --backend-option asked for {asked}, which {row.device} "
                                 "does not run")
            if tuple(det.meta.input_size) != tuple(row.img_size):
                raise _NotAvailable(f"the artefact's input is {det.meta.input_size}, not {row.img_size}")
            clock = clock_for(det.backend.output_device)
            row.clock = clock.name
            groups = image_groups(self.images, row.batch)
            batches = [det.preprocess(g)[0] for g in groups[:max(1, MAX_MODEL_IMAGES // row.batch)]]
            inputs, on_device = _device_batches(batches, clock, det)
            row.input_on_device = on_device if isinstance(clock, CudaClock) else None
            label = f"{row.model} {row.backend} {row.precision} b{row.batch}"
            row.model_ms = measure_calls(det.infer, inputs, iters=cfg.iters, warmup=cfg.warmup, clock=clock,
                                         max_seconds=cfg.max_seconds, desc=f"{label} model", progress=cfg.progress)
            del inputs, batches
            samples = sample_pipeline(det, groups, iters=cfg.iters, warmup=cfg.warmup, clock=clock,
                                      max_seconds=cfg.max_seconds, desc=f"{label} full", progress=cfg.progress)
            row.pipeline = PipelineTimes.from_samples(samples)
        if cfg.with_eval is not None:
            self._evaluate(row, weights, source)

    def _evaluate(self, row: BenchRow, weights: Any, source: ModelSource) -> None:
        if not source.real:
            row.notes.append("no AP: random weights (put yolox_<v>.pth in --weights-dir)")
            return
        key = ap_key(row)
        if key not in self.ap_cache:
            from ..eval.coco import AUTHORS_PROTOCOL, evaluate, open_scorable

            if self._eval_data is None:
                self._eval_data = open_scorable(self.cfg.with_eval, self.cfg.eval_split)
            with _open_detector(weights, row.backend, row.device, self.cfg, source, row.precision, row.img_size,
                                row.batch, **AUTHORS_PROTOCOL) as det:
                result = evaluate(det, self._eval_data, progress=self.cfg.progress)
            self.ap_cache[key] = (result.stats["AP"], result.stats["AP50"])
        row.ap, row.ap50 = self.ap_cache[key]


def ap_key(row: BenchRow) -> str:
    """Rows that differ only in batch size share their AP."""
    return f"{row.model}|{row.backend_label}|{row.precision}|{row.input}|{row.device}"


def row_weights(row: BenchRow, source: ModelSource) -> Any:
    """What a measured row ran: its cached artefact, or the torch model of its weights."""
    return Path(row.artefact) if row.artefact else source.model()


# --- the head-to-head with the authors' demo -------------------------------------------------------------
def _demo_onnx(runner: RowRunner, source: ModelSource, size: tuple[int, int]) -> Path:
    """The authors' released raw ONNX next to real weights when it holds those weights, else our export
    without decode in the graph (the race must run one model on both sides)."""
    if source.real:
        theirs = source.checkpoint.with_suffix(".onnx")
        if theirs.is_file():
            if _holds_the_weights(theirs, source, size):
                return theirs
            log.warning("%s does not hold the weights of %s; the demo runs them exported without decode instead",
                        theirs.name, source.checkpoint.name)
    req = ArtefactRequest(source.spec.name, "onnx", "fp32", 1, size, "cpu", decode_in_graph=False)
    path, _ = cached_artefact(source, req, runner.cfg.cache)
    return path


def _holds_the_weights(onnx_path: Path, source: ModelSource, size: tuple[int, int]) -> bool:
    """Whether a raw-output ONNX file computes what ``source``'s model computes: its output on a synthetic
    scene, preprocessed as the demo does, equals the model's within FP32 verification's tolerance."""
    from ..export.verify import TOLERANCE
    from ..io.synthetic import synthetic_scene
    from .demo_pipeline import DemoPipeline

    try:
        demo = DemoPipeline(onnx_path)
    except BackendUnavailable:  # no ONNX Runtime: the demo cannot run at all, whichever file it is given
        raise
    except YoloxError:
        return False
    if demo.input_hw != tuple(size):
        return False
    batch, _ = demo.preprocess([synthetic_scene()])
    theirs = np.asarray(demo.infer(batch)[0])
    ours = source.model().head_output(batch, decode=False)
    return theirs.shape == ours.shape and float(np.abs(theirs - ours).max()) <= TOLERANCE["fp32"]


def demo_candidates(rows: Sequence[BenchRow], model: str = "yolox-nano", size: tuple[int, int] = (416, 416)
                    ) -> list[BenchRow]:
    """Rows eligible for the demo comparison, fastest full pipeline first: CPU, batch 1, at ``size``."""
    eligible = [r for r in rows if r.ok and r.model == model and r.img_size == size and r.batch == 1
                and r.device.lower().startswith("cpu") and r.pipeline is not None]
    return sorted(eligible, key=lambda r: r.pipeline.total.mean)


def demo_contenders(rows: Sequence[BenchRow], model: str = "yolox-nano", size: tuple[int, int] = (416, 416)
                    ) -> list[BenchRow]:
    """What races the demo: our fastest CPU row, and the fastest FP32 row when the fastest is not FP32."""
    candidates = demo_candidates(rows, model, size)
    picks = candidates[:1]
    fp32 = next((r for r in candidates if r.precision == "fp32"), None)
    if fp32 is not None and fp32 not in picks:
        picks.append(fp32)
    return picks


def run_demo_comparison(runner: RowRunner, rows: Sequence[BenchRow], sources: dict[str, ModelSource]
                        ) -> tuple[list[DemoComparison], str | None]:
    """Our fastest CPU Detectors for Nano 416 vs the authors' ORT demo pipeline; ``(results, reason if skipped)``."""
    from .demo_pipeline import DemoPipeline

    size = get_spec("yolox-nano").test_size
    contenders = demo_contenders(rows, "yolox-nano", size)
    if not contenders:
        return [], "demo comparison skipped: no successful CPU batch-1 row for yolox-nano at 416x416"
    source = sources["yolox-nano"]
    try:
        demo = DemoPipeline(_demo_onnx(runner, source, size), threads=runner.cfg.threads)
    except YoloxError as e:
        return [], f"demo comparison skipped: {e}"
    reference = next((r for r in rows if r.model == "yolox-nano" and r.precision == "fp32" and r.ap is not None), None)
    return [_race(runner, demo, row, source, size, reference) for row in contenders], None


def _race(runner: RowRunner, demo: Any, best: BenchRow, source: ModelSource, size: tuple[int, int],
          reference: BenchRow | None) -> DemoComparison:
    """One head-to-head: ``best``'s Detector and the demo pipeline on the same images, interleaved."""
    from ..ops.match import EMPTY, match_detections
    from .demo_pipeline import DEMO_NMS_IOU, DEMO_NMS_SCORE

    cfg = runner.cfg
    weights = row_weights(best, source)
    with _open_detector(weights, best.backend, best.device, cfg, source, best.precision, best.img_size, 1,
                        conf=DEMO_NMS_SCORE, nms=DEMO_NMS_IOU, class_agnostic=True, max_det=None, clip=False) as det:
        agreement = EMPTY
        for im in runner.images:
            theirs = demo(im)
            [ours] = det.run_batch([im])
            agreement = agreement + match_detections(theirs[:, :4], theirs[:, 5].astype(np.int64), ours.xyxy,
                                                     ours.class_ids)
        groups = [[im] for im in runner.images]
        rounds = max(1, min(cfg.demo_rounds, cfg.iters))
        per_round = max(1, cfg.iters // rounds)
        warm = max(1, min(cfg.warmup, 5))
        budget = cfg.max_seconds / rounds if cfg.max_seconds else None  # --max-time per side, over its rounds
        ours_s, demo_s = [], []
        clock = clock_for("cpu")
        for k in range(rounds):
            order = ((det, ours_s), (demo, demo_s)) if k % 2 else ((demo, demo_s), (det, ours_s))
            for pipeline, store in order:
                store.append(sample_pipeline(pipeline, groups, iters=per_round, warmup=warm, clock=clock,
                                             max_seconds=budget, offset=k * per_round,
                                             desc=f"demo vs {best.backend} {best.precision} "
                                             f"{k + 1}/{rounds}", progress=cfg.progress))
    calls = (f"up to {per_round} calls each (--max-time {cfg.max_seconds:g} s per side)" if budget else
             f"{per_round} calls each")
    notes = [f"weights: {source.label}", f"{rounds} interleaved rounds of {calls} (+{warm} warm-up calls per block)",
             f"our row: the fastest CPU {'FP32 ' if best.precision == 'fp32' else ''}Detector of this run "
             f"({best.backend_label}, {best.precision})",
             f"{cfg.threads} inference threads on both sides (--threads)" if cfg.threads else
             "each side with its runtime's default thread count"]
    if best.ap is not None:
        versus = (f" vs {reference.ap:.4f} (fp32, {reference.backend_label})"
                  if reference is not None and best.precision != "fp32" else "")
        notes.append(f"AP on the evaluation set: {best.ap:.4f} ({best.precision}){versus}")
    return DemoComparison("yolox-nano", size, best.backend_label, best.precision, str(demo.path),
                          PipelineTimes.from_samples(np.concatenate(ours_s)),
                          PipelineTimes.from_samples(np.concatenate(demo_s)), len(runner.images),
                          agreement.agreement, notes=notes, ours_ap=best.ap)


# --- process isolation -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowSpec:
    """One row to measure (what ``run_benchmark`` loops over); serialisable for a worker process."""

    model: str
    backend: str
    precision: str
    batch: int
    img_size: tuple[int, int]
    params: int
    gflops: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "img_size": list(self.img_size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RowSpec:
        return cls(d["model"], d["backend"], d["precision"], int(d["batch"]), tuple(d["img_size"]), int(d["params"]),
                   float(d["gflops"]))

    def new_row(self, source: ModelSource, options: dict[str, Any], device: str) -> BenchRow:
        """The row this spec measures on the requested ``device``, not measured yet (status ``ok`` until
        something says otherwise)."""
        return BenchRow(self.model, self.backend, self.precision, self.batch, self.img_size, self.params, self.gflops,
                        device=device, weights=source.label, published=published(self.model), options=dict(options))

    def run(self, runner: RowRunner, source: ModelSource) -> BenchRow:
        return runner.run(self, source)

    def failed_row(self, source: ModelSource, options: dict[str, Any], device: str) -> BenchRow:
        row = self.new_row(source, options, device)
        row.status = FAILED
        return row


def run_isolated(command: str, cfg: BenchConfig, payload: dict[str, Any], fallback: BenchRow | None = None) -> Any:
    """Run ``yolox_deploy.bench.worker <command>`` in a fresh interpreter and return its decoded result.

    The worker shares this process's stderr (progress bars, log messages). For ``"row"``, a worker that
    dies (a crash inside a runtime) gives ``fallback`` with a ``failed`` status.
    """
    import json
    import signal
    import subprocess
    import sys
    import tempfile

    level = logging.getLogger("yolox_deploy").getEffectiveLevel()
    with tempfile.TemporaryDirectory(prefix="yolox-bench-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"config": cfg.to_dict(), "log_level": level, **payload}, default=str))
        # its own session: a Ctrl-C at the terminal reaches this process alone, which stops the worker
        # (stop_worker) and says "interrupted"; the worker holds it while it imports (launch.bench_worker)
        proc = subprocess.Popen([sys.executable, "-c", WORKER_BOOTSTRAP, command, str(spec), str(out)],
                                stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:
            stop_worker(proc)
            raise
        if code == 0 and out.is_file():
            result = json.loads(out.read_text())
            return BenchRow.from_dict(result) if command == "row" else result
    try:
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
    except ValueError:
        why = f"code {code}"
    reason = f"the worker process died ({why})"
    if command == "row" and fallback is not None:
        log.warning("%s %s %s b%d: %s", fallback.model, fallback.backend, fallback.precision, fallback.batch, reason)
        fallback.status = f"{FAILED}: {reason}"
        return fallback
    raise RuntimeError(reason)


# `python -m yolox_deploy.bench.worker` would import torch (the bench package) before any Ctrl-C handling
WORKER_BOOTSTRAP = "import sys; from yolox_deploy.cli.launch import bench_worker; sys.exit(bench_worker(sys.argv[1:]))"
WORKER_STOP_GRACE_S = 60.0  # how long an interrupted worker has to end (a large model's conversion, then cleaning up)


def stop_worker(proc: Any, grace: float = WORKER_STOP_GRACE_S) -> None:
    """Stop a worker (started in its own session) as a Ctrl-C would, so that what it is doing cleans up after
    itself (an export's staging folder and temporary files; killed outright they stayed, hundreds of MB for
    the large models); killed, with its process group, when it has not ended within ``grace`` seconds or at a
    second interrupt."""
    import os
    import signal

    try:
        os.killpg(proc.pid, signal.SIGINT)  # its process group: the worker and any converter it runs
        log.warning("stopping the benchmark's worker (Ctrl-C again to kill it)")
        proc.wait(timeout=grace)
    except ProcessLookupError:  # already gone
        proc.wait()
    except BaseException:  # it took longer, or a second interrupt (or SIGTERM) came: no more waiting
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _demo_isolated(cfg: BenchConfig, rows: Sequence[BenchRow]) -> tuple[list[DemoComparison], str | None]:
    result = run_isolated("demo", cfg, {"rows": [r.to_dict() for r in rows]})
    if result.get("error"):
        raise RuntimeError(result["error"])
    return [DemoComparison.from_dict(d) for d in result.get("demos", [])], result.get("skipped")


# --- the whole run ---------------------------------------------------------------------------------------
PARTIAL_NOTE = "partial results: the run is not finished"


def run_benchmark(cfg: BenchConfig, on_row: Callable[[BenchReport], None] | None = None) -> BenchReport:
    """Measure every configured row (and the demo comparison when Nano is included); nothing is written.

    ``on_row`` is called with the report so far before the first row and after each row (e.g. to save partial
    results of a long run).
    """
    classes = cfg.check_weights()
    t0 = time.perf_counter()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    host = collect_host_info()
    images, images_desc = load_timing_images(cfg.images, cfg.max_images, cfg.seed)
    settings = cfg.to_dict()
    settings["images_desc"] = images_desc
    runner = RowRunner(cfg, images)
    rows: list[BenchRow] = []
    sources: dict[str, ModelSource] = {}

    def report_so_far() -> None:
        if on_row is not None:
            on_row(BenchReport(settings, host, list(rows), [], [PARTIAL_NOTE], started, time.perf_counter() - t0))

    report_so_far()
    for name in cfg.models:
        source = model_source(name, cfg.weights_dir, cfg.seed)
        sources[name] = source
        size = tuple(cfg.img_size) if cfg.img_size else source.spec.test_size
        complexity = yolox_complexity(name, size, classes.get(name, 80))  # of the model timed
        for backend in cfg.backends:
            for precision in cfg.precisions:
                for batch in cfg.batches:
                    spec = RowSpec(name, backend, precision, batch, size, complexity.params, complexity.gflops)
                    if cfg.isolate:
                        row = run_isolated("row", cfg, {"row": spec.to_dict(), "ap_cache": runner.ap_cache},
                                           fallback=spec.failed_row(source, cfg.backend_options.get(backend, {}),
                                                                    cfg.device))
                        if row.ap is not None:
                            runner.ap_cache[ap_key(row)] = (row.ap, row.ap50)
                    else:
                        row = spec.run(runner, source)
                    rows.append(row)
                    report_so_far()
    notes = list(cfg.extra_notes)
    demos: list[DemoComparison] = []
    if cfg.demo and "yolox-nano" in sources:
        try:
            if cfg.isolate:
                demos, skipped = _demo_isolated(cfg, rows)
            else:
                demos, skipped = run_demo_comparison(runner, rows, sources)
        except Exception as e:  # the comparison is an extra: report, keep the rows
            log.debug("demo comparison failed", exc_info=True)
            what = str(e) if cfg.isolate else f"{type(e).__name__}: {e}"
            demos, skipped = [], f"demo comparison failed: {what}"
        if skipped:
            notes.append(skipped)
    notes += _standard_notes(rows, sources, cfg.threads)
    if cfg.with_eval is not None and any(r.ap is not None for r in rows):
        from ..eval.coco import open_coco

        n = len(open_coco(cfg.with_eval, cfg.eval_split).image_ids)
        notes.append(f"AP: COCO bbox AP (pycocotools, the authors' protocol: conf 0.01, NMS 0.65) on "
                     f"{n} images of {cfg.with_eval}/{cfg.eval_split}; the published AP is on the "
                     "5000 images of COCO val2017, so a subset gives a different figure.")
    if cfg.isolate:
        notes.append("Each row (and the demo comparison) ran in a fresh Python process: no runtime loaded for "
                     "another row shares its threads.")
    return BenchReport(settings, host, rows, demos, notes, started, time.perf_counter() - t0)


def _standard_notes(rows: Sequence[BenchRow], sources: dict[str, ModelSource], threads: int | None) -> list[str]:
    import torch

    notes = ["GFLOPs: 2 x MACs per image at the row's input size, counted over the unfused model graph with the "
             "authors' (thop) rules; the paper's tables print slightly lower figures (older thop counted BatchNorm "
             "as 2 ops per element)."]
    random = sorted(n for n, s in sources.items() if not s.real)
    if random:
        notes.append(f"Random weights (seeded) for {', '.join(random)}: latency does not depend on weight values, but "
                     "the full-pipeline post-processing time is lower than with real weights (almost no boxes pass the "
                     "confidence threshold). Put yolox_<v>.pth files in --weights-dir for real weights and AP.")
    if any(r.clock == CudaClock.name for r in rows):
        notes.append("GPU rows: CUDA events around each call with a device synchronise before the end event.")
    if any(r.ok and r.clock == "perf_counter" for r in rows):
        how = (f"{threads} inference threads in every backend (--threads)" if threads else
               f"each backend's default thread count (PyTorch's: {torch.get_num_threads()})")
        notes.append(f"CPU rows: wall time with time.perf_counter; {how}.")
    return notes
