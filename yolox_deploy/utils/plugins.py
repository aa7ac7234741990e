"""Importing a registry's built-in modules, remembering why an optional one could not be imported."""

from __future__ import annotations

import importlib


def import_builtins(package: str, names: tuple[str, ...]) -> dict[str, str]:
    """Import ``package.<name>`` for each name (each registers itself); ``{name: reason}`` for those missing.

    Modules import their runtime's package lazily, so importing them needs nothing optional: a module that
    is absent (a trimmed install) is recorded, any other import error propagates.
    """
    errors: dict[str, str] = {}
    for name in names:
        try:
            importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise
            errors[name] = str(e)
    return errors
