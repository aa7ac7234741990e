"""Training logs across a resume: CSV rows and TensorBoard steps beyond the resumed checkpoint go."""

import pytest

from yolox_deploy.train.metrics_log import TENSORBOARD_DIR, TRAIN_LOG, MetricsLog


def test_a_resume_drops_what_came_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLog(tmp_path)
    for i in range(1, 6):
        first.log_train({"epoch": 1, "iteration": i, "loss": 10.0 - i})
    first.close()  # the run went on to iteration 5; its checkpoint is from iteration 3
    again = MetricsLog(tmp_path)
    again.resume_at(3)
    for i in range(4, 7):
        again.log_train({"epoch": 1, "iteration": i, "loss": 20.0 - i})
    again.close()
    text = (tmp_path / TRAIN_LOG).read_bytes().decode()
    assert "\r" not in text and [line.split(",")[1] for line in text.splitlines()] == ["iteration", *"123456"]
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    steps = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert steps == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 16.0), (5, 15.0), (6, 14.0)]  # no second 4 and 5
