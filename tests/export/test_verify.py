"""Export verification: which anchors the raw-output diff covers, per precision."""

from __future__ import annotations

import numpy as np

from yolox_deploy.export.verify import SCORE_FLOOR, TOLERANCE, VerifyReport, normalised_diff
from yolox_deploy.meta import ModelMeta
from yolox_deploy.ops.match import Agreement


def _head(rng, anchors=3549, classes=3):
    out = np.concatenate([rng.normal(0, 1, (1, anchors, 4)), np.full((1, anchors, 1), 1e-4),
                          np.full((1, anchors, classes), 1e-3)], axis=-1).astype(np.float32)
    return out


def test_score_floor_limits_the_diff_to_anchors_that_can_become_detections(rng):
    meta = ModelMeta.default(3, (416, 416))
    ref = _head(rng)
    ref[0, 10, 4:6] = (0.9, 0.8)  # one confident anchor
    out = ref.copy()
    out[0, 500, 0] += 0.7  # a background anchor moves a lot
    out[0, 10, 1] += 0.05  # the confident one a little
    assert np.isclose(normalised_diff(out, ref, meta), 0.7, atol=1e-6)
    assert np.isclose(normalised_diff(out, ref, meta, SCORE_FLOOR), 0.05, atol=1e-6)
    out[0, 500, 4:6] = (0.5, 0.5)  # ...unless it scores in the artefact's output
    assert normalised_diff(out, ref, meta, SCORE_FLOOR) > 0.4
    assert normalised_diff(ref, ref, meta, 2.0) == 0.0  # no anchor reaches the floor


def test_int8_diff_is_reported_not_checked():
    good = Agreement(5, 5, 5, 0.95)
    report = VerifyReport("int8", 3.0, TOLERANCE["int8"], good, 0.5, "dog.jpg")
    assert report.passed and "not checked" in report.summary()
    assert not VerifyReport("int8", 3.0, TOLERANCE["int8"], Agreement(5, 5, 1, 0.9), 0.5, "dog.jpg").passed
    assert not VerifyReport("fp16", 0.3, TOLERANCE["fp16"], good, 0.8, "dog.jpg").passed
    assert VerifyReport("fp32", 5e-4, TOLERANCE["fp32"], good, 0.99, "dog.jpg").summary().count("tolerance 0.001")
