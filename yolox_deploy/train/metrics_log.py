"""Training logs: ``train_log.csv`` (one row per iteration), ``eval_log.csv`` (one row per evaluation) and,
when the ``tensorboard`` package is installed (``pip install 'yolox-deploy[train]'``), TensorBoard events.

Rows are appended whole (one ``write`` + flush each); on resume the rows past the resumed iteration are
dropped (the file is rewritten atomically) so the log never holds the same iteration twice.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..utils.files import missing_folders, remove_empty_folders, write_text_atomic

log = logging.getLogger(__name__)


class CsvLog:
    """An append-only CSV file with a fixed header (from the first row written)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fields: list[str] | None = None
        if self.path.exists():
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), None)
            self._fields = header or None

    def write(self, row: Mapping[str, Any]) -> None:
        if self._fields is None:
            self._fields = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, _csv_text([self._fields]))
        buf = _csv_text([[_fmt(row.get(k, "")) for k in self._fields]])
        with self.path.open("a", newline="") as f:
            f.write(buf)
            f.flush()

    def truncate_after(self, iteration: int) -> None:
        """Drop rows whose ``iteration`` column exceeds ``iteration``."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "iteration" not in rows[0]:
            return
        col = rows[0].index("iteration")
        kept = [rows[0]] + [r for r in rows[1:] if len(r) > col and r[col] and int(float(r[col])) <= iteration]
        write_text_atomic(self.path, _csv_text(kept))


def _csv_text(rows: list[list[Any]]) -> str:
    """CSV lines ending in LF (the csv module's default is CRLF)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


TRAIN_LOG, EVAL_LOG, TENSORBOARD_DIR = "train_log.csv", "eval_log.csv", "tensorboard"
LOG_FILES = (TRAIN_LOG, EVAL_LOG)


class MetricsLog:
    """CSV logs plus optional TensorBoard, written by the main process only."""

    def __init__(self, folder: Path, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.train = CsvLog(self.folder / TRAIN_LOG)
        self.eval = CsvLog(self.folder / EVAL_LOG)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("TensorBoard logging off: install it with pip install 'yolox-deploy[train]'")
            else:
                made = missing_folders(self.folder / TENSORBOARD_DIR)
                try:
                    self._tb = SummaryWriter(str(self.folder / TENSORBOARD_DIR))
                except BaseException:  # a full disk: what it made would read as a run's files to the next start
                    if made:
                        shutil.rmtree(made[0], ignore_errors=True)
                        remove_empty_folders(made[1:])
                    raise
                _quiet_writer_threads()

    def resume_at(self, iteration: int, evaluated_through: int | None = None) -> None:
        """Continue after ``iteration``: rows logged beyond it (by the run that went on past the checkpoint
        resumed) are dropped from the CSV files, and TensorBoard hides its events beyond it. Evaluations beyond
        ``evaluated_through`` (the last closed epoch's end: an epoch whose end the resume does again) go too."""
        self.train.truncate_after(iteration)
        self.eval.truncate_after(iteration if evaluated_through is None else min(iteration, evaluated_through))
        if self._tb is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.close()
            with self._tensorboard():
                self._tb = SummaryWriter(str(self.folder / TENSORBOARD_DIR), purge_step=iteration + 1)

    def log_train(self, row: Mapping[str, Any]) -> None:
        self._log(self.train, "train", row)

    def log_eval(self, row: Mapping[str, Any]) -> None:
        self._log(self.eval, "val", row)

    def _log(self, table: CsvLog, tag: str, row: Mapping[str, Any]) -> None:
        """One CSV row, and its numbers as TensorBoard scalars under ``tag/`` at the row's iteration."""
        table.write(row)
        if self._tb is not None:
            step = int(row["iteration"])
            with self._tensorboard():
                for k, v in row.items():
                    if k not in ("epoch", "iteration") and isinstance(v, (int, float)):
                        self._tb.add_scalar(f"{tag}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            with self._tensorboard():
                self._tb.close()
            self._tb = None

    @contextlib.contextmanager
    def _tensorboard(self) -> Iterator[None]:
        """TensorBoard events are a view of the CSV logs: when they cannot be written (a full disk, a folder
        removed), TensorBoard stops with one warning and training goes on with the CSV logs (a checkpoint that
        cannot be written stops it with its own message)."""
        try:
            yield
        except OSError as e:
            tb, self._tb = self._tb, None
            if tb is not None:
                with contextlib.suppress(OSError):
                    tb.close()  # its writer thread has stopped; the file is closed, nothing more is written
            log.warning("TensorBoard logging stopped: could not write to %s (%s); %s and %s go on",
                        self.folder / TENSORBOARD_DIR, e.strerror or e, TRAIN_LOG, EVAL_LOG)

    def discard(self) -> None:
        """Close and delete the logs (a run that failed before its first checkpoint leaves nothing behind)."""
        self.close()
        for log_file in (self.train.path, self.eval.path):
            log_file.unlink(missing_ok=True)
        shutil.rmtree(self.folder / TENSORBOARD_DIR, ignore_errors=True)


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread prints its own traceback when a write fails, then hands the error to the
    next call from the training loop, which reports it (:meth:`MetricsLog._tensorboard`): that thread's
    traceback is left out; every other thread's goes to the hook there was before (wrapped again only when
    something has replaced this wrapper since)."""
    previous = threading.excepthook
    if getattr(previous, "skips_tensorboard_writer", False):
        return
    try:
        from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
    except ImportError:  # another TensorBoard layout: its tracebacks stay
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError)):
            previous(args)

    hook.skips_tensorboard_writer = True  # type: ignore[attr-defined]
    threading.excepthook = hook
