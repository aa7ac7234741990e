"""The training loop: the paper's recipe end to end, single process or under ``torchrun``.

    from yolox_deploy.train import TrainConfig, Trainer
    result = Trainer(TrainConfig("yolox-nano", "datasets/mine", weights="yolox_nano.pth", epochs=50,
                                 batch=16)).train()

Per iteration: learning rate from the schedule, multi-scale resize of the batch (every 10 iterations),
forward (AMP on CUDA), SimOTA loss, a guard that stops with the iteration and image ids on a non-finite
loss, backward, SGD step, EMA update, a log row. Per epoch: checkpoint ``latest_ckpt.pth``; COCO evaluation
of the EMA weights every ``eval_interval`` epochs (every epoch in the no-augmentation phase and at the end)
with ``best_ckpt.pth`` tracking the best AP; ``last_mosaic_epoch_ckpt.pth`` before the no-augmentation
phase. Only rank 0 writes files and evaluates. Ctrl-C lets the running iteration finish, then writes
``latest_ckpt.pth`` at that iteration, from which ``resume`` continues bit-exactly (a second Ctrl-C stops
at once, without that guarantee); when that iteration ended an epoch, the resumed run first does the
epoch's evaluation and checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.coco import COCO_CLASSES
from ..errors import CheckpointError, InputError, YoloxError
from ..eval.coco import AUTHORS_PROTOCOL, CocoSplit, EvalResult, coco_splits, open_scorable
from ..nn.checkpoint import CLASS_HEAD_PREFIX, Checkpoint, load_checkpoint, read_checkpoint
from ..nn.yolox import YOLOX, build_model
from ..utils.files import check_folder_writable, remove_stale_parts, temp_prefix
from ..utils.signals import stop_between_steps
from ..utils.text import listed
from ..utils.values import is_finite_number, is_integer
from .augment import fit_to_input
from .batchnorm import folded_batchnorms, unfold_batchnorms
from .checkpoint import (
    BEST,
    CHECKPOINTS,
    LAST_MOSAIC,
    LATEST,
    TrainState,
    load_training_state,
    save_training_checkpoint,
)
from .config import TrainConfig
from .data import DetectionSet, load_detection_set
from .dataset import TrainBatchSampler, TrainDataset, collate, loader_worker_init
from .distributed import (
    any_process,
    average_norm_statistics,
    barrier,
    cleanup_distributed,
    env_dist_info,
    init_distributed,
    resolve_train_device,
    wrap_model,
)
from .ema import ModelEMA, unwrap
from .losses import LossOutput, YOLOXLoss, is_finite
from .metrics_log import LOG_FILES, TENSORBOARD_DIR, MetricsLog
from .optim import BASE_LR_PER_IMAGE, build_optimizer, set_lr
from .schedule import LRSchedule, multiscale_size

log = logging.getLogger(__name__)

UNFOLD_IMAGES = 32        # images for the statistics of folded BatchNorms
UNFOLD_GRAD_BATCHES = 4   # training batches for their equilibrium weight norms
MAX_IDS_SHOWN = 40  # image ids a non-finite loss names (a batch of 64 mosaics draws in up to 320 images)
STALE_CHECKPOINT_PART_SECONDS = 60.0  # a checkpoint's temporary file unchanged this long: its writer was killed
RECIPE_WEIGHT_DECAY, RECIPE_MOMENTUM = 5e-4, 0.9
# a resume continues the run as it was: the model, its data and every setting of its recipe (the learning-rate
# schedule, EMA, augmentation, multi-scale) are the saved ones; epochs may change (with a warning), the rest
# (device, workers, evaluation, logging) may differ freely
RESUME_MUST_MATCH = ("model", "batch", "img_size", "seed", "train_split", "lr_per_image", "momentum", "weight_decay",
                     "warmup_epochs", "no_aug_epochs", "min_lr_ratio", "ema", "ema_decay", "multiscale",
                     "multiscale_range", "multiscale_interval", "mosaic_prob", "mosaic_scale", "mixup", "mixup_prob",
                     "mixup_scale", "hsv_prob", "flip_prob", "degrees", "translate", "shear")
ITERS_PER_EPOCH = "iterations_per_epoch"  # saved beside the config: a resume needs the same training set size


class _DataError(Exception):
    """A data error the loader met between two steps (carried out of the loop to keep the run for --resume)."""

    def __init__(self, error: YoloxError) -> None:
        super().__init__(str(error))
        self.error = error


class NonFiniteLossError(YoloxError):
    """The loss became NaN or infinite; the message names the iteration and the images of the batch."""


@dataclass
class TrainResult:
    """Where a run ended and what it produced."""

    output: Path
    iterations: int
    epochs_done: int
    best_ap: float
    last_ap: float | None
    latest: Path | None
    best: Path | None
    last_losses: dict[str, float] = field(default_factory=dict)
    finished: bool = False


def _unwrap_loader_error(e: Exception) -> Exception:
    """A YoloxError raised in a DataLoader worker comes back with the worker's traceback in its message; keep
    the original one-line message so the CLI prints it as such."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return type(e)(msg)


class Trainer:
    """Sets up data, model, optimiser, EMA and logs from a :class:`TrainConfig`; :meth:`train` runs it."""

    def __init__(self, config: TrainConfig) -> None:
        self._asked = config  # before defaults were filled in: what this command line set
        self.cfg = config.resolved()
        self._made_output = not self.cfg.output.exists()
        self.dist = env_dist_info()
        self.device = resolve_train_device(self.cfg.device, self.dist)
        self.metrics: MetricsLog | None = None
        init_distributed(self.device, self.dist)
        try:
            self._setup()
        except BaseException:
            self._discard_failed_start()
            cleanup_distributed()
            raise

    def _setup(self) -> None:
        cfg = self.cfg
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        if cfg.batch % self.dist.world_size:
            raise InputError(f"batch {cfg.batch} does not split evenly over {self.dist.world_size} processes")
        check_folder_writable(cfg.output)  # before the data is read, not when the first log file is opened

        self.resume_path = self._resume_path()
        if self.dist.is_main:  # what a kill -9 during a checkpoint write left
            remove_stale_parts(cfg.output, f"{temp_prefix(CHECKPOINTS)}*.part", STALE_CHECKPOINT_PART_SECONDS)
        resumed = load_training_state(self.resume_path) if self.resume_path is not None else None
        if resumed is not None:
            self._keep_the_runs_settings(resumed.config)
            self._refuse_another_recipe(self.resume_path, resumed.config)
        self._start_weights = self._read_start_weights()
        self.data: DetectionSet = load_detection_set(cfg.data, cfg.train_split, skip_missing=cfg.skip_missing)
        if cfg.num_classes is not None and cfg.num_classes != self.data.num_classes:
            raise InputError(f"--num-classes {cfg.num_classes} but {cfg.data} has {self.data.num_classes} categories "
                             f"({listed(self.data.class_names, 5)})")
        self.val: CocoSplit | None = self._open_val()

        self.dataset = TrainDataset(self.data, cfg.img_size, cfg.augment(), seed=cfg.seed, cache=cfg.cache_images)
        if cfg.cache_images:  # once, before the workers start: forked workers share it
            self.dataset.fill_cache(copies=self.dist.local_world_size, progress=cfg.progress and self.dist.is_main)
        self.sampler = TrainBatchSampler(len(self.dataset), cfg.batch // self.dist.world_size, seed=cfg.seed,
                                         rank=self.dist.rank, world_size=self.dist.world_size)
        self.iters_per_epoch = self.sampler.iters_per_epoch
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=cfg.workers > 0,
            worker_init_fn=loader_worker_init)
        self.schedule = LRSchedule(cfg.lr_per_image * cfg.batch, self.iters_per_epoch, cfg.epochs,
                                   int(cfg.warmup_epochs), int(cfg.no_aug_epochs), cfg.min_lr_ratio)

        self.model: YOLOX = self._build_model().to(self.device)
        self.loss_fn = YOLOXLoss(self.model.num_classes, tuple(self.model.head.strides))
        if cfg.weights is not None and self.resume_path is None and folded_batchnorms(self.model):
            # the weight norms the authors' recipe leaves (its lr at this batch, its decay and momentum), not
            # this run's settings: a lower --lr must stay a gentler fine-tune, as with an unfolded checkpoint
            unfold_batchnorms(self.model, self._plain_batches(UNFOLD_IMAGES), loss_fns=self._loss_closures(),
                              lr=BASE_LR_PER_IMAGE * cfg.batch, weight_decay=RECIPE_WEIGHT_DECAY,
                              momentum=RECIPE_MOMENTUM)
        self.model.input_size = tuple(cfg.eval_size)  # its checkpoints run at this size unless told otherwise
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.schedule(0), cfg.momentum, cfg.weight_decay)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.iteration = 0
        self.epochs_closed = 0  # epochs whose end-of-epoch work (evaluation, checkpoints) is done
        self.best_ap = 0.0
        self.last_ap: float | None = None
        self.complete = False  # resumed a run that had ended: nothing to train
        if self.resume_path is not None:
            self._resume(self.resume_path, resumed)
        self.net = wrap_model(self.model, self.device, self.dist, cfg.sync_bn)
        self.metrics = MetricsLog(cfg.output, cfg.tensorboard) if self.dist.is_main else None
        if self.metrics is not None and self.resume_path is not None:
            self.metrics.resume_at(self.iteration, evaluated_through=self.epochs_closed * self.iters_per_epoch)
        self._last: dict[str, float] = {}
        self.last_input_hw: tuple[int, int] = tuple(cfg.img_size)

    # --- setup ---------------------------------------------------------------------------------------
    def _resume_path(self) -> Path | None:
        cfg = self.cfg
        latest = cfg.output / LATEST
        if not cfg.resume:
            found = run_files(cfg.output)
            if found:
                hint = "continue it with --resume" if latest.exists() else "delete them"
                raise InputError(f"{cfg.output} already holds a training run's files ({listed(found, 4)}); "
                                 f"{hint} or choose another --output")
            return None
        path = latest if cfg.resume is True else Path(cfg.resume)
        if not path.is_file():
            raise InputError(f"nothing to resume: {path} not found")
        found = [] if self._resumes_in_place(path) else run_files(cfg.output)
        if found:
            raise InputError(f"{cfg.output} holds another run's files ({listed(found, 4)}); resume "
                             f"{path.name} in its own folder "
                             f"({path.parent}) or in a new --output")
        return path

    def _best_ap_on_disk(self) -> float:
        """The AP of the ``best_ckpt.pth`` in the output folder (0 without one): a run resumed from an earlier
        checkpoint of its own replaces it only by a better one."""
        best = self.cfg.output / BEST
        if not best.is_file():
            return 0.0
        value = read_checkpoint(best).extra.get("best_ap", 0.0)
        return float(value) if is_finite_number(value) else 0.0

    def _resumes_in_place(self, path: Path) -> bool:
        """Whether the checkpoint resumed lies in this run's output folder (the run continues its own files)."""
        return path.resolve().parent == self.cfg.output.resolve()

    def _open_val(self) -> CocoSplit | None:
        cfg = self.cfg
        if not cfg.val_split or cfg.eval_interval == 0:
            return None
        if cfg.val_split not in coco_splits(cfg.data):
            log.warning("no %s split in %s: no periodic evaluation, best_ckpt.pth will not be written",
                        cfg.val_split, cfg.data)
            return None
        try:
            val = open_scorable(cfg.data, cfg.val_split)
        except InputError as e:  # --skip-missing is for the training split; say what else gets the run going
            raise InputError(f"the evaluation split {cfg.val_split}: {e}; fix it, evaluate on another split "
                             "(--val-split), or train without evaluation (--eval-interval 0)") from None
        unknown = set(val.category_names) - set(self.data.class_names)
        if unknown:
            raise InputError(f"the {cfg.val_split} split has categories the {cfg.train_split} split lacks: "
                             f"{listed([repr(n) for n in sorted(unknown)], 5)}")
        return val

    def _build_model(self) -> YOLOX:
        cfg = self.cfg
        names = self.data.class_names
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, len(names), class_names=names)
        ids = self.data.category_ids
        model.category_ids = ids if all(is_integer(i) for i in ids) else None  # COCO's kind: results carry them
        ckpt, self._start_weights = self._start_weights, None
        if ckpt is not None:
            load_checkpoint(model, ckpt, ignore_class_head=True)
            log.info("loaded %s; %s", cfg.weights, transfer_class_head(model, ckpt, names))
        return model

    def _plain_batches(self, count: int) -> Iterator[torch.Tensor]:
        """Up to ``count`` training images letterboxed to the input size, without augmentation."""
        order = self.sampler.epoch_order(0)[:count]
        bs = max(1, min(self.cfg.batch, 16))
        for start in range(0, len(order), bs):
            images = []
            for i in order[start:start + bs]:
                image, boxes, _ = self.dataset.load(int(i))
                canvas, _ = fit_to_input(image, boxes, self.cfg.img_size)
                images.append(canvas.transpose(2, 0, 1))
            yield torch.from_numpy(np.stack(images)).to(self.device).float()

    def _loss_closures(self) -> Iterator[Callable[[], torch.Tensor]]:
        """Training losses of the first augmented batches of epoch 0 (for :func:`unfold_batchnorms`)."""
        order = self.sampler.epoch_order(0)
        bs = self.sampler.batch_per_rank
        for start in range(0, min(len(order), UNFOLD_GRAD_BATCHES * bs) - bs + 1, bs):
            images, targets, _ = collate([self.dataset[(int(i), 0, True)] for i in order[start:start + bs]])

            def loss(images: torch.Tensor = images, targets: torch.Tensor = targets) -> torch.Tensor:
                x = images.to(self.device).float()
                return self.loss_fn(self.model(x), targets.to(self.device), tuple(x.shape[-2:])).total

            yield loss

    def _read_start_weights(self) -> Checkpoint | None:
        """The --weights a new run starts from, read and checked against the variant before the data is read (a
        missing or wrong file must not cost the reading, or caching, of the whole training set)."""
        cfg = self.cfg
        if cfg.weights is None or self.resume_path is not None:
            return None
        ckpt = read_checkpoint(cfg.weights, cfg.model)
        load_checkpoint(build_model(cfg.model, 1), ckpt, ignore_class_head=True)  # the class head is the data's
        return ckpt

    def _keep_the_runs_settings(self, saved: dict[str, Any]) -> None:
        """Epochs, warm-up and no-augmentation epochs this command line does not set are the resumed run's: a
        default would change its schedule, and phases derived again from a changed --epochs would refuse it."""
        for name in ("epochs", "warmup_epochs", "no_aug_epochs"):
            if getattr(self._asked, name) is None and is_integer(saved.get(name)):
                setattr(self.cfg, name, saved[name])
        self.cfg.check_phases()

    def _refuse_another_recipe(self, path: Path, saved: dict[str, Any]) -> None:
        """Refuse, before the data is read, a resume whose recipe or starting weights differ from the run's."""
        now = self.cfg.to_dict()
        changed = [f"{key} {saved[key]} -> {now[key]}" for key in RESUME_MUST_MATCH
                   if key in saved and saved[key] != now[key]]
        if changed:  # they were silently replaced by this command line's values (or their defaults)
            raise InputError(f"cannot resume {path.name} with different settings ({'; '.join(changed)}); give the "
                             "original run's options (its checkpoint's config holds them)")
        if self.cfg.weights is not None and "weights" in saved and (
                saved["weights"] is None or Path(self.cfg.weights).resolve() != Path(saved["weights"]).resolve()):
            raise InputError(f"cannot resume {path.name} from other weights ({self.cfg.weights}): a resume continues "
                             "from its checkpoint; drop --weights, or start a new run from them")

    def _resume(self, path: Path, state: TrainState) -> None:
        saved = state.config
        if saved.get(ITERS_PER_EPOCH, self.iters_per_epoch) != self.iters_per_epoch:
            raise InputError(f"cannot resume {path.name}: the training set changed ({saved[ITERS_PER_EPOCH]} "
                             f"iterations per epoch then, {self.iters_per_epoch} now; or the run is from a version "
                             "that dropped each epoch's incomplete last batch), which would shift its epochs and "
                             f"schedule; start a new run from its weights (--weights {path})")
        if state.class_names is not None and tuple(state.class_names) != self.data.class_names:
            raise InputError(f"cannot resume {path.name}: it was trained on other classes than {self.cfg.data} has")
        if self.cfg.weights is None and saved.get("weights"):  # the run's own, still recorded in its checkpoints
            self.cfg.weights = Path(saved["weights"])
        if "epochs" in saved and saved["epochs"] != self.cfg.epochs:
            log.warning("resuming with %d epochs instead of %d: the learning-rate schedule changes from here",
                        self.cfg.epochs, saved["epochs"])
        try:
            self.model.load_state_dict(state.model)
            self.optimizer.load_state_dict(state.optimizer)
            if self.ema is not None:
                if state.ema is None:
                    raise CheckpointError(f"{path.name} has no EMA state; resume it with --no-ema")
                self.ema.load_state_dict(state.ema)
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path.name} does not fit this run ({str(e).splitlines()[0]})") from None
        if state.scaler and self.amp:
            self.scaler.load_state_dict(state.scaler)
        self.iteration = state.iteration
        # start_epoch is the first epoch not closed: at its last iteration (a Ctrl-C after an epoch's final
        # step) its evaluation and checkpoints are still to do, and train() does them first
        self.epochs_closed = state.start_epoch
        total = self.cfg.epochs * self.iters_per_epoch
        if self.iteration > total:
            raise InputError(f"cannot resume {path.name}: it is at iteration {self.iteration}, past the end of "
                             f"the last epoch asked (epoch {self.cfg.epochs}, iteration {total}); give more --epochs")
        # nothing left to do (a job that resumes until its run ends may run once more): train() returns at once
        self.complete = self.iteration == total and self.epochs_closed >= self.cfg.epochs
        # the best AP is the one of the best_ckpt.pth beside the checkpoint (the checkpoint's own record may be
        # newer, when a run stopped between an evaluation and the writing of its best); a run continued
        # elsewhere starts its own
        self.best_ap = self._best_ap_on_disk() if self._resumes_in_place(path) else 0.0
        self.last_ap = state.curr_ap
        if not self.complete:
            log.info("resumed %s at iteration %d (epoch %d)", path, self.iteration,
                     self.iteration // self.iters_per_epoch + 1)

    # --- one iteration -------------------------------------------------------------------------------
    def step(self, images: torch.Tensor, targets: torch.Tensor, image_ids: list[tuple[int | str, ...]]) -> LossOutput:
        """One optimisation step on a collated batch (uint8 images, padded targets at the base size)."""
        cfg = self.cfg
        self._in_step = True  # until the iteration is counted: a state no checkpoint may record
        set_lr(self.optimizer, self.schedule(self.iteration))
        size = multiscale_size(self.iteration, cfg.img_size, cfg.multiscale_range if cfg.multiscale else None,
                               cfg.multiscale_interval, cfg.seed)
        self.last_input_hw = size
        x = images.to(self.device, non_blocking=True).float()
        t = targets.to(self.device, non_blocking=True)
        if tuple(x.shape[-2:]) != tuple(size):
            sy, sx = size[0] / x.shape[-2], size[1] / x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            t = t.clone()
            t[..., 1::2] *= sx  # cx, w
            t[..., 2::2] *= sy  # cy, h
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            outputs = self.net(x)
        loss = self.loss_fn(outputs, t, size)
        if not is_finite(loss.total):
            parts = ", ".join(f"{k}={v:.4g}" for k, v in loss.as_dict().items())
            ids = list(dict.fromkeys(i for sample in image_ids for i in sample))  # mosaics' too: any may be the cause
            raise NonFiniteLossError(
                f"the loss is not finite at iteration {self.iteration + 1} (epoch {self.iteration // self.iters_per_epoch + 1}, "
                f"input {size[0]}x{size[1]}, {parts}) on the {len(ids)} images of its batch (ids "
                f"{listed([repr(i) for i in ids], MAX_IDS_SHOWN)}); check these images' annotations, or lower the "
                "learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.net)
        self.iteration += 1
        self._in_step = False
        return loss

    # --- the loop ------------------------------------------------------------------------------------
    def train(self, max_iterations: int | None = None) -> TrainResult:
        """Run to the last epoch, or stop after ``max_iterations`` iterations in total (then ``latest_ckpt.pth``
        is written at that iteration and the run can be resumed)."""
        cfg = self.cfg
        ipe = self.iters_per_epoch
        total = cfg.epochs * ipe
        stop = total if max_iterations is None else min(int(max_iterations), total)
        finished = False
        started_at = self.iteration
        self._in_step = False  # (a step that raised left it set)
        with self._interrupts_between_steps():
            try:
                if self.epochs_closed < self.iteration // ipe:  # resumed after an epoch's last step
                    self._end_of_epoch(self.epochs_closed)
                while self.iteration < stop:
                    self._stop_if_interrupted(together=True)
                    epoch = self.iteration // ipe
                    no_aug = cfg.no_aug(epoch)
                    self.loss_fn.use_l1 = no_aug
                    self.sampler.set_epoch(epoch, mosaic=not no_aug, start_iter=self.iteration - epoch * ipe)
                    self._run_epoch(epoch, stop)
                    if self.iteration == (epoch + 1) * ipe:
                        self._end_of_epoch(epoch)
                    else:
                        self._save(LATEST, start_epoch=epoch)
                finished = self.iteration >= total
            except KeyboardInterrupt:
                self._keep_for_resume("interrupted")
                raise
            except _DataError as e:
                if self.iteration > started_at:  # steps were taken since the last checkpoint: keep them
                    self._keep_for_resume("stopped by its data", "fix it and continue")
                else:
                    self._discard_failed_start()
                raise e.error from None
            except BaseException:
                self._discard_failed_start()
                raise
            finally:
                if self.metrics is not None:
                    self.metrics.close()
        out = cfg.output
        return TrainResult(out, self.iteration, self.iteration // ipe, self.best_ap, self.last_ap,
                           out / LATEST if (out / LATEST).exists() else None,
                           out / BEST if (out / BEST).exists() else None, dict(self._last), finished)

    def _discard_failed_start(self) -> None:
        """A new run that fails before writing any checkpoint removes its logs (and the output folder it made),
        so the same command can run again once the cause is fixed."""
        out = self.cfg.output
        if getattr(self, "resume_path", None) is not None or any(out.glob(CHECKPOINTS)):
            return
        if self.metrics is not None:
            self.metrics.discard()
        if self._made_output and out.is_dir() and not any(out.iterdir()):
            out.rmdir()

    @contextlib.contextmanager
    def _interrupts_between_steps(self) -> Iterator[None]:
        """Within the block, Ctrl-C (SIGINT) or SIGTERM only asks to stop: the loop stops at the next
        iteration boundary, where the state is whole (an interrupt inside a step leaves BatchNorm statistics,
        or the weights, a step ahead of the iteration a checkpoint would record). A second Ctrl-C stops at
        once. Data-loader workers forked from here leave it to this process; outside the main thread (no
        signal handlers there) Ctrl-C behaves as usual."""
        # SIGTERM: what `kill` and schedulers send
        with stop_between_steps((signal.SIGINT, signal.SIGTERM),
                                "stopping after this iteration (Ctrl-C again to stop at once)") as self._stop:
            yield

    def _keep_for_resume(self, what: str, then: str = "continue") -> None:
        """On a stop between steps, write LATEST for --resume (an epoch ended but not closed is closed on resume);
        inside a step (a second Ctrl-C) the state is not whole, and the last checkpoint written stays."""
        if not self.dist.is_main:
            return
        if self._in_step:
            log.warning("%s inside iteration %d, whose state is not whole: %s is left as it was; %s with --resume",
                        what, self.iteration + 1, self.cfg.output / LATEST, then)
            return
        self._save(LATEST, start_epoch=self.epochs_closed)
        log.warning("%s at iteration %d; %s written, %s with --resume", what, self.iteration, self.cfg.output / LATEST,
                    then)

    def _stop_if_interrupted(self, *, together: bool = False) -> None:
        """Stop (raise) where a stop was asked for. ``together``: at an iteration boundary every process reaches,
        where they agree, so that a signal that reached one process between two others' checks stops them all
        at one iteration (a process that went on would wait in the next step's gradient exchange for ever)."""
        stop = getattr(self, "_stop", None)
        if stop is None:
            return
        if any_process(stop.requested, self.device, self.dist) if together else stop.requested:
            stop.stop()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception as e:
                self._stop_if_interrupted()  # Ctrl-C also ended the loader's worker processes
                if isinstance(e, YoloxError):  # a broken image or annotation, found between two steps
                    raise _DataError(_unwrap_loader_error(e)) from None
                raise
            yield batch

    def _run_epoch(self, epoch: int, stop: int) -> None:
        from tqdm import tqdm

        cfg = self.cfg
        ipe = self.iters_per_epoch
        bar = tqdm(total=ipe, initial=self.iteration - epoch * ipe, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="it", leave=False, disable=not (cfg.progress and self.dist.is_main), dynamic_ncols=True)
        try:
            tick = time.perf_counter()
            for images, targets, ids in self._batches():
                loss = self.step(images, targets, ids)
                now = time.perf_counter()
                row = {"epoch": epoch + 1, "iteration": self.iteration, "lr": self.optimizer.param_groups[0]["lr"],
                       "size": self.last_input_hw[0], **loss.as_dict(), "iter_time": now - tick}
                tick = now
                self._last = {k: float(v) for k, v in row.items()}
                if self.metrics is not None:
                    self.metrics.log_train(row)
                bar.set_postfix(loss=f"{row['total_loss']:.3f}", iou=f"{row['iou_loss']:.3f}",
                                obj=f"{row['obj_loss']:.3f}", cls=f"{row['cls_loss']:.3f}", l1=f"{row['l1_loss']:.3f}",
                                lr=f"{row['lr']:.2e}", size=row["size"], refresh=False)
                bar.update(1)
                self._stop_if_interrupted(together=True)
                if self.iteration >= stop:
                    break
        finally:
            bar.close()

    def _end_of_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        last = epoch + 1 == cfg.epochs
        due = bool(cfg.eval_interval) and ((epoch + 1) % cfg.eval_interval == 0 or cfg.no_aug(epoch) or last)
        improved = False
        if due:
            average_norm_statistics(self.net, self.dist)
        if due and self.val is not None:
            if self.dist.is_main:
                try:
                    result = self.evaluate()
                except YoloxError as e:  # a broken evaluation image or annotation: the epoch's steps are kept
                    raise _DataError(e) from None
                self.last_ap = result.stats["AP"]
                improved = self.last_ap > self.best_ap or not (cfg.output / BEST).exists()
                self.best_ap = max(self.best_ap, self.last_ap)
                if self.metrics is not None:
                    self.metrics.log_eval({"epoch": epoch + 1, "iteration": self.iteration, **result.stats})
                log.info("epoch %d: AP %.4f AP50 %.4f (best %.4f)", epoch + 1, result.stats["AP"],
                         result.stats["AP50"], self.best_ap)
            barrier(self.dist)
        if improved:  # before latest_ckpt.pth records the new best: a run stopped between them evaluates again
            self._save(BEST, start_epoch=epoch + 1)
        self._save(LATEST, start_epoch=epoch + 1)
        if int(cfg.no_aug_epochs) and epoch + 1 == cfg.epochs - int(cfg.no_aug_epochs):
            self._save(LAST_MOSAIC, start_epoch=epoch + 1)
        if cfg.save_history:
            self._save(f"epoch_{epoch + 1}_ckpt.pth", start_epoch=epoch + 1)
        self.epochs_closed = epoch + 1

    # --- evaluation and checkpoints ------------------------------------------------------------------
    def eval_model(self) -> YOLOX:
        """The weights that get evaluated and saved: the EMA copy, or a copy of the model without EMA."""
        if self.ema is not None:
            return self.ema.model
        return copy.deepcopy(unwrap(self.net)).eval()

    def evaluate(self, data: CocoSplit | None = None, img_size: tuple[int, int] | None = None) -> EvalResult:
        """COCO AP of :meth:`eval_model` on ``data`` (default: the validation split) with the authors' protocol,
        at ``img_size`` (default: the run's evaluation size, ``eval_size``)."""
        from ..eval.coco import evaluate
        from ..runtimes.detector import Detector

        split = data if data is not None else self.val
        if split is None:
            raise InputError("no evaluation split")
        with Detector(self.eval_model(), device=str(self.device), img_size=img_size or self.cfg.eval_size,
                      batch_size=8, **AUTHORS_PROTOCOL) as det:
            return evaluate(det, split, progress=self.cfg.progress)

    def _save(self, name: str, start_epoch: int) -> None:
        if not self.dist.is_main:
            return
        weights = self.eval_model()
        diverged = [k for k, v in weights.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if diverged:  # a step can leave the weights non-finite with a finite loss (too high a learning rate)
            raise NonFiniteLossError(
                f"the weights are not finite after iteration {self.iteration} ({len(diverged)} tensors, first "
                f"{diverged[0]}): the training diverged, so {name} was not written; lower the learning rate")
        save_training_checkpoint(
            self.cfg.output / name, weights=weights, model=unwrap(self.net), optimizer=self.optimizer,
            ema_state=self.ema.state_dict() if self.ema is not None else None, scaler_state=self.scaler.state_dict(),
            iteration=self.iteration, start_epoch=start_epoch, best_ap=self.best_ap,
            curr_ap=self.last_ap if self.last_ap is not None else 0.0,
            config={**self.cfg.to_dict(), ITERS_PER_EPOCH: self.iters_per_epoch})

    def close(self) -> None:
        """Close the logs and leave the process group (the trainer cannot train afterwards)."""
        if self.metrics is not None:
            self.metrics.close()
        cleanup_distributed()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_files(folder: Path) -> list[str]:
    """The names of what a training run writes (checkpoints, logs) found in ``folder``: a new run there would
    append to those logs and mix its checkpoints with theirs."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.match(CHECKPOINTS) or p.name in (*LOG_FILES, TENSORBOARD_DIR))


def transfer_class_head(model: YOLOX, ckpt: Checkpoint, class_names: tuple[str, ...]) -> str:
    """Fill ``model``'s class head from the checkpoint's: row by row by class name when the checkpoint's
    classes (its own names, or COCO's for an 80-class checkpoint without names) include every class of the
    model; position by position when the counts agree but the names do not; else keep the fresh head.
    Returns a sentence saying which."""
    src_n = ckpt.num_classes
    src_names = ckpt.class_names or (COCO_CLASSES if src_n == len(COCO_CLASSES) else None)
    if src_names is not None and len(src_names) == src_n and all(n in src_names for n in class_names):
        rows = [list(src_names).index(n) for n in class_names]
        how = "class head taken over by class name" if rows != list(range(src_n)) else "all weights loaded"
    elif src_n == len(class_names):
        rows = list(range(src_n))
        how = "all weights loaded (class head by position)"
    else:
        return f"class head initialised afresh ({src_n} classes in the checkpoint, {len(class_names)} in the data)"
    index = torch.tensor(rows)
    sd = model.state_dict()
    with torch.no_grad():
        for key, value in ckpt.state_dict.items():
            if key.startswith(CLASS_HEAD_PREFIX):
                sd[key].copy_(value.index_select(0, index))
    return how


__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "transfer_class_head"]
