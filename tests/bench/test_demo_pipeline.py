"""The authors' ONNX Runtime demo stages, re-implemented as a baseline."""

from __future__ import annotations

import numpy as np
import pytest

from yolox_deploy.bench.demo_pipeline import (
    DemoPipeline,
    demo_decode,
    demo_multiclass_nms,
    demo_nms,
    demo_postprocess,
    demo_preproc,
)


def test_preproc_letterboxes_top_left_on_114(rng):
    image = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)
    blob, r = demo_preproc(image, (416, 416))
    assert blob.shape == (3, 416, 416) and blob.dtype == np.float32 and blob.flags.c_contiguous
    assert r == pytest.approx(416 / 200)
    assert (blob[:, 208:, :] == 114).all()     # below the resized image: padding
    assert (blob[:, :208, :] != 114).any()


def test_preproc_matches_the_shared_letterbox(rng):
    from yolox_deploy.ops.letterbox import preprocess_batch

    image = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
    blob, r = demo_preproc(image, (416, 416))
    ours, ratios = preprocess_batch([image], (416, 416))
    np.testing.assert_array_equal(blob, ours[0])
    assert r == pytest.approx(ratios[0])


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], dtype=np.float32)
    assert demo_nms(boxes, scores, 0.45) == [3, 2]
    assert demo_nms(boxes, scores, 0.99) == [3, 0, 1, 2]


def test_multiclass_nms_is_class_agnostic_and_thresholded():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([[0.9, 0.0], [0.0, 0.8], [0.05, 0.02]], dtype=np.float32)
    dets = demo_multiclass_nms(boxes, scores, 0.45, 0.1)
    assert dets.shape == (1, 6)
    np.testing.assert_allclose(dets[0], [0, 0, 10, 10, 0.9, 0])   # box 1 (other class) suppressed anyway
    assert demo_multiclass_nms(boxes, scores * 0.01, 0.45, 0.1).shape == (0, 6)


def test_decode_matches_the_shared_decode(rng):
    import torch

    from yolox_deploy.ops.decode import decode

    raw = rng.normal(0, 1, (1, 52 * 52 + 26 * 26 + 13 * 13, 85)).astype(np.float32)
    ours = decode(torch.from_numpy(raw.copy()), (416, 416)).numpy()
    theirs = demo_decode(raw.copy(), (416, 416))
    np.testing.assert_allclose(theirs[..., :4], ours[..., :4], rtol=1e-5, atol=1e-3)


def test_postprocess_boxes_are_in_image_pixels():
    raw = np.zeros((1, 52 * 52 + 26 * 26 + 13 * 13, 6), dtype=np.float32)
    raw[0, 0, :] = [0.5, 0.5, np.log(4.0), np.log(4.0), 0.9, 0.9]   # cell (0, 0), stride 8: centre 4, size 32
    dets = demo_postprocess(raw, 0.5, (416, 416))
    assert dets.shape == (1, 6)
    np.testing.assert_allclose(dets[0, :4], [(4 - 16) / 0.5, (4 - 16) / 0.5, (4 + 16) / 0.5, (4 + 16) / 0.5])
    assert dets[0, 4] == pytest.approx(0.81)


def test_demo_pipeline_on_the_authors_onnx_agrees_with_the_detector(nano_onnx, nano_pth, dog_jpg):
    pytest.importorskip("onnxruntime")
    from yolox_deploy import Detector
    from yolox_deploy.io.images import read_image
    from yolox_deploy.ops.match import match_detections

    image = read_image(dog_jpg)
    demo = DemoPipeline(nano_onnx)
    assert demo.input_hw == (416, 416)
    theirs = demo(image)
    assert len(theirs) >= 3
    with Detector(nano_pth, conf=0.1, nms=0.45, class_agnostic=True, max_det=None, clip=False) as det:
        [ours] = det(image)
    a = match_detections(theirs[:, :4], theirs[:, 5].astype(np.int64), ours.xyxy, ours.class_ids)
    assert a.agreement >= 0.9 and a.mean_iou > 0.95


def test_demo_pipeline_refuses_batches(nano_onnx):
    pytest.importorskip("onnxruntime")
    from yolox_deploy.errors import InputError

    demo = DemoPipeline(nano_onnx)
    with pytest.raises(InputError):
        demo.preprocess([np.zeros((8, 8, 3), np.uint8)] * 2)


def test_the_demo_session_takes_the_runs_thread_count(nano_onnx):
    """With --threads 1 our side ran on one thread and the demo on ONNX Runtime's default."""
    pytest.importorskip("onnxruntime")
    assert DemoPipeline(nano_onnx, threads=1).session.get_session_options().intra_op_num_threads == 1
    assert DemoPipeline(nano_onnx).session.get_session_options().intra_op_num_threads == 0  # the runtime's own
