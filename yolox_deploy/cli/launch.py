"""The console commands' entry points: each loads its command with Ctrl-C held until the load ends.

A command's module imports torch, numpy and OpenCV (one to two seconds); a Ctrl-C in that time would end in
Python's traceback before the command's own handling (:func:`~yolox_deploy.cli.common.cli_entry`) is in
place, or, raised inside torch's native start-up, abort the process. It is held (as SIGTERM is) and acted on
once the import is done. This module imports nothing heavy (``import yolox_deploy`` is light too).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

INTERRUPTED = 130


def _command(name: str) -> Callable[[], int]:
    def run() -> int:
        from ..utils.signals import deferred

        try:
            with deferred():
                main = importlib.import_module(f"yolox_deploy.cli.{name}").main
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED
        return main()

    run.__name__ = name
    return run


detect = _command("detect")
eval = _command("eval")  # noqa: A001 (the command's name)
export = _command("export")
compare = _command("compare")
train = _command("train")
bench = _command("bench")
