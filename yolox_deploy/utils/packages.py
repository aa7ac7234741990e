"""Whether an optional package is there: installed (found without importing it) and importable."""

from __future__ import annotations

import importlib
import importlib.util

from .signals import deferred


def missing_reason(package: str | None, needed_for: str, extra: str | None) -> str | None:
    """Why ``package`` cannot serve ``needed_for`` ("the onnxruntime backend"), or None when it is installed.
    Cheap: the package is looked up, not imported."""
    if package is None or importlib.util.find_spec(package) is not None:
        return None
    return f"{needed_for} needs the '{package}' package ({install_hint(package, extra)})"


def import_reason(package: str | None, needed_for: str, extra: str | None) -> str | None:
    """:func:`missing_reason`, and whether the package imports: a broken install or a missing shared library
    fails here with one sentence instead of inside the first call that uses it."""
    reason = missing_reason(package, needed_for, extra)
    if reason is not None or package is None:
        return reason
    try:
        # a Ctrl-C inside a runtime's native start-up came out as its ImportError ("initialization failed"),
        # read as a broken install: it waits for the import and then stops the run as Ctrl-C does
        with deferred():
            importlib.import_module(package)
    except Exception as e:  # ImportError, OSError from a missing shared library, a broken wheel's own errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (f"{needed_for} needs the '{package}' package, which is installed but does not import ({first}); "
                f"reinstall it ({install_hint(package, extra)})")
    return None


def install_hint(package: str, extra: str | None) -> str:
    return f"pip install 'yolox-deploy[{extra}]'" if extra else f"pip install {package}"
