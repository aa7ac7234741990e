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


def test_tensorboard_that_cannot_write_stops_with_a_warning_and_the_csv_goes_on(tmp_path, monkeypatch, caplog):
    """A full disk fails TensorBoard's writer thread: one warning (no thread traceback), the CSV log goes on,
    and closing does not raise it again (it would hide the error that stops training)."""
    pytest.importorskip("tensorboard")
    import errno
    import threading
    import time

    from tensorboard.summary.writer.record_writer import RecordWriter

    seen = []  # what reaches the thread exception hook there was before
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    logs = MetricsLog(tmp_path)
    logs.log_train({"epoch": 1, "iteration": 1, "loss": 1.0})

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordWriter, "write", full)
    i, deadline = 1, time.monotonic() + 30
    with caplog.at_level("WARNING"):
        while logs._tb is not None and time.monotonic() < deadline:  # the thread fails, the next call is told
            i += 1
            logs.log_train({"epoch": 1, "iteration": i, "loss": 1.0})
            time.sleep(0.01)
        assert logs._tb is None
        for k in range(i + 1, i + 4):
            logs.log_train({"epoch": 1, "iteration": k, "loss": 1.0})
        logs.close()
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and TENSORBOARD_DIR in warnings[0]
    text = (tmp_path / TRAIN_LOG).read_text()
    assert [line.split(",")[1] for line in text.splitlines()[1:]] == [str(k) for k in range(1, i + 4)]

    # the writer thread's traceback is left out; any other thread's still reaches the hook
    other = threading.Thread(target=lambda: 1 / 0)
    other.start()
    other.join()
    assert seen == [ZeroDivisionError]
