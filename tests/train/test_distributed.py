"""What the process group wrapping asks of the device."""

import pytest
import torch

from yolox_deploy import build_model
from yolox_deploy.errors import InputError
from yolox_deploy.train.distributed import DistInfo, average_norm_statistics, wrap_model


def test_sync_bn_needs_gpus_and_says_when_it_has_nothing_to_do(caplog):
    model = build_model("yolox-nano", 2)
    for world in (DistInfo(), DistInfo(rank=1, local_rank=1, world_size=2)):
        with pytest.raises(InputError, match="--sync-bn synchronises BatchNorm across GPUs .* not on cpu"):
            wrap_model(model, torch.device("cpu"), world, sync_bn=True)
    assert wrap_model(model, torch.device("cpu"), DistInfo()) is model
    if torch.cuda.is_available():
        assert wrap_model(model, torch.device("cuda"), DistInfo(), sync_bn=True) is model
        assert "applies to runs of several processes" in caplog.text


def _average_worker(rank: int, port: int, result: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm1d(2))
        model[1].running_mean.fill_(rank * 2.0)  # 0 and 2: the average is 1
        model[1].running_var.fill_(1.0 + rank * 4)  # 1 and 5: 3
        model[2].running_mean.copy_(torch.tensor([rank, -rank], dtype=torch.float32))
        before = model[1].num_batches_tracked.clone()
        weight = model[0].weight.detach().clone()
        average_norm_statistics(model, DistInfo(rank=rank, local_rank=rank, world_size=2))
        torch.save({"mean": model[1].running_mean, "var": model[1].running_var, "mean1d": model[2].running_mean,
                    "tracked": torch.equal(before, model[1].num_batches_tracked),
                    "weight": torch.equal(weight, model[0].weight)}, f"{result}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_batchnorm_statistics_are_averaged_over_the_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_average_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(r["mean"], torch.full((4,), 1.0)) and torch.equal(r["var"], torch.full((4,), 3.0))
        assert torch.equal(r["mean1d"], torch.tensor([0.5, -0.5])) and r["tracked"] and r["weight"]
    average_norm_statistics(torch.nn.BatchNorm2d(2), DistInfo())  # a world of one: nothing to join


def test_ddp_keeps_each_process_batchnorm_statistics_as_the_authors(monkeypatch):
    """The authors wrap with DDP(..., broadcast_buffers=False); DDP's default broadcasts rank 0's buffers."""
    seen = {}

    def fake_ddp(module, **kwargs):
        seen.update(kwargs)
        return module

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", fake_ddp)
    model = build_model("yolox-nano", num_classes=3)
    wrap_model(model, torch.device("cpu"), DistInfo(rank=0, local_rank=0, world_size=2))
    assert seen.get("broadcast_buffers") is False


def test_the_run_is_read_from_torchruns_environment(monkeypatch):
    from yolox_deploy.train.distributed import env_dist_info

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert env_dist_info() == DistInfo(0, 0, 1, 1)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert env_dist_info() == DistInfo(5, 1, 8, 8)  # no LOCAL_WORLD_SIZE: all on this machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert env_dist_info() == DistInfo(5, 1, 8, 4)  # two machines of four processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "four")
    with pytest.raises(InputError, match="RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE must be integers"):
        env_dist_info()
