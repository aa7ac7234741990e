import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yolox_deploy.meta import Preprocess
from yolox_deploy.ops.letterbox import letterbox, preprocess_batch, scale_boxes


def authors_preproc(img: np.ndarray, input_size, mean=None, std=None, rgb=False) -> tuple[np.ndarray, float]:
    """The authors' preproc as documented: pad 114, int() sizes, INTER_LINEAR, HWC -> CHW float32."""
    padded = np.ones((input_size[0], input_size[1], 3), dtype=np.uint8) * 114
    r = min(input_size[0] / img.shape[0], input_size[1] / img.shape[1])
    resized = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)), interpolation=cv2.INTER_LINEAR)
    padded[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized
    out = padded.astype(np.float32)
    if rgb:
        out = out[:, :, ::-1] / 255.0
        out = (out - np.array(mean, np.float32)) / np.array(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), r


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (416, 416), (100, 1000), (1000, 37), (7, 5)])
def test_matches_authors_preproc(rng, shape):
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    batch, ratios = preprocess_batch([img], (416, 416))
    ref, r = authors_preproc(img, (416, 416))
    assert ratios[0] == r
    np.testing.assert_array_equal(batch[0], ref)


def test_legacy_contract_matches_authors(rng):
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    legacy = Preprocess.legacy()
    batch, _ = preprocess_batch([img], (320, 320), legacy)
    ref, _ = authors_preproc(img, (320, 320), legacy.mean, legacy.std, rgb=True)
    np.testing.assert_allclose(batch[0], ref, rtol=1e-5, atol=1e-5)


def test_non_square_input_and_batch_padding(rng):
    images = [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)]
    batch, ratios = preprocess_batch(images, (96, 160), batch_size=4)
    assert batch.shape == (4, 3, 96, 160) and batch.dtype == np.float32
    assert ratios.shape == (2,)
    assert (batch[2:] == 114).all()  # padding slots are empty canvases


def test_canvas_is_top_left(rng):
    img = np.zeros((100, 200, 3), np.uint8)
    canvas, r = letterbox(img, (128, 128))
    assert r == 0.64
    assert (canvas[:64, :128] == 0).all() and (canvas[64:] == 114).all()


@settings(max_examples=50, deadline=None)
@given(h=st.integers(8, 2000), w=st.integers(8, 2000), size=st.sampled_from([(416, 416), (640, 640), (320, 480)]),
       seed=st.integers(0, 1000))
def test_boxes_round_trip(h, w, size, seed):
    """A box mapped onto the canvas and back lands where it started."""
    rng = np.random.default_rng(seed)
    x1, x2 = np.sort(rng.uniform(0, w, 2))
    y1, y2 = np.sort(rng.uniform(0, h, 2))
    box = np.array([[x1, y1, x2, y2]], np.float32)
    r = min(size[0] / h, size[1] / w)
    on_canvas = box * r
    back = scale_boxes(on_canvas, r, (h, w))
    np.testing.assert_allclose(back, box, rtol=1e-4, atol=1e-3)


def test_scale_back_clips_only_when_asked():
    box = np.array([[-10, -5, 500, 300]], np.float32)
    np.testing.assert_array_equal(scale_boxes(box, 1.0, (200, 400)), [[0, 0, 400, 200]])
    np.testing.assert_array_equal(scale_boxes(box, 1.0, None), box)


@pytest.mark.parametrize("contract", [Preprocess(), Preprocess.legacy()])
def test_canvas_to_tensor_equals_numpy_model_input(rng, contract):
    """The device-side conversion of canvases (torch) gives the numpy model input, both contracts."""
    from yolox_deploy.ops.letterbox import canvas_to_tensor, letterbox_batch, to_model_input

    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), rng.integers(0, 256, (90, 40, 3), dtype=np.uint8)]
    canvases, _ = letterbox_batch(images, (64, 96))
    want = to_model_input(canvases, contract)
    got = canvas_to_tensor(canvases, contract, "cpu").numpy()
    assert got.shape == want.shape == (2, 3, 64, 96)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("image,pad,message", [
    (np.full((40, 60, 3), 0.8, np.float32), 114, "got float32 40x60x3"),  # a black canvas, without a word
    (np.zeros((40, 60), np.uint8), 114, "got uint8 40x60 "),  # numpy's broadcast error
    (np.zeros((40, 60, 4), np.uint8), 114, "got uint8 40x60x4"),
    (np.zeros((0, 60, 3), np.uint8), 114, "got uint8 0x60x3"),  # ZeroDivisionError
    ("image.jpg", 114, "got str"),
    (np.zeros((4, 6, 3), np.uint8), 300, "the pad value is a uint8 level"),  # OverflowError
])
def test_letterbox_refuses_what_it_cannot_place(image, pad, message):
    from yolox_deploy.errors import InputError

    with pytest.raises(InputError, match=message):
        letterbox(image, (64, 96), pad)
