"""The augmented training stream: dataset, deterministic sharded batch sampler, and collate.

Every sample is a pure function of ``(seed, epoch, index)``: its augmentation draws come from a generator
seeded with those three numbers, and the sampler's order from ``(seed, epoch)``. So a run resumed from a
checkpoint (even mid-epoch) sees exactly the batches it would have seen, whatever the number of loader
workers, and all ranks of a distributed run agree without exchanging random state.

A sampler key is ``(index, epoch, mosaic)`` (``epoch``: the pass through the data it comes from, see
:class:`TrainBatchSampler`); ``mosaic=False`` in the last (no-augmentation) epochs turns
off Mosaic and MixUp (HSV and flip stay, as in the authors' recipe). As in the authors' ``TrainTransform``,
a sample without labels (a background image, or a mosaic whose boxes were all cut away) gets neither HSV nor
flip, and one whose boxes all end up 1 px or thinner is the sample before them, with all its boxes.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputError
from ..io.images import check_annotated_size, read_image
from ..ops.boxes import xyxy_to_cxcywh
from ..utils.cpus import usable_cpus
from ..utils.memory import memory_bytes
from .augment import fit_to_input, fitted_size, hflip, hsv_jitter, mixup, mosaic, random_affine, resize_to_fit
from .data import DetectionSet

CACHE_MEMORY_SHARE = 0.8  # --cache is refused when the cached images would take more of the memory available
MIN_BOX_SIDE = 1.0  # px on the network input: smaller boxes are dropped after augmentation (authors: > 1)

SampleKey = tuple[int, int, bool]  # (index, epoch, mosaic enabled)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (defaults: the paper's recipe for large models)."""

    mosaic_prob: float = 1.0
    mosaic_scale: tuple[float, float] = (0.1, 2.0)
    mixup_prob: float = 1.0
    mixup_scale: tuple[float, float] = (0.5, 1.5)
    enable_mixup: bool = True
    hsv_prob: float = 1.0
    flip_prob: float = 0.5
    degrees: float = 10.0
    translate: float = 0.1
    shear: float = 2.0


class TrainDataset(torch.utils.data.Dataset):
    """Augmented samples of a :class:`DetectionSet` at ``input_hw``.

    ``dataset[(index, epoch, mosaic)]`` (or ``dataset[index]``: epoch 0, Mosaic on) returns
    ``(image uint8 [3, H, W] BGR, targets float32 [N, 5] (class, cx, cy, w, h px), image_id)``.
    ``cache=True`` keeps decoded images (resized to fit ``input_hw``) in memory: :meth:`fill_cache` reads
    them all once, before the loader's workers start (forked workers then share that one copy); otherwise
    each process keeps those it reads.
    """

    def __init__(self, data: DetectionSet, input_hw: tuple[int, int], aug: AugmentConfig = AugmentConfig(),
                 seed: int = 0, cache: bool = False) -> None:
        self.data = data
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.aug = aug
        self.seed = int(seed)
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._labelled = [i for i, r in enumerate(data.records) if len(r.labels)]

    def __len__(self) -> int:
        return len(self.data.records)

    def cache_bytes(self) -> int:
        """The memory the images take once decoded and resized to fit ``input_hw`` (what the cache holds)."""
        sizes = (fitted_size((rec.height, rec.width), self.input_hw)[1] for rec in self.data.records)
        return sum(w * h * 3 for w, h in sizes)

    def fill_cache(self, copies: int = 1, progress: bool = True) -> None:
        """Read every image into the cache now, on a few threads (OpenCV decodes without the GIL), after
        checking that ``copies`` caches (one per training process on this machine) fit in the memory
        available: :class:`InputError` naming both figures when they do not."""
        need = self.cache_bytes() * copies
        available = memory_bytes("MemAvailable")
        if available is not None and need > CACHE_MEMORY_SHARE * available:
            raise InputError(f"caching the {len(self)} training images takes {need / 2**30:.1f} GiB "
                             f"({copies} process(es)) and {available / 2**30:.1f} GiB of memory is available: "
                             "train without --cache")
        missing = [i for i in range(len(self)) if i not in self._cache]
        with ThreadPoolExecutor(max_workers=min(8, usable_cpus())) as pool:
            for index, hit in zip(missing, tqdm(pool.map(self._read, missing), total=len(missing),
                                                desc="caching images", unit="img", disable=not progress)):
                self._cache[index] = hit

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rec = self.data.records[index]
        image = read_image(rec.path)
        check_annotated_size(image, rec.path, (rec.height, rec.width))
        return resize_to_fit(image, rec.boxes, self.input_hw)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index`` resized to fit ``input_hw`` (no padding), its boxes scaled alike, its labels."""
        hit = self._cache.get(index)
        if hit is None:
            hit = self._read(index)
            if self.cache:
                self._cache[index] = hit
        return hit[0], hit[1].copy(), self.data.records[index].labels

    def __getitem__(self, key: SampleKey | int) -> tuple[torch.Tensor, torch.Tensor, tuple[int | str, ...]]:
        """-> image uint8 ``[3, H, W]``, targets ``[M, 5]`` (class, cx, cy, w, h) and the ids of the images the
        sample is made of: the indexed one first, then its mosaic's and MixUp's others."""
        index, epoch, use_mosaic = (int(key), 0, True) if isinstance(key, (int, np.integer)) else key
        rng = np.random.default_rng((self.seed, int(epoch), int(index)))
        aug = self.aug
        picks = [index]
        if use_mosaic and rng.random() < aug.mosaic_prob:
            picks += [int(i) for i in rng.integers(0, len(self), 3)]
            canvas, boxes, labels = mosaic([self.load(i) for i in picks], rng, self.input_hw)
            image, boxes, labels = random_affine(canvas, boxes, labels, rng, self.input_hw, aug.degrees,
                                                 aug.translate, aug.mosaic_scale, aug.shear)
            if aug.enable_mixup and len(labels) and self._labelled and rng.random() < aug.mixup_prob:
                other = self._labelled[int(rng.integers(0, len(self._labelled)))]
                picks.append(other)
                image, boxes, labels = mixup(image, boxes, labels, self.load(other), rng, aug.mixup_scale)
        else:
            image, boxes, labels = self.load(index)
        # the authors' TrainTransform: a sample without labels is only letterboxed (no colour jitter, no flip)
        original = (image, boxes)
        if len(labels):
            if rng.random() < aug.hsv_prob:
                image = hsv_jitter(image, rng)
            if rng.random() < aug.flip_prob:
                image, boxes = hflip(image, boxes)
        image, boxes = fit_to_input(image, boxes, self.input_hw)
        boxes = xyxy_to_cxcywh(boxes.astype(np.float32))
        keep = np.minimum(boxes[:, 2], boxes[:, 3]) > MIN_BOX_SIDE
        if keep.any():
            boxes, labels = boxes[keep], labels[keep]
        elif len(labels):  # every box that small: as the authors, the sample before its jitter and flip, all its
            image, boxes = fit_to_input(*original, self.input_hw)  # boxes kept (rather than a background image)
            boxes = xyxy_to_cxcywh(boxes.astype(np.float32))
        targets = np.concatenate((labels.reshape(-1, 1).astype(np.float32), boxes), axis=1)
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return chw, torch.from_numpy(targets), tuple(self.data.records[i].image_id for i in picks)


def loader_worker_init(worker_id: int) -> None:
    """In each DataLoader worker: a process group of its own, so that a signal to the training's process group
    (Ctrl-C at the terminal, ``timeout``, ``kill -- -PGID``) reaches the training process alone, which stops its
    workers itself once its checkpoint is written; and (Linux, forked workers) a SIGTERM sent to every process
    of a job (Slurm's or systemd's stop of a control group) is left to the training process too. Such a
    SIGTERM ended the workers (PyTorch's handler ends a worker on a SIGTERM, exiting when its parent sent it),
    and the training with them, in a traceback before its checkpoint. The parent's own SIGTERM to a stuck
    worker still ends it. OpenCV runs single-threaded in a worker (the workers are the parallelism; a pool of
    one thread per core in each of them oversubscribes the CPUs), as in the authors' setup."""
    cv2.setNumThreads(0)
    if hasattr(os, "setpgid"):  # POSIX
        os.setpgid(0, 0)
    if hasattr(signal, "sigwaitinfo") and _threads() == 1:  # Linux, a forked worker (see below)
        _leave_sigterm_to_the_parent()


def _threads() -> int:
    """This process's threads, native ones included (``/proc/self/task``); 0 where that cannot be read."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def _leave_sigterm_to_the_parent() -> None:
    """Block SIGTERM in this worker and take it in a thread that knows who sent it (``sigwaitinfo``; a Python
    handler does not): the parent's, which is how PyTorch stops a worker, exits as PyTorch's own handler
    does; anyone else's is left to the parent, which stops its workers itself. Only for a worker with one
    thread (forked, Linux's start method before Python 3.14): the threads it starts later inherit the blocked
    signal, while one started earlier (a spawned interpreter's BLAS pool) would take SIGTERM and PyTorch's
    handler would end the worker as before. Processes forked from the worker get SIGTERM back (one started
    with ``subprocess`` keeps it blocked: the training data never starts any)."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.register_at_fork(after_in_child=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}))

    def watch() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=watch, name="sigterm-from-parent", daemon=True).start()


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, tuple[int | str, ...]]],
            ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int | str, ...]]]:
    """-> images uint8 ``[B, 3, H, W]``, targets float32 ``[B, M, 5]`` padded with class ``-1``, each sample's
    image ids (as the annotation file gives them: integers, or names, which training takes too; the sample's own
    image first, then those its mosaic and MixUp drew in). ``M`` is the batch's most labels,
    uncapped: the authors' ``TrainTransform(max_labels=120)`` drops labels past 120 (MixUp's first), which then
    count as background; COCO images rarely come near it."""
    images = torch.stack([b[0] for b in batch])
    most = max((b[1].shape[0] for b in batch), default=0)
    targets = torch.zeros((len(batch), most, 5), dtype=torch.float32)
    targets[..., 0] = -1
    for i, (_, t, _) in enumerate(batch):
        targets[i, :t.shape[0]] = t
    return images, targets, [b[2] for b in batch]


class TrainBatchSampler(torch.utils.data.Sampler):
    """Batches of :data:`SampleKey` for one epoch at a time, sharded over ranks.

    As the authors' ``InfiniteSampler`` + ``YoloBatchSampler(drop_last=False)``: the samples form one endless
    stream, permutation after permutation (permutation ``q`` drawn from ``(seed, q)``), cut into global batches
    of ``batch_per_rank * world_size``; an epoch is ``ceil((size // world_size) / batch_per_rank)`` of them
    (its last batch runs on into the next permutation, which the next epoch continues). Rank ``r`` takes slice
    ``r`` of each global batch, so the global batches do not depend on the number of ranks. A key's second
    field is the permutation its sample comes from (the epoch itself when ``size`` is a multiple of the global
    batch), so no two samples of a run share an augmentation seed. Call :meth:`set_epoch` before iterating;
    ``start_iter`` skips the first iterations of that epoch (resume mid-epoch).
    """

    def __init__(self, size: int, batch_per_rank: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_per_rank < 1:
            raise InputError(f"batch size per process must be >= 1, got {batch_per_rank}")
        self.size = size
        self.batch_per_rank = batch_per_rank
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.global_batch = batch_per_rank * world_size
        self.iters_per_epoch = -(-(size // world_size) // batch_per_rank)  # the authors' len(train_loader)
        if size < self.global_batch:
            raise InputError(f"the training set has {size} images, fewer than one batch of {self.global_batch}; "
                             "lower --batch")
        self.epoch, self.mosaic, self.start_iter = 0, True, 0

    def set_epoch(self, epoch: int, mosaic: bool = True, start_iter: int = 0) -> None:
        self.epoch, self.mosaic, self.start_iter = int(epoch), bool(mosaic), int(start_iter)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, int(epoch))).permutation(self.size)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        orders: dict[int, np.ndarray] = {}
        for it in range(self.start_iter, self.iters_per_epoch):
            start = ((self.epoch * self.iters_per_epoch + it) * self.global_batch
                     + self.rank * self.batch_per_rank)  # position in the stream of permutations
            batch = []
            for position in range(start, start + self.batch_per_rank):
                q, offset = divmod(position, self.size)
                if q not in orders:
                    orders = {k: v for k, v in orders.items() if k >= q}
                    orders[q] = self.epoch_order(q)
                batch.append((int(orders[q][offset]), q, self.mosaic))
            yield batch

    def __len__(self) -> int:
        return self.iters_per_epoch - self.start_iter
