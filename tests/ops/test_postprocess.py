import numpy as np
import pytest
import torch

from yolox_deploy.ops.decode import decode
from yolox_deploy.ops.postprocess import _postprocess_torch, postprocess, split_nms_outputs
from yolox_deploy.utils.sizes import num_anchors

from .test_nms import reference_nms


def authors_postprocess(pred: np.ndarray, conf: float, thr: float, agnostic: bool):
    """The authors' per-image postprocess: arg-max class, score = obj * class prob, conf filter, NMS."""
    out = []
    for p in pred.astype(np.float64):
        box = np.concatenate([p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2], axis=1)
        cls_conf, cls = p[:, 5:].max(1), p[:, 5:].argmax(1)
        score = p[:, 4] * cls_conf
        m = score >= conf
        box, score, cls = box[m], score[m], cls[m]
        keep = reference_nms(box, score, thr, None if agnostic else cls)
        out.append((box[keep], score[keep], cls[keep]))
    return out


def make_pred(rng, batch=3, hw=(128, 128), classes=4):
    a = num_anchors(hw)
    raw = np.concatenate([rng.normal(0, 0.5, (batch, a, 2)), rng.normal(0.5, 0.8, (batch, a, 2)),
                          rng.random((batch, a, 1)) ** 3, rng.random((batch, a, classes))], axis=2).astype(np.float32)
    return raw


def test_matches_authors_postprocess(rng):
    raw = make_pred(rng)
    pred = decode(raw, (128, 128))
    for agnostic in (False, True):
        ours = postprocess(pred, 0.2, 0.5, class_agnostic=agnostic)
        ref = authors_postprocess(pred, 0.2, 0.5, agnostic)
        assert len(ours) == 3
        for o, (box, score, cls) in zip(ours, ref):
            np.testing.assert_allclose(o.boxes, box, rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(o.scores, score, rtol=1e-6)
            np.testing.assert_array_equal(o.class_ids, cls)


def test_raw_path_equals_decoded_path(rng):
    raw = make_pred(rng)
    a = postprocess(decode(raw, (128, 128)), 0.1, 0.65)
    b = postprocess(raw, 0.1, 0.65, input_hw=(128, 128))
    for x, y in zip(a, b):  # torch's and numpy's float32 exp may differ in the last bit
        np.testing.assert_allclose(x.boxes, y.boxes, rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(x.class_ids, y.class_ids)


@pytest.mark.parametrize("one_call_max", [2048, 8])  # OpenCV's NMS in one call, and one call per class
def test_numpy_and_torch_paths_agree(rng, monkeypatch, one_call_max):
    """The CPU (numpy) path and the torch path other devices take give the same detections."""
    import yolox_deploy.ops.nms as nms_module

    monkeypatch.setattr(nms_module, "OPENCV_ONE_CALL_MAX", one_call_max)
    raw = make_pred(rng)
    for agnostic in (False, True):
        a = postprocess(raw, 0.1, 0.5, class_agnostic=agnostic, input_hw=(128, 128), max_det=50)
        b = _postprocess_torch(torch.from_numpy(raw), raw, 0.1, 0.5, agnostic, 50, (128, 128), (8, 16, 32))
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.boxes, y.boxes, rtol=1e-6, atol=1e-4)
            np.testing.assert_array_equal(x.scores, y.scores)
            np.testing.assert_array_equal(x.class_ids, y.class_ids)


def test_max_det_and_sorting(rng):
    raw = make_pred(rng, batch=1)
    [r] = postprocess(raw, 0.0, 1.0, input_hw=(128, 128), max_det=7)
    assert len(r.scores) == 7
    assert (np.diff(r.scores) <= 0).all()


def test_torch_input_stays_torch(rng):
    raw = torch.from_numpy(make_pred(rng, batch=2))
    res = postprocess(raw, 0.2, 0.5, input_hw=(128, 128))
    assert all(isinstance(r.boxes, torch.Tensor) for r in res)


def test_nothing_above_threshold(rng):
    raw = make_pred(rng, batch=2)
    res = postprocess(raw, 1.01, 0.5, input_hw=(128, 128))
    assert [len(r.scores) for r in res] == [0, 0]
    assert res[0].boxes.shape == (0, 4)


@pytest.mark.parametrize("kw,message", [
    (dict(max_det=-1), "max_det must be an integer >= 1"),  # it dropped the last detection
    (dict(max_det=0), "max_det must be an integer >= 1"),
    (dict(iou_threshold=-0.1), r"thresholds must be numbers in \[0, 1\]: iou_threshold=-0.1"),  # OpenCV's error
    (dict(pred=[[[0.0] * 7]]), "expected predictions as a numpy array or a torch tensor, got list"),
])
def test_bad_arguments_are_one_message(rng, kw, message):
    from yolox_deploy.errors import InputError

    args = dict(pred=make_pred(rng, batch=1), conf_threshold=0.1, iou_threshold=0.5, input_hw=(128, 128)) | kw
    with pytest.raises(InputError, match=message):
        postprocess(args.pop("pred"), args.pop("conf_threshold"), args.pop("iou_threshold"), **args)


def test_split_nms_outputs():
    num = np.array([[2], [0]], np.int32)
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    scores = np.array([[0.5, 0.9, 0.0], [0, 0, 0]], np.float32)
    labels = np.array([[1, 2, 0], [0, 0, 0]], np.int32)
    a, b = split_nms_outputs(num, boxes, scores, labels)
    np.testing.assert_array_equal(a.scores, np.float32([0.9, 0.5]))
    np.testing.assert_array_equal(a.class_ids, [2, 1])
    np.testing.assert_array_equal(a.boxes, boxes[0, [1, 0]])
    assert len(b.scores) == 0
    padded = np.array([[0.5, -32768.0, 0.9], [0, 0, 0]], np.float32)  # EfficientNMS_TRT's padding, counted
    a, _ = split_nms_outputs(np.array([[3], [0]], np.int32), boxes, padded, labels)
    np.testing.assert_array_equal(a.scores, np.float32([0.9, 0.5]))
    np.testing.assert_array_equal(a.class_ids, [0, 1])


@pytest.mark.parametrize("kind", [float, np.float64, np.float32])
def test_numpy_scalar_thresholds_act_as_floats(kind):
    """A numpy float64 threshold was compared in float64 on the CPU path (float32 elsewhere): a score or an
    IoU equal to the float32 threshold was dropped there and kept by the torch path."""
    # decoded (cx, cy, w, h): A = [0, 0, 10, 10], B = [0, 0, 3, 10] (IoU 0.3 in float32), C empty (numpy NMS)
    p = np.array([[[5, 5, 10, 10, 0.9, 1.0], [1.5, 5, 3, 10, 0.8, 1.0], [50, 50, 0, 0, 0.7, 1.0]]], np.float32)
    for conf, iou in ((kind(0.7), 0.5), (0.1, kind(0.3))):
        [cpu] = postprocess(p, conf, iou)
        [dev] = _postprocess_torch(torch.from_numpy(p), p, conf, iou, False, None, None, (8, 16, 32))
        np.testing.assert_array_equal(cpu.scores, dev.scores)
        np.testing.assert_array_equal(cpu.scores, np.float32([0.9, 0.8, 0.7]))
