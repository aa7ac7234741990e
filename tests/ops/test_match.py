import numpy as np

from yolox_deploy.ops.match import match_detections


def test_other_classes_never_match_even_at_iou_threshold_zero():
    """Pairs of two classes were given IoU 0, which passes an IoU threshold of 0."""
    a = np.array([[0, 0, 10, 10]], np.float32)
    assert match_detections(a, np.array([0]), a, np.array([1]), 0.0).matched == 0
    assert match_detections(a, np.array([0]), a, np.array([0]), 0.0).matched == 1
