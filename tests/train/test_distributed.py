"""What the process group wrapping asks of the device."""

import pytest
import torch

from yolox_deploy import build_model
from yolox_deploy.errors import InputError
from yolox_deploy.train.distributed import DistInfo, wrap_model


def test_sync_bn_needs_gpus_and_says_when_it_has_nothing_to_do(caplog):
    model = build_model("yolox-nano", 2)
    for world in (DistInfo(), DistInfo(rank=1, local_rank=1, world_size=2)):
        with pytest.raises(InputError, match="--sync-bn synchronises BatchNorm across GPUs .* not on cpu"):
            wrap_model(model, torch.device("cpu"), world, sync_bn=True)
    assert wrap_model(model, torch.device("cpu"), DistInfo()) is model
    if torch.cuda.is_available():
        assert wrap_model(model, torch.device("cuda"), DistInfo(), sync_bn=True) is model
        assert "applies to runs of several processes" in caplog.text
