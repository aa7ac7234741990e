"""Signal handlers installed for the span of a block."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any


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
