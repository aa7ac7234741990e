"""Project exceptions.

Every error a user can cause (a missing file, a checkpoint for another variant, a runtime that is not
installed, ...) is a :class:`YoloxError` whose message says what is wrong and what to do. The CLIs print
that message as one line on stderr and exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class YoloxError(Exception):
    """Base class of the errors a user can cause; the message is meant to be shown as is."""


class InputError(YoloxError, ValueError):
    """An input (file, image, argument) is missing, unreadable or out of range."""


class CheckpointError(YoloxError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class ArtefactError(YoloxError):
    """An exported artefact is corrupt, incomplete or does not fit the request."""


class BackendUnavailable(YoloxError):
    """An optional runtime or export toolchain is not installed or cannot run on this machine."""


class ExportError(YoloxError):
    """An export failed or its verification did not pass."""


class WriteError(YoloxError):
    """The file system refused to write ``target`` (a full disk, a quota) for ``reason``; nothing of it was kept."""

    def __init__(self, target: object, reason: str) -> None:
        super().__init__(f"could not write {target}: {reason} (no part of it was left)")
        self.target, self.reason = target, reason
