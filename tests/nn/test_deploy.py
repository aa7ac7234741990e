import copy

import numpy as np
import pytest
import torch

from yolox_deploy.nn.blocks import Focus
from yolox_deploy.nn.deploy import FocusAsConv, InputScaledConv, deploy_model, input_scale_exponent


@pytest.mark.parametrize("half", [False, True])
def test_deploy_model_is_the_same_function(tiny_random_model, half, rng):
    """Focus as one strided conv (and, for FP16, the scaled first conv) changes nothing but the operators."""
    model = copy.deepcopy(tiny_random_model)
    ready = deploy_model(model, half=half)
    assert ready.is_fused
    assert not any(isinstance(m, Focus) for m in ready.modules())
    assert any(isinstance(m, FocusAsConv) for m in ready.modules())
    x = torch.from_numpy(rng.uniform(0, 255, (2, 3, 96, 64)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(ready(x).numpy(), model.eval()(x).numpy(), rtol=1e-4, atol=1e-3)
    assert any(isinstance(m, Focus) for m in model.modules())  # the source is untouched
    again = deploy_model(ready, half=half)
    assert sum(isinstance(m, InputScaledConv) for m in again.modules()) == (1 if half and any(
        isinstance(m, InputScaledConv) for m in ready.modules()) else 0)


def test_fp16_weights_no_longer_flush(nano_model, dog_jpg):
    """FP16 weight storage that flushes subnormals (NCNN, many GPUs) keeps the output close only when the
    first conv is rescaled."""
    from yolox_deploy.io.images import read_image
    from yolox_deploy.ops.letterbox import preprocess_batch

    x = torch.from_numpy(preprocess_batch([read_image(dog_jpg)], (416, 416))[0])

    def raw(m):
        m.head.decode_in_inference = False
        with torch.no_grad():
            return m(x).numpy()

    ref = raw(deploy_model(nano_model))
    errors = {}
    for half in (False, True):
        m = deploy_model(nano_model, half=half)
        for p in m.parameters():
            w = p.data.half().float()
            p.data = torch.where(w.abs() < 2.0 ** -14, torch.zeros_like(w), w)
        errors[half] = np.abs(raw(m) - ref).max()
    assert errors[True] < 0.5 < 1.0 < errors[False], errors


def test_input_scale_exponent():
    assert input_scale_exponent(np.array([0.5, -0.25, 1e-3])) == 0  # nothing subnormal in FP16
    w = np.array([0.08, -1e-6, 3e-5])
    k = input_scale_exponent(w)
    assert 16 <= 0.08 * 2.0 ** k < 32
    assert input_scale_exponent(np.zeros(4)) == 0
