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


def _loaded(module: str, *, quiet: bool = False) -> Callable[..., int] | None:
    """``module``'s ``main``, imported with Ctrl-C held until the import ends; None when one came meanwhile
    (said as "interrupted" unless ``quiet``)."""
    from ..utils.signals import deferred

    try:
        with deferred():
            return importlib.import_module(module).main
    except KeyboardInterrupt:
        if not quiet:
            print("interrupted", file=sys.stderr)
        return None


def _command(name: str) -> Callable[[], int]:
    def run() -> int:
        main = _loaded(f"yolox_deploy.cli.{name}")
        return INTERRUPTED if main is None else main()

    run.__name__ = name
    return run


def bench_worker(argv: list[str]) -> int:
    """A benchmark row's process (:mod:`yolox_deploy.bench.worker`): a Ctrl-C, which reaches its whole process
    group, exits 130 without a word (the parent says "interrupted"), also while it loads torch."""
    main = _loaded("yolox_deploy.bench.worker", quiet=True)
    if main is None:
        return INTERRUPTED
    try:
        return main(argv)
    except KeyboardInterrupt:
        return INTERRUPTED


detect = _command("detect")
eval = _command("eval")  # noqa: A001 (the command's name)
export = _command("export")
compare = _command("compare")
train = _command("train")
bench = _command("bench")
