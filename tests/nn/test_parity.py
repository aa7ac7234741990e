"""The shared official-format checkpoint reproduces the authors' released ONNX."""

import numpy as np
import pytest
import torch

from yolox_deploy.io.images import read_image
from yolox_deploy.ops.letterbox import preprocess_batch


@pytest.mark.parametrize("fused", [False, True])
def test_nano_pth_reproduces_authors_onnx(nano_model, nano_onnx, dog_jpg, fused):
    ort = pytest.importorskip("onnxruntime")
    import copy

    batch, _ = preprocess_batch([read_image(dog_jpg)], (416, 416))
    session = ort.InferenceSession(str(nano_onnx), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"images": batch})[0]
    model = copy.deepcopy(nano_model).eval()
    if fused:
        model.fuse()
    model.head.decode_in_inference = False
    with torch.inference_mode():
        out = model(torch.from_numpy(batch)).numpy()
    assert out.shape == ref.shape == (1, 3549, 85)
    assert np.abs(out - ref).max() < 1e-3
