"""TensorRT engines: ONNX -> a serialized TensorRT 10 plan (``.engine``) plus its sidecar ``<name>.engine.json``.

Steps:

1. **ONNX.** The checkpoint goes through :func:`~yolox_deploy.export.onnx.write_onnx` in FP32 (TensorRT lowers
   precision itself); ``--nms`` emits TensorRT's ``EfficientNMS_TRT`` plugin node (outputs ``num_dets, boxes,
   scores, labels``). An ONNX source (e.g. the authors' released file) is used as it is, unless its output is
   raw and the engine decodes (the default): then the ONNX step appends the decode step to a copy of it.
2. **Build.** ``OnnxParser`` into an explicit-batch network (the only kind in TensorRT 10, so the network is
   created with flags ``0``), a builder config with the workspace pool limit (``--workspace`` GiB), FP16
   (``--half``; INT8 enables it too, for the layers that stay in float), INT8 (``--int8``) with an entropy or
   min-max calibrator fed from ``--calib-images``, one optimisation profile for dynamic inputs (below) and a
   timing cache shared by every build on this GPU (:func:`timing_cache_path`), so rebuilds are fast.
3. **Write.** The plan bytes as they are (no header, so ``trtexec --loadEngine`` and DeepStream read the file;
   a decoded head output is named ``DECODED_OUTPUT`` in the engine, so a copy without its sidecar is still known
   to decode), the sidecar (:class:`~yolox_deploy.meta.ModelMeta` with the build record under ``extra["tensorrt"]``:
   TensorRT version, GPU, compute capability, CUDA version, profile, precision, calibration) and, for INT8,
   the calibration cache ``<name>.engine.calib`` (reused by the next build of the same engine when model,
   images and settings are unchanged; a plain TensorRT cache, also usable with ``trtexec --calib``).

Dynamic profiles (:func:`profile_for`): batch ``1 / --batch / --max-batch`` (default ``max(8, batch)``);
with ``--dynamic-hw`` each side ranges over ``min(320, size) / size / max(size, min(2 * size, 1280))``, e.g.
``320 / 640 / 1280`` for a 640 model and ``320 / 416 / 832`` for a 416 one (all multiples of 32).

Without TensorRT or without a CUDA GPU the ONNX step still runs: its file is kept next to the requested
output (``<stem>.onnx``), the engine's sidecar is written beside where the engine will be (a ``trtexec`` plan
has none of our metadata: decoding, NMS, classes, input contract), and the export stops with one sentence
naming both and the ``trtexec`` command that builds the engine from it. The engine itself is never left
half-written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtefactError, BackendUnavailable, ExportError, WriteError
from ..meta import ModelMeta, Preprocess, read_sidecar, sidecar_path
from ..runtimes.tensorrt import (
    DECODED_OUTPUT,
    RECORD_KEY,
    Profile,
    build_record,
    cuda_index,
    cudart_call,
    current_environment,
    import_cudart,
    import_tensorrt,
    make_logger,
)
from ..utils.files import atomic_write, cache_dir, file_sha256, write_text_atomic
from ..utils.packages import import_reason, missing_reason
from .base import INT8_WITH_HALF, Exporter, ExportOptions, ExportSource, register_format
from .onnx import io_signature

INT8_NEEDS_TENSORRT = "INT8 calibration runs inside TensorRT, so run this export where TensorRT and the GPU work"

log = logging.getLogger(__name__)

MIN_SIDE, MAX_SIDE = 320, 1280  # dynamic height/width range (see profile_for)
DEFAULT_MAX_BATCH = 8
CALIB_BATCH = 8  # images per calibration batch for dynamic-batch engines
CALIB_SUFFIX = ".calib"


# --- shapes -----------------------------------------------------------------------------------------------
def side_range(side: int) -> tuple[int, int, int]:
    """``(min, opt, max)`` of one dynamic side built for ``side`` pixels: 320 (or less) .. 2x, capped at 1280."""
    return min(MIN_SIDE, side), side, max(side, min(2 * side, MAX_SIDE))


def profile_for(input_dims: Sequence[int], options: ExportOptions) -> Profile:
    """The optimisation profile of an ONNX input ``[N, 3, H, W]`` (``-1`` or ``0`` marks a dynamic dimension).

    Static dimensions of the ONNX are kept. A dynamic batch spans ``1 .. max_batch`` (default
    ``max(8, batch)``) with ``batch`` as optimum when ``options.dynamic``, else it is fixed to ``batch``; a
    dynamic height/width spans :func:`side_range` of ``img_size`` when ``options.dynamic_hw``, else it is
    fixed to ``img_size``.
    """
    dims = [int(d) for d in input_dims]
    if len(dims) != 4:
        raise ExportError(f"the ONNX input must be [N, 3, H, W], it is {dims}")
    n, c, h, w = dims
    if c <= 0:
        raise ExportError(f"the ONNX input has a dynamic channel dimension ({dims}); expected 3 channels")
    if n > 0:
        batch = (n, n, n)
    elif options.dynamic:
        top = options.max_batch or max(DEFAULT_MAX_BATCH, options.batch)
        batch = (1, options.batch, top)
    else:
        batch = (options.batch,) * 3
    sides = []
    for dim, size in ((h, options.img_size[0]), (w, options.img_size[1])):
        if dim > 0:
            sides.append((dim, dim, dim))
        elif options.dynamic_hw:
            sides.append(side_range(int(size)))
        else:
            sides.append((int(size),) * 3)
    (hl, ho, hh), (wl, wo, wh) = sides
    return Profile((batch[0], c, hl, wl), (batch[1], c, ho, wo), (batch[2], c, hh, wh))


def calibration_shape(profile: Profile) -> tuple[int, int, int, int]:
    """The input shape calibration batches have: the profile's optimum H/W, ``min(8, max batch)`` images
    (the fixed batch of a static engine)."""
    n_lo, n_hi = profile.min[0], profile.max[0]
    n = n_lo if n_lo == n_hi else max(n_lo, min(CALIB_BATCH, n_hi))
    return (n, profile.opt[1], profile.opt[2], profile.opt[3])


def onnx_input(path: str | os.PathLike) -> tuple[str, list[int]]:
    """Name and dims (``-1`` where symbolic) of an ONNX file's single image input."""
    import onnx

    inputs, _ = io_signature(onnx.load(str(path), load_external_data=False))
    if len(inputs) != 1:
        raise ExportError(f"{Path(path).name}: expected one image input, found {len(inputs)}")
    name, dims = inputs[0]
    return name, [d if isinstance(d, int) and d > 0 else -1 for d in dims]


def trtexec_command(onnx_path: str | os.PathLike, engine: str | os.PathLike, input_name: str, profile: Profile,
                    *, shapes: bool, half: bool, workspace: float | None = None) -> str:
    """The ``trtexec`` line that builds the same engine (without INT8 calibration) from ``onnx_path``;
    ``workspace``: the builder's workspace pool in GiB (``--memPoolSize``, given in MiB)."""
    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine}"]
    if workspace is not None:
        parts.append(f"--memPoolSize=workspace:{max(1, round(workspace * 1024))}M")
    if shapes:
        for flag, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
            parts.append(f"--{flag}Shapes={input_name}:{'x'.join(str(d) for d in shape)}")
    if half:
        parts.append("--fp16")
    return " ".join(shlex.quote(p) for p in parts)


def intermediate_onnx_path(output: str | os.PathLike) -> Path:
    """Where the ONNX step is kept when TensorRT cannot run: ``<engine stem>.onnx`` next to the engine."""
    return Path(output).with_suffix(".onnx")


# --- caches -------------------------------------------------------------------------------------------------
def timing_cache_path(env: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """The timing cache of one TensorRT version on one GPU model (tactic timings depend on both, not on the
    model), e.g. ``~/.cache/yolox-deploy/tensorrt/timing-trt10.3.0-sm86-nvidia-geforce-rtx-3090.cache``."""
    gpu = re.sub(r"[^a-z0-9]+", "-", str(env.get("gpu") or "gpu").lower()).strip("-")
    cc = str(env.get("compute_capability") or "").replace(".", "")
    return Path(root or cache_dir()) / "tensorrt" / f"timing-trt{env['tensorrt']}-sm{cc}-{gpu}.cache"


def calibration_fingerprint(onnx_path: str | os.PathLike, *, method: str, shape: Sequence[int],
                            preprocess: Preprocess, images: Sequence[str | os.PathLike], tensorrt: str) -> str:
    """A digest of everything an INT8 calibration cache depends on: the model bytes, the calibrator, the
    batch shape, the input contract, the calibration files (name, size, mtime) and the TensorRT version."""
    h = file_sha256(onnx_path)
    h.update(repr((method, tuple(int(v) for v in shape), preprocess, tensorrt)).encode())
    for p in images:
        st = os.stat(p)
        h.update(f"{Path(p).name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def reusable_calibration(output: str | os.PathLike | None, fingerprint: str) -> Path | None:
    """The calibration cache of a previous build at ``output`` when its sidecar records the same fingerprint."""
    if output is None:
        return None
    cache = Path(output).with_name(Path(output).name + CALIB_SUFFIX)
    if not cache.is_file() or cache.stat().st_size == 0:
        return None
    try:
        meta = read_sidecar(output)
    except ArtefactError:
        return None
    calib = build_record(meta).get("calibration") if meta is not None else None
    if isinstance(calib, Mapping) and calib.get("fingerprint") == fingerprint:
        return cache
    return None


# --- INT8 calibration ---------------------------------------------------------------------------------------
class CalibrationFeeder:
    """The host side of INT8 calibration, independent of TensorRT.

    Hands out calibration batches of exactly ``shape`` (``[N, 3, H, W]`` float32, C-contiguous; a short last
    batch is filled up by repeating its own images) and reads / writes the calibration cache file.
    ``cache_in`` is a cache to reuse (then TensorRT skips calibration), ``cache_out`` where TensorRT's new
    cache is written (atomically).
    """

    def __init__(self, batches: Iterable[np.ndarray], shape: Sequence[int], *, cache_in: str | os.PathLike | None = None,
                 cache_out: str | os.PathLike | None = None) -> None:
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 4 or min(self.shape) < 1:
            raise ValueError(f"calibration shape must be [N, C, H, W], got {list(shape)}")
        self._batches = batches
        self._iter: Iterator[np.ndarray] | None = None
        self.cache_in = Path(cache_in) if cache_in is not None else None
        self.cache_out = Path(cache_out) if cache_out is not None else None
        self.batches_fed = 0
        self.images_fed = 0

    @property
    def batch_size(self) -> int:
        return self.shape[0]

    def next_batch(self) -> np.ndarray | None:
        """The next batch, or None when the calibration images are used up."""
        if self._iter is None:
            self._iter = iter(self._batches)
        try:
            batch = next(self._iter)
        except StopIteration:
            return None
        batch = np.asarray(batch, dtype=np.float32)
        n = batch.shape[0] if batch.ndim == 4 else 0
        if batch.ndim != 4 or batch.shape[1:] != self.shape[1:] or not 1 <= n <= self.batch_size:
            raise ExportError(f"calibration batch of shape {list(batch.shape)} does not fit the engine input "
                              f"{list(self.shape)}")
        if n < self.batch_size:
            batch = batch[np.arange(self.batch_size) % n]
        self.batches_fed += 1
        self.images_fed += n
        return np.ascontiguousarray(batch)

    def read_cache(self) -> bytes | None:
        """The cache to reuse, or None (TensorRT then calibrates from the batches)."""
        if self.cache_in is not None and self.cache_in.is_file():
            data = self.cache_in.read_bytes()
            if data:
                log.info("INT8 calibration: reusing %s", self.cache_in.name)
                return data
        return None

    def write_cache(self, data: bytes) -> None:
        """Store TensorRT's calibration cache (no-op without ``cache_out``)."""
        if self.cache_out is None:
            return
        with atomic_write(self.cache_out) as tmp:
            tmp.write_bytes(bytes(data))


class DeviceBuffer:
    """``nbytes`` of GPU memory that calibration batches are copied into (``ptr`` is the device address).

    Uses a PyTorch CUDA tensor when PyTorch sees the GPU, else cuda-python, else pycuda (on the device's
    primary context, the one TensorRT and PyTorch use): a cuda-python newer than the driver's CUDA would fail
    where PyTorch works. TensorRT asks for batches from its build thread, not the one
    that made the buffer: each call makes the device (or context) current in the thread it runs in.
    """

    @staticmethod
    def available_kind() -> str:
        """Which copy path would be used; :class:`BackendUnavailable` when there is none."""
        if torch.cuda.is_available():
            return "torch"
        if import_cudart() is not None:
            return "cuda-python"
        try:
            import pycuda.driver  # noqa: F401
        except Exception:  # ImportError, or pycuda built against a missing driver
            pass
        else:
            return "pycuda"
        raise BackendUnavailable("INT8 calibration copies batches to the GPU with a CUDA build of PyTorch, "
                                 "cuda-python or pycuda, and none is usable here (install PyTorch for your CUDA, "
                                 "or cuda-python of your driver's CUDA major version)")

    def __init__(self, nbytes: int, device_index: int = 0) -> None:
        self.nbytes = int(nbytes)
        self.index = device_index
        self.kind = self.available_kind()
        if self.kind == "cuda-python":
            self._rt = import_cudart()
            cudart_call(self._rt.cudaSetDevice(device_index))
            self.ptr = int(cudart_call(self._rt.cudaMalloc(self.nbytes)))
        elif self.kind == "pycuda":
            import pycuda.driver as drv

            drv.init()
            self._drv = drv
            self._ctx = drv.Device(device_index).retain_primary_context()
            with self._current():
                self._mem = drv.mem_alloc(self.nbytes)
            self.ptr = int(self._mem)
        else:
            self._tensor = torch.empty(self.nbytes, dtype=torch.uint8, device=torch.device("cuda", device_index))
            self.ptr = int(self._tensor.data_ptr())

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        """pycuda: the primary context current in this thread for the block (a context stack is per thread)."""
        self._ctx.push()
        try:
            yield
        finally:
            self._ctx.pop()

    def upload(self, host: np.ndarray) -> None:
        """Copy a C-contiguous host array of at most ``nbytes`` to the buffer (synchronously)."""
        host = np.ascontiguousarray(host)
        if host.nbytes > self.nbytes:
            raise ValueError(f"{host.nbytes} bytes do not fit a {self.nbytes}-byte device buffer")
        if self.kind == "cuda-python":
            cudart_call(self._rt.cudaSetDevice(self.index))
            kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            cudart_call(self._rt.cudaMemcpy(self.ptr, host, host.nbytes, kind))
        elif self.kind == "pycuda":
            with self._current():
                self._drv.memcpy_htod(self.ptr, host)
        else:
            self._tensor[:host.nbytes].copy_(torch.from_numpy(host.reshape(-1).view(np.uint8)))
            torch.cuda.synchronize(self._tensor.device)

    def free(self) -> None:
        if self.kind == "cuda-python" and self.ptr:
            cudart_call(self._rt.cudaSetDevice(self.index))
            cudart_call(self._rt.cudaFree(self.ptr))
        elif self.kind == "pycuda" and self.ptr:
            with self._current():
                self._mem.free()
        elif self.kind == "torch" and self.ptr:
            del self._tensor
        self.ptr = 0


def make_calibrator(trt: Any, feeder: CalibrationFeeder, method: str, device_index: int = 0) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` (``"entropy"``) or ``trt.IInt8MinMaxCalibrator`` (``"minmax"``)
    serving ``feeder``'s batches from one device buffer. Errors raised while TensorRT calls it are kept in
    ``.error`` (TensorRT cannot carry Python exceptions) and re-raised by the builder."""
    base = {"entropy": trt.IInt8EntropyCalibrator2, "minmax": trt.IInt8MinMaxCalibrator}[method]

    class _Calibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
            self.feeder = feeder
            self.buffer: DeviceBuffer | None = None
            self.error: BaseException | None = None

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the batch dimension is part of each batch's shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = self.feeder.next_batch()
                if batch is None:
                    return None
                if self.buffer is None:
                    self.buffer = DeviceBuffer(batch.nbytes, device_index)
                self.buffer.upload(batch)
                return [self.buffer.ptr]
            except BaseException as e:  # noqa: B036 - must not unwind through TensorRT; re-raised after the build
                self.error = e
                return None

        def read_calibration_cache(self) -> bytes | None:
            return self.feeder.read_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                self.feeder.write_cache(bytes(cache))
            except BaseException as e:  # noqa: B036
                self.error = e

        def close(self) -> None:
            if self.buffer is not None:
                self.buffer.free()
                self.buffer = None

    return _Calibrator()


# --- TensorRT builder glue ------------------------------------------------------------------------------------
def make_progress_monitor(trt: Any) -> Any | None:
    """A ``trt.IProgressMonitor`` drawing top-level build phases as tqdm bars, which cancels the build once
    ``.cancel`` is set (its next step returns False). TensorRT may call it from several of its threads, so its
    state is guarded by a lock. None when this TensorRT has no progress monitors."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    from tqdm import tqdm

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}
            self.cancel = threading.Event()
            self._lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                with self._lock:
                    self.bars[phase_name] = tqdm(total=num_steps, desc=f"TensorRT {phase_name}", leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self.bars.get(phase_name)
                if bar is not None and step > bar.n:
                    bar.update(step - bar.n)
            return not self.cancel.is_set()

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

        def close(self) -> None:
            with self._lock:
                for bar in self.bars.values():
                    bar.close()
                self.bars.clear()

    return _Monitor()


def build_interruptibly(builder: Any, network: Any, config: Any, monitor: Any | None, device_index: int) -> Any:
    """``builder.build_serialized_network(network, config)`` in a thread of its own, so that Ctrl-C reaches this
    (main) thread at once instead of a TensorRT callback, which swallows it: the monitor then cancels the build
    at its next step, and KeyboardInterrupt is raised once the builder has returned."""
    done: dict[str, Any] = {}
    ended = threading.Event()  # (not Thread.is_alive: a join that Ctrl-C interrupts can leave it saying False)

    def build() -> None:
        try:
            with on_device(device_index):  # the current CUDA device is the thread's own
                done["plan"] = builder.build_serialized_network(network, config)
        except BaseException as e:  # noqa: B036 - handed to the caller's thread
            done["error"] = e
        finally:
            ended.set()

    worker = threading.Thread(target=build, name="tensorrt-build", daemon=True)
    try:
        worker.start()  # (a Ctrl-C may land while it waits for the thread to start)
        while not ended.wait(0.2):
            pass
    except KeyboardInterrupt:
        if monitor is not None:
            monitor.cancel.set()
            log.warning("interrupted: cancelling the TensorRT build")
        else:
            log.warning("interrupted: this TensorRT has no progress monitor to cancel its build with; stopping "
                        "when the build returns")
        while worker.ident is not None and not ended.is_set():  # (started) the build reads the calibration
            try:  # buffers: they are freed only after it
                ended.wait(0.2)
            except KeyboardInterrupt:
                log.warning("still cancelling the TensorRT build")
        raise
    if "error" in done:
        raise done["error"]
    return done.get("plan")


@contextlib.contextmanager
def on_device(index: int) -> Iterator[None]:
    """Make GPU ``index`` current for the builder (TensorRT builds on the current CUDA device)."""
    if torch.cuda.is_available():
        with torch.cuda.device(index):
            yield
        return
    cudart = import_cudart()
    if cudart is not None:
        cudart_call(cudart.cudaSetDevice(index))
    yield


def _load_timing_cache(config: Any, path: Path | None) -> None:
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        if data:
            log.warning("ignoring the unreadable TensorRT timing cache %s", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif data:
        log.info("TensorRT timing cache: %s", path)


def _save_timing_cache(config: Any, path: Path | None) -> None:
    if path is None:
        return
    try:
        data = bytes(memoryview(config.get_timing_cache().serialize()))
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    except (OSError, WriteError) as e:  # a read-only cache folder costs speed on the next build, nothing else
        log.warning("could not save the TensorRT timing cache %s: %s", path, e)


def _set_shape(profile: Any, name: str, lo: Sequence[int], opt: Sequence[int], hi: Sequence[int],
               logger: Any) -> None:
    """``IOptimizationProfile.set_shape``, whose refusal (a RuntimeError in the Python API) is an ExportError."""
    try:
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    except RuntimeError as e:
        raise ExportError(f"TensorRT refused the shapes {tuple(lo)}..{tuple(hi)} of {name}: {e} "
                          f"{logger.last_errors()}".rstrip()) from None


def build_engine(trt: Any, onnx_path: Path, dest: Path, options: ExportOptions, profile: Profile, *,
                 feeder: CalibrationFeeder | None = None, device_index: int = 0,
                 timing_cache: Path | None = None, decoded: bool = False) -> str:
    """Parse ``onnx_path``, build a TensorRT engine per ``options`` / ``profile`` and write the plan to ``dest``.

    ``decoded``: the graph's (only) output is the decoded head, renamed ``DECODED_OUTPUT`` in the engine.
    Returns the input tensor's name. Raises :class:`ExportError` with the parser's or builder's messages.
    """
    logger = make_logger(trt)
    trt.init_libnvinfer_plugins(logger, "")  # registers EfficientNMS_TRT for the parser
    with on_device(device_index):
        try:
            builder = trt.Builder(logger)
        except (TypeError, RuntimeError) as e:  # no usable GPU / driver
            raise BackendUnavailable(f"TensorRT cannot start a builder on GPU {device_index} ({e}; "
                                     f"{logger.last_errors()})") from None
        network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
            raise ExportError(f"TensorRT could not parse {onnx_path.name}: "
                              f"{'; '.join(errors) or logger.last_errors()}")
        if network.num_inputs != 1:
            raise ExportError(f"{onnx_path.name}: expected one image input, TensorRT sees {network.num_inputs}")
        if decoded:
            network.get_output(0).name = DECODED_OUTPUT
        inp = network.get_input(0)
        dims = tuple(int(d) for d in inp.shape)
        dynamic = any(d < 0 for d in dims)

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace * (1 << 30)))
        if dynamic:
            p = builder.create_optimization_profile()
            _set_shape(p, inp.name, profile.min, profile.opt, profile.max, logger)
            if config.add_optimization_profile(p) < 0:  # -1: TensorRT found the profile invalid
                raise ExportError(f"TensorRT refused the input profile {profile.min}..{profile.max} of {inp.name}: "
                                  f"{logger.last_errors()}")
        if options.half or options.int8:
            if not getattr(builder, "platform_has_fast_fp16", True):
                log.warning("this GPU has no fast FP16: an FP16 engine will be about as fast as FP32")
            config.set_flag(trt.BuilderFlag.FP16)
        calibrator = None
        if options.int8:
            if feeder is None:
                raise ExportError("INT8 needs calibration data")
            if not getattr(builder, "platform_has_fast_int8", True):
                log.warning("this GPU has no fast INT8: an INT8 engine will be about as fast as FP16")
            config.set_flag(trt.BuilderFlag.INT8)
            calibrator = make_calibrator(trt, feeder, options.calib_method, device_index)
            config.int8_calibrator = calibrator
            if dynamic:
                cp = builder.create_optimization_profile()
                _set_shape(cp, inp.name, feeder.shape, feeder.shape, feeder.shape, logger)
                if not config.set_calibration_profile(cp):
                    raise ExportError(f"TensorRT refused the calibration shape {feeder.shape} of {inp.name}: "
                                      f"{logger.last_errors()}")
        _load_timing_cache(config, timing_cache)
        monitor = make_progress_monitor(trt)
        if monitor is not None:
            config.progress_monitor = monitor

        log.info("building the TensorRT engine (%s, input %s %s..%s), this takes a while", options.precision,
                 inp.name, list(profile.min), list(profile.max))
        try:
            plan = build_interruptibly(builder, network, config, monitor, device_index)
        finally:
            if calibrator is not None:
                calibrator.close()
            if monitor is not None:
                monitor.close()
        if calibrator is not None and calibrator.error is not None:
            raise calibrator.error
        if plan is None:
            raise ExportError(f"TensorRT could not build the engine: {logger.last_errors()}")
        with open(dest, "wb") as f:
            f.write(memoryview(plan))
        _save_timing_cache(config, timing_cache)
    return inp.name


def sidecar_meta(meta: ModelMeta, env: Mapping[str, Any], *, input_name: str, profile: Profile,
                 options: ExportOptions, calibration: Mapping[str, Any] | None = None,
                 onnx: str | None = None) -> ModelMeta:
    """The engine's metadata with its build record under ``extra["tensorrt"]``: the environment
    (:func:`~yolox_deploy.runtimes.tensorrt.current_environment`: TensorRT version, GPU, compute capability,
    CUDA), the input name and profile, the precision flags, the workspace, the calibration (INT8) and the
    source ONNX file name (when the engine was made from one). Its JSON is the sidecar."""
    record = {
        **env,
        "input": input_name,
        "profile": profile.to_dict(),
        "precision": options.precision,
        "fp16": bool(options.half or options.int8),
        "int8": bool(options.int8),
        "workspace_gib": float(options.workspace),
        "calibration": dict(calibration) if calibration is not None else None,
        "onnx": onnx,
    }
    return meta.with_(extra={**meta.extra, RECORD_KEY: record})


def tensorrt_here(device: str) -> tuple[Any, int, dict[str, Any]]:
    """``(tensorrt module, GPU index, environment)`` for a build on ``device``; :class:`BackendUnavailable` when
    TensorRT or that GPU is missing."""
    trt = import_tensorrt()
    index = cuda_index(device) or 0
    return trt, index, current_environment(trt.__version__, index)


def write_tensorrt_onnx(source: ExportSource, options: ExportOptions, path: Path) -> ModelMeta:
    """The ONNX handed to TensorRT: FP32 (the builder lowers precision), in-graph NMS as ``EfficientNMS_TRT``."""
    from .onnx import write_onnx

    return write_onnx(source, replace(options, half=False, int8=False), path, nms_plugin="tensorrt")


# --- the format -----------------------------------------------------------------------------------------------
@register_format("tensorrt", suffix=".engine", package="tensorrt", extra="trt",
                 supports=("dynamic", "dynamic_hw", "max_batch", "half", "int8", INT8_WITH_HALF, "nms",
                           "decode_in_graph", "opset", "simplify", "workspace", "calib_method"),
                 accepts_onnx=True, aliases=("trt", "engine"), artefact_files=("*.engine", "*.plan"))
class TensorRTExporter(Exporter):
    """TensorRT engine (.engine) for NVIDIA GPUs, with a JSON sidecar."""

    @classmethod
    def availability(cls) -> str:
        """Without TensorRT the format still does its ONNX step (``onnx`` is needed for that), so the listing
        says what a user gets here rather than only what is missing."""
        onnx_missing = missing_reason("onnx", "its ONNX step", "onnx")
        if onnx_missing is not None:
            return f"unavailable: {onnx_missing}"
        trt_missing = missing_reason(cls.info.package, "building the engine", cls.info.extra)
        if trt_missing is None:
            return ""
        return (f"{trt_missing}; without it the ONNX step runs and the trtexec command that builds the engine "
                "on the target is printed; --int8 is refused")

    @classmethod
    def require(cls) -> None:
        """The ``onnx`` package the ONNX step is written with, before any work (a checkpoint fetched by name, the
        model traced); TensorRT itself is not: the ONNX step runs without it, which is reported after it."""
        reason = import_reason("onnx", "exporting to tensorrt (its ONNX step)", "onnx")
        if reason is not None:
            raise BackendUnavailable(reason)

    @classmethod
    def require_for(cls, options: ExportOptions) -> None:
        """INT8 calibrates inside TensorRT on the GPU (trtexec cannot calibrate from the user's images, so an ONNX
        step kept for it would be of no use): without TensorRT or the GPU it is refused before any work."""
        if not options.int8:
            return
        try:
            tensorrt_here(options.device)
            DeviceBuffer.available_kind()
        except BackendUnavailable as e:
            raise BackendUnavailable(f"{e}; {INT8_NEEDS_TENSORRT}") from None

    @classmethod
    def check_device(cls, options: ExportOptions) -> None:
        """Only the device's name up front: the build itself needs the GPU, and without one (as without
        TensorRT) the ONNX step is kept with the ``trtexec`` command that builds the engine elsewhere."""
        cuda_index(options.device)

    def check_before(self, source: ExportSource) -> None:
        """Without TensorRT or its GPU the ONNX step is kept beside the engine for ``trtexec``; when that name
        is already taken (and there is a step to keep), the export would run only to say so: refused now."""
        from .onnx import onnx_source_as_is

        if self.output is None or onnx_source_as_is(source, self.options):
            return
        taken = self._taken_onnx_name(source)
        if taken is None:
            return
        try:
            tensorrt_here(self.options.device)
        except BackendUnavailable as e:
            raise BackendUnavailable(f"{e}; {taken}, where the ONNX step for trtexec would be kept, so no step "
                                     "was made (give --output another name to keep it beside the engine)") from None

    def _taken_onnx_name(self, source: ExportSource) -> str | None:
        """``"<path> already exists"`` / ``"<path> is the source"`` when the ONNX step's place beside the engine
        holds a file, else None."""
        kept = intermediate_onnx_path(self.output)
        if not kept.exists():
            return None
        the_source = source.onnx_path is not None and kept.samefile(source.onnx_path)
        return f"{kept} {'is the source' if the_source else 'already exists'}"

    def export(self, source: ExportSource, dest: Path) -> ModelMeta:
        from .onnx import onnx_to_convert

        opts = self.options
        meta = self.artefact_meta(source)
        with tempfile.TemporaryDirectory(prefix="yolox-trt-") as tmp:
            onnx_path = onnx_to_convert(source, opts, Path(tmp) / dest.with_suffix(".onnx").name, write_tensorrt_onnx)
            input_name, dims = onnx_input(onnx_path)
            profile = profile_for(dims, opts)
            try:
                trt, index, env = tensorrt_here(opts.device)
                return self._build(trt, env, index, source, meta, onnx_path, profile, dest)
            except BackendUnavailable as e:
                raise BackendUnavailable(self._unavailable(str(e), source, onnx_path, input_name, dims,
                                                           profile, meta)) from None

    def _build(self, trt: Any, env: dict[str, Any], index: int, source: ExportSource, meta: ModelMeta,
               onnx_path: Path, profile: Profile, dest: Path) -> ModelMeta:
        opts = self.options
        feeder, calibration, data = None, None, None
        if opts.int8:
            feeder, calibration, data = self._calibration(meta, onnx_path, profile, dest, env)
        input_name = build_engine(trt, onnx_path, dest, opts, profile, feeder=feeder, device_index=index,
                                  timing_cache=timing_cache_path(env),
                                  decoded=meta.decode_in_graph and not meta.nms_in_graph)
        if feeder is not None and calibration is not None:
            calibration["batches"] = feeder.batches_fed  # 0 when a reused cache made calibration unnecessary
            calibration["images"] = data.num_images  # unreadable files are known now
        meta = sidecar_meta(meta, env, input_name=input_name, profile=profile, options=opts,
                            calibration=calibration,
                            onnx=source.onnx_path.name if source.onnx_path is not None else None)
        write_text_atomic(sidecar_path(dest), meta.to_json())
        return meta

    def _calibration(self, meta: ModelMeta, onnx_path: Path, profile: Profile, dest: Path,
                     env: Mapping[str, Any]) -> tuple[CalibrationFeeder, dict[str, Any], Any]:
        from .calibration import CalibrationData

        opts = self.options
        DeviceBuffer.available_kind()  # fail before the build, not in the middle of it
        shape = calibration_shape(profile)
        folder = Path(opts.calib_images)
        data = CalibrationData(folder, meta.with_(input_size=(shape[2], shape[3])), count=opts.calib_count,
                               batch=shape[0], last="fill", desc="INT8 calibration")
        for _ in data.images():  # find the unreadable files: the images after them take their places in the set
            pass
        fingerprint = calibration_fingerprint(onnx_path, method=opts.calib_method, shape=shape,
                                              preprocess=meta.preprocess, images=data.files, tensorrt=env["tensorrt"])
        cache = dest.with_name(dest.name + CALIB_SUFFIX)
        previous = reusable_calibration(self.output, fingerprint)
        if previous is not None:
            shutil.copyfile(previous, cache)
        feeder = CalibrationFeeder(data, shape, cache_in=cache if previous is not None else None, cache_out=cache)
        record = {"method": opts.calib_method, "folder": str(folder), "shape": list(shape),
                  "fingerprint": fingerprint, "cache": cache.name, "reused": previous is not None,
                  "images": data.num_images}
        return feeder, record, data

    def _unavailable(self, reason: str, source: ExportSource, onnx_path: Path, input_name: str,
                     dims: Sequence[int], profile: Profile, meta: ModelMeta) -> str:
        """The one-sentence error when TensorRT cannot build here, after keeping the ONNX step for the user and
        writing ``meta`` (no build record: TensorRT did not run) as the sidecar of the engine ``trtexec`` makes."""
        opts = self.options
        if self.output is None:
            return reason
        if opts.int8:  # (require_for refuses this up front; a GPU lost since then lands here)
            return f"{reason}; {INT8_NEEDS_TENSORRT}"
        engine = Path(self.output)
        if source.onnx_path is not None and onnx_path == Path(source.onnx_path):
            kept, where = onnx_path, "the ONNX model to build from is"
        else:
            kept, where = intermediate_onnx_path(engine), "the ONNX step ran and is at"
            taken = self._taken_onnx_name(source)  # made since check_before; --force is for the engine only
            if taken is not None:
                return (f"{reason}; the ONNX step ran but {taken}, so it was not kept there (give --output "
                        "another name to keep it beside the engine)")
            with atomic_write(kept) as tmp:
                shutil.copyfile(onnx_path, tmp)
        cmd = trtexec_command(kept, engine, input_name, profile, shapes=any(d < 0 for d in dims), half=opts.half,
                              workspace=opts.workspace)
        engine.parent.mkdir(parents=True, exist_ok=True)
        sidecar = write_text_atomic(sidecar_path(engine), meta.to_json())
        return f"{reason}; {where} {kept} (build the engine from it with: {cmd}; its metadata is in {sidecar})"
