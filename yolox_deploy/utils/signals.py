"""Signal handlers installed for the span of a block."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def handling(signals: Sequence[signal.Signals], handler: Callable[[int, Any], Any]) -> Iterator[None]:
    """Within the block ``handler`` receives ``signals``; the previous handlers come back afterwards. Outside
    the main thread (where Python runs no signal handlers, and cannot install them) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = [signal.signal(sig, handler) for sig in signals]
    try:
        yield
    finally:
        for sig, old in zip(signals, previous):
            signal.signal(sig, old)


@contextlib.contextmanager
def deferred(signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM), *,
             insist: bool = False) -> Iterator[None]:
    """Within the block ``signals`` wait: one that arrives is delivered again, to the handler before the block,
    when it ends (however it ends; SIGTERM ahead of SIGINT when both came). For short steps that must not stop
    halfway (moving a run's results into place and recording them). With ``insist`` a second SIGINT (Ctrl-C
    pressed again) raises KeyboardInterrupt at once: for a long native call that swallows the first one."""
    received: set[int] = set()

    def hold(sig: int, frame: Any) -> None:
        if insist and sig == signal.SIGINT and sig in received:
            raise KeyboardInterrupt
        received.add(sig)

    try:
        with handling(signals, hold):
            yield
    finally:
        for sig in sorted(received, key=lambda s: s != signal.SIGTERM):
            signal.raise_signal(sig)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``) arrived: unwinds as Ctrl-C does, so partial outputs
    are removed (or, where Ctrl-C keeps them, kept) on the way out; a CLI exits 143 for it, 130 for Ctrl-C."""


def interruption(signum: int | None) -> KeyboardInterrupt:
    """The exception that stands for ``signum``: :class:`Terminated` for SIGTERM, KeyboardInterrupt otherwise."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class StopRequest:
    """Set by :func:`stop_between_steps` when a stop was asked for; a loop reads ``requested`` between steps
    and stops with :meth:`stop`."""

    requested: bool = False
    signum: int | None = None  # the signal that asked

    def stop(self) -> None:
        """Raise what the signal that asked stands for (:func:`interruption`)."""
        raise interruption(self.signum)


@contextlib.contextmanager
def stop_between_steps(signals: Sequence[signal.Signals], notice: str) -> Iterator[StopRequest]:
    """Within the block the first of ``signals`` only asks to stop: the request's ``requested`` becomes True and
    ``notice`` is logged, for the loop to stop where its state is whole. A second one raises KeyboardInterrupt
    at once. Processes forked inside the block ignore them (their parent stops them). Outside the main thread
    nothing changes (Ctrl-C interrupts as usual). SIGTERM raises :class:`Terminated`."""
    request = StopRequest()
    pid = os.getpid()

    def ask_to_stop(signum: int, frame: object) -> None:
        if os.getpid() != pid:
            return
        if request.requested:
            raise interruption(signum)
        request.requested, request.signum = True, signum
        log.warning(notice)

    with handling(signals, ask_to_stop):
        yield request
