"""torch.distributed plumbing for runs launched by ``torchrun``.

``torchrun --nproc-per-node 4 -m yolox_deploy.cli.train ...`` (or ``torchrun ... $(which yolox-train) ...``)
sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` reads them, joins the process
group (NCCL on CUDA, Gloo on CPU) and picks ``cuda:LOCAL_RANK``. A plain ``yolox-train`` is a world of one
and never touches torch.distributed.

In a distributed run ``--batch`` is the total over all processes; each takes its slice of every global
batch (see ``dataset.py``), DDP averages the gradients, and each process keeps the BatchNorm statistics of
its own slice (SyncBatchNorm with ``--sync-bn`` normalises over the whole batch); before an evaluation every
process's statistics are averaged in the model trained (:func:`average_norm_statistics`, as the authors'
trainer does; the EMA model evaluated by default takes them up through its later updates). Only rank 0
writes checkpoints and logs and evaluates; the others wait at a barrier meanwhile.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # the run's processes on this machine

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Rank, local rank, world size and local world size from the ``torchrun`` environment (a world of one
    when absent)."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    try:
        rank, local_rank, world, local_world = (int(os.environ.get(n, d)) for n, d in zip(names, (0, 0, 1, 0)))
    except ValueError:
        raise InputError(f"{' / '.join(names)} must be integers (set by torchrun)") from None
    return DistInfo(rank, local_rank, world, local_world or world)


def resolve_train_device(device: str, info: DistInfo) -> torch.device:
    """``auto`` -> CUDA when available; in a distributed run each process takes ``cuda:LOCAL_RANK``."""
    d = str(device).strip().lower()
    if d in ("auto", "gpu"):
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.isdigit():
        d = f"cuda:{d}"
    try:
        dev = torch.device(d)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device!r} asked for, but this PyTorch sees no CUDA GPU")
        if info.enabled:
            dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: torch.device, info: DistInfo) -> None:
    """Join the process group of a ``torchrun`` launch (no-op for a world of one)."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def any_process(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """True when ``flag`` is True in any process of the run. A collective call: every process makes it, at the
    same point of its loop. ``flag`` itself for a world of one."""
    if not (info.enabled and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap_model(model: nn.Module, device: torch.device, info: DistInfo, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel (with SyncBatchNorm if asked: GPUs only) in a distributed run, else ``model`` as
    is (``sync_bn`` then has nothing to synchronise, and says so)."""
    if sync_bn and device.type != "cuda":
        raise InputError(f"--sync-bn synchronises BatchNorm across GPUs (SyncBatchNorm runs on CUDA only), not on "
                         f"{device.type}; drop it")
    if not info.enabled:
        if sync_bn:
            log.warning("--sync-bn applies to runs of several processes (torchrun); this one has a single process")
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    # as the authors' trainer: each process keeps its own BatchNorm statistics (averaged before an evaluation by
    # average_norm_statistics); DDP's default would overwrite them with rank 0's before every forward
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def average_norm_statistics(model: nn.Module, info: DistInfo) -> None:
    """Set every BatchNorm's running mean and variance to their average over the processes of the run.

    Each process updates them from its own slice of the batch; the authors' trainer averages them before each
    evaluation, so the statistics the next epoch starts from (and, without EMA, those of the model evaluated
    and saved) stand for the whole batch, not rank 0's slice; an EMA model takes them up through its updates.
    A collective call: every process must make it. No-op for a world of one.
    """
    if not (info.enabled and dist.is_initialized()):
        return
    buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
               for b in (m.running_mean, m.running_var) if b is not None]
    if not buffers:
        return
    flat = torch.cat([b.detach().flatten() for b in buffers])
    dist.all_reduce(flat)
    flat /= info.world_size
    with torch.no_grad():
        for b, avg in zip(buffers, flat.split([b.numel() for b in buffers])):
            b.copy_(avg.view_as(b))
