import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from yolox_deploy.ops.decode import WH_LOGIT_MAX, decode
from yolox_deploy.utils.sizes import level_shapes, num_anchors


def loop_decode(raw: np.ndarray, input_hw, strides=(8, 16, 32)) -> np.ndarray:
    """Per-cell reference of the authors' decode (no clamp)."""
    out = raw.astype(np.float64).copy()
    a = 0
    for s in strides:
        for gy in range(input_hw[0] // s):
            for gx in range(input_hw[1] // s):
                out[..., a, 0] = (raw[..., a, 0] + gx) * s
                out[..., a, 1] = (raw[..., a, 1] + gy) * s
                out[..., a, 2] = np.exp(raw[..., a, 2]) * s
                out[..., a, 3] = np.exp(raw[..., a, 3]) * s
                a += 1
    return out


def test_matches_per_cell_reference(rng):
    hw = (64, 96)
    raw = rng.normal(0, 1, (2, num_anchors(hw), 7)).astype(np.float32)
    got = decode(raw, hw)
    assert isinstance(got, np.ndarray) and got.shape == raw.shape
    np.testing.assert_allclose(got, loop_decode(raw, hw), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got[..., 4:], raw[..., 4:])


def test_anchor_counts():
    assert num_anchors((416, 416)) == 3549
    assert num_anchors((640, 640)) == 8400
    assert level_shapes((640, 480)) == [(80, 60), (40, 30), (20, 15)]


def test_wrong_anchor_count_is_reported(rng):
    import pytest

    with pytest.raises(ValueError, match="3549"):
        decode(np.zeros((1, 100, 85), np.float32), (416, 416))


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.one_of(st.floats(allow_nan=False), st.sampled_from([np.inf, -np.inf, 1e38, -1e38])),
                       min_size=4, max_size=4))
def test_extreme_logits_stay_finite(values):
    raw = np.zeros((1, num_anchors((64, 64)), 6), np.float32)
    raw[0, :, :4] = np.asarray(values, np.float64).clip(-3e38, 3e38).astype(np.float32)
    for dtype in (torch.float32, torch.float16):
        out = decode(torch.from_numpy(raw).to(dtype), (64, 64))
        assert out.dtype == dtype
        assert torch.isfinite(out).all(), (values, dtype)


def test_clamp_only_touches_absurd_sizes():
    raw = np.zeros((1, num_anchors((64, 64)), 6), np.float32)
    raw[0, 0, 2] = 5.0  # a box of exp(5) * 8 = 1187 px on the finest level: untouched
    raw[0, 1, 2] = 50.0
    out = decode(raw, (64, 64))
    assert out[0, 0, 2] == np.float32(np.exp(np.float32(5.0)) * 8)
    assert out[0, 1, 2] == np.float32(np.exp(np.float32(WH_LOGIT_MAX)) * 8)


def test_encode_inverts_decode(rng):
    from yolox_deploy.ops.decode import encode

    hw = (96, 64)
    raw = rng.normal(0, 1, (2, num_anchors(hw), 6)).astype(np.float32)
    np.testing.assert_allclose(encode(decode(raw, hw), hw), raw, atol=1e-4)
