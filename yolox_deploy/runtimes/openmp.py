"""Thread pools that do not survive a fork: GNU OpenMP's, which PyTorch's Linux wheels and NCNN use.

Once a process has run a parallel region on several threads, a process forked from it (``multiprocessing``'s
default start method on Linux up to Python 3.13, a ``Pool`` of workers) hangs for ever in its next one: the
pool's threads were not copied, and the child waits for them. Each runtime keeps one :class:`ForkedPool`: it
records the process in which the runtime's threads started, and in a process forked after that the runtime
runs on one thread (or refuses more, which would hang).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ..errors import InputError

log = logging.getLogger(__name__)


class ForkedPool:
    """Where a runtime's OpenMP threads started, and what that allows in the current process."""

    def __init__(self, runtime: str, in_child: Callable[[], None] | None = None) -> None:
        """``in_child``: called in a process forked after the pool started (e.g. to set the runtime's own
        process-wide thread count to one)."""
        self.runtime = runtime
        self._started_in: int | None = None  # the pid of the process whose parallel region started the pool
        if in_child is not None and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: in_child() if self.inherited else None)

    def started(self, threads: int) -> None:
        """Record a run of the runtime on ``threads`` threads in this process (several start the pool)."""
        if threads > 1 and self._started_in is None:
            self._started_in = os.getpid()

    @property
    def inherited(self) -> bool:
        """True in a process forked after the pool's threads started (in it or in a process it was forked from)."""
        return self._started_in is not None and self._started_in != os.getpid()

    def threads(self, requested: int | None) -> int | None:
        """The thread count a runtime opened now gets: ``requested`` (an integer option, checked by
        ``Backend.check_options``; None or 0: the runtime's choice), or one in a process forked after the pool
        started, where more would hang; asking for more there is refused."""
        requested = int(requested) if requested else None
        if not self.inherited:
            return requested
        if requested and requested > 1:
            raise InputError(self.refusal(f"{requested} threads"))
        if not requested:
            log.info("this process was forked after %s ran on several threads: it runs on one thread here (GNU "
                     "OpenMP's threads do not survive a fork)", self.runtime)
        return 1

    def refusal(self, what: str) -> str:
        """The message for running ``what`` on several threads in a process forked after the pool started."""
        return (f"this process was forked after {self.runtime} ran on several threads, and GNU OpenMP's threads do "
                f"not survive a fork: {what} would hang here; open the Detector in this process with threads=1 "
                "(or leave threads out), or start processes with the spawn method "
                "(multiprocessing.get_context('spawn'))")
