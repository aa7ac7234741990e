"""Atomic writes: an output appears whole or not at all, and an existing one is not clobbered by accident."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ..errors import ArtefactError, InputError, WriteError
from .signals import deferred


def cache_dir() -> Path:
    """Where downloaded weights and build caches live: ``$YOLOX_DEPLOY_CACHE`` (``~`` expanded, a relative path
    taken from the current folder once, as an absolute path), else ``$XDG_CACHE_HOME/yolox-deploy`` (an
    absolute one only, as the XDG specification has it), else ``~/.cache/yolox-deploy``."""
    if os.environ.get("YOLOX_DEPLOY_CACHE"):
        try:
            return Path(os.environ["YOLOX_DEPLOY_CACHE"]).expanduser().absolute()
        except RuntimeError:  # ~name of no user here
            raise InputError(f"$YOLOX_DEPLOY_CACHE {os.environ['YOLOX_DEPLOY_CACHE']} names the home folder of "
                             "a user unknown here; give the folder's path") from None
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "yolox-deploy"
    try:
        return Path.home() / ".cache" / "yolox-deploy"
    except RuntimeError:  # no $HOME and a user without a passwd entry (a container's arbitrary uid)
        raise InputError("the cache folder cannot be found: there is no home folder; set $YOLOX_DEPLOY_CACHE "
                         "(or $XDG_CACHE_HOME)") from None


def file_sha256(path: str | os.PathLike) -> Any:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks), as a hash object (``hexdigest()``, or more
    ``update()`` for a key that covers more than the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def check_readable(*paths: str | os.PathLike) -> None:
    """Refuse an artefact file this process may not read (permissions) with :class:`ArtefactError` naming it,
    before a runtime reports it as a damaged model."""
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ArtefactError(f"cannot read {path}: {e.strerror or e}") from None


def is_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` is written as a stream rather than replaced by a new file: the process's standard
    streams (``/dev/stdout``, ``/dev/fd/N``, whatever they are connected to) or anything that exists and is no
    regular file or folder (a named pipe, a terminal, a device)."""
    text = os.path.abspath(path)
    if text in ("/dev/stdout", "/dev/stderr") or text.startswith(("/dev/fd/", "/proc/self/fd/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def standard_stream(path: str | os.PathLike) -> TextIO | None:
    """``sys.stdout`` (or ``sys.stderr``) when ``path`` is where it writes (``/dev/stdout``, ``/dev/fd/1``, the
    file or pipe it was redirected to), else None. Text for it goes through it: a second handle on the same
    file would write at its own position, over or under what the stream writes."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    for stream in (sys.stdout, sys.stderr):
        try:
            if os.path.samestat(target, os.fstat(stream.fileno())):
                return stream
        except (AttributeError, OSError, ValueError):  # replaced by an object without a file (a test's capture)
            continue
    return None


def check_creatable(path: str | os.PathLike) -> None:
    """Refuse, before any work, a ``path`` that cannot be created: the nearest existing folder above it must be
    a folder we may write in (not a file, not read-only)."""
    p = Path(path)
    above = next(a for a in p.absolute().parents if os.path.lexists(a))
    if not above.exists():  # a symbolic link to nothing: no folder can be made through it
        raise InputError(f"cannot write to {p.parent}: {above} is a symbolic link to {os.readlink(above)}, which "
                         "does not exist")
    if not above.is_dir():
        raise InputError(f"cannot write to {p.parent}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {p.parent}: permission denied")


def check_folder_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work, a folder that cannot be written into: a file of that name, a read-only folder,
    or (when it does not exist yet) a place where it cannot be created."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise InputError(f"{p} is a symbolic link to {os.readlink(p)}, which does not exist; give a folder to write into")
    if p.exists() and not p.is_dir():
        raise InputError(f"{p} is a file, not a folder; give a folder to write into")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"cannot write into {p}: not writable")
    else:
        check_creatable(p)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE, _DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()  # what open() / mkdir() would give


def temp_prefix(name: str, keep_bytes: int = 200) -> str:
    """``.NAME.`` for a temporary entry beside ``NAME``, with ``NAME`` cut to ``keep_bytes`` of UTF-8 so that the
    random part and suffix added to it stay within the 255 bytes of a file name (any name that fits may be asked
    for)."""
    return "." + name.encode()[:keep_bytes].decode(errors="ignore") + "."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; on success it replaces ``path`` in one rename.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is untouched.
    A symbolic link is followed (the file it points to is replaced, the link stays); a stream (``/dev/stdout``,
    a named pipe: :func:`is_stream`) is yielded as it is and written directly.
    """
    if is_stream(path):
        yield Path(path)
        return
    dest = Path(os.path.realpath(path))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest.name), suffix=".part", dir=dest.parent)
    except OSError as e:  # named after the file asked for, not the temporary one (a folder no file can be made in)
        raise WriteError(dest, e.strerror or str(e)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files; the result should have the usual permissions
    except OSError:
        tmp_path.unlink(missing_ok=True)
        raise
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        reason = refusal(e, tmp_path)
        if reason is not None:
            raise WriteError(dest, reason) from None
        raise


STALE_STAGING_SECONDS = 24 * 3600  # a staging folder nothing was written in for a day: its run was killed


def remove_stale_parts(folder: Path, pattern: str, age: float) -> None:
    """Remove the temporary files matching ``pattern`` (a glob, e.g. ``.NAME.*.part``: what :func:`atomic_write`
    leaves when its process is killed) in ``folder`` that were not written to for ``age`` seconds (a write under
    way changes its own every moment); and so the staging folders (:func:`staging_folder`) nothing in which was
    written to for that long."""
    now = time.time()
    for part in Path(folder).glob(pattern):
        with contextlib.suppress(OSError):
            if part.is_dir() and not part.is_symlink():
                if now - max(p.lstat().st_mtime for p in (part, *part.rglob("*"))) > age:
                    shutil.rmtree(part)
            elif now - part.stat().st_mtime > age:
                part.unlink()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``folder`` itself for the block: processes sharing it (a
    cache) take turns, and nothing is written for the lock. ``waiting``: logged when another process holds it.
    Where locks are not available (no ``fcntl``, a file system without them), the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                logging.getLogger(__name__).info("%s", waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def staging_folder(folder: str | os.PathLike, prefix: str = ".staging.",
                   target: str | os.PathLike | None = None) -> Iterator[Path]:
    """A temporary folder inside ``folder`` (made, with its parents, when missing) to write a run's results into
    before :func:`move_into` puts them in place. Removed afterwards; when the block fails, the folders made for
    it are removed too, so a failed run leaves nothing. When it fails because the file system refused a write
    (:func:`refusal`: a full disk, or an error on a temporary path the user never named), the error is
    a :class:`~yolox_deploy.errors.WriteError` naming ``target`` (what the block writes; default ``folder``)."""
    folder = Path(folder)
    created = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".part", dir=folder))
    except OSError as e:
        remove_empty_folders(created)
        raise InputError(f"cannot write to {folder}: {e.strerror or e}") from None
    try:
        yield staging
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(created)
        reason = refusal(e, staging)
        if reason is not None:
            raise WriteError(target or folder, reason) from None
        raise
    shutil.rmtree(staging, ignore_errors=True)


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def refusal(e: BaseException, inside: Path) -> str | None:
    """Why the file system refused a write to ``inside`` (a temporary file or folder the user never named), or
    None when ``e`` is no such refusal. Refusals: a full disk or quota (a failed write names no file), any
    OSError on that path or in it, and a :class:`WriteError` for a path in it (a write nested in this one)."""
    if isinstance(e, WriteError):
        return e.reason if _is_in(e.target, inside) else None
    if not isinstance(e, OSError):
        return None
    if e.filename is None:
        return e.strerror if e.errno in _DISK_FULL else None
    return (e.strerror or str(e)) if _is_in(e.filename, inside) else None


def _is_in(name: object, folder: Path) -> bool:
    """Whether the path ``name`` lies in ``folder``, however either is spelled (relative, through a link)."""
    if not isinstance(name, (str, bytes, os.PathLike)):
        return False
    return Path(os.path.realpath(os.fsdecode(name))).is_relative_to(os.path.realpath(folder))


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist yet, deepest first: what making it creates, and what
    :func:`remove_empty_folders` takes away again when the work it was made for fails."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def move_into(produced: list[Path], folder: Path) -> list[Path]:
    """Move staged files and folders into ``folder``, replacing existing entries of the same kind (a file by a
    file, a folder by a folder) only; nothing moves when one would replace the other kind. Ctrl-C or SIGTERM
    waits until all have moved (a run's results are in place whole or not at all). Returns the new paths."""
    final = [folder / p.name for p in produced]
    for p, dest in zip(produced, final):
        if dest.exists() and dest.is_dir() != p.is_dir():
            raise InputError(f"{dest} is {'a folder' if dest.is_dir() else 'a file'}, where "
                             f"{'a folder' if p.is_dir() else 'a file'} was to be written; nothing written")
    with deferred():
        for p, dest in zip(produced, final):
            replace_entry(p, dest)
    return final


ASIDE = ".{name}.{tag}.old"  # where an entry being replaced steps aside to; tag: ASIDE_TAG_BYTES random bytes, hex
ASIDE_TAG_BYTES = 4
# bytes in the name of an entry replace_entry can replace: the usual file systems' 255, less what the aside adds
REPLACEABLE_NAME_MAX = 255 - len(ASIDE.format(name="", tag="00" * ASIDE_TAG_BYTES))


def too_long_to_replace(name: str) -> bool:
    """Whether an entry of this name is too long for :func:`replace_entry` to move aside (:data:`REPLACEABLE_NAME_MAX`)."""
    return len(name.encode("utf-8", "surrogateescape")) > REPLACEABLE_NAME_MAX


def _aside_name(dest: Path) -> Path:
    """:data:`ASIDE` beside ``dest``, a name nothing else in the folder has."""
    while True:
        aside = dest.with_name(ASIDE.format(name=dest.name, tag=secrets.token_hex(ASIDE_TAG_BYTES)))
        if not (aside.exists() or aside.is_symlink()):
            return aside


def replace_entry(src: Path, dest: Path) -> None:
    """Rename ``src`` (a file or folder) to ``dest`` in the same folder, replacing what is there. The old entry
    steps aside (one rename) until the new one is in place, so an interruption between the two renames loses
    neither: the old one is put back, or is still beside it as ``.NAME.<random>.old`` (a name of its own, so
    that nothing else in the folder is touched)."""
    if not (dest.exists() or dest.is_symlink()):
        os.replace(src, dest)
        return
    aside = _aside_name(dest)
    os.replace(dest, aside)
    try:
        os.replace(src, dest)
    except BaseException:
        os.replace(aside, dest)
        raise
    remove_entry(aside)


def remove_entry(path: Path) -> None:
    """Delete a file, a link or a folder tree at ``path``, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically; a stream (:func:`is_stream`) is written through (the process's own
    stdout or stderr when it is one of them: :func:`standard_stream`)."""
    with atomic_write(path) as tmp:
        streaming = is_stream(tmp)
        stream = standard_stream(tmp) if streaming else None
        if stream is not None:
            stream.write(text)
            stream.flush()
        else:
            with open(tmp, "a" if streaming else "w") as f:
                f.write(text)
    return Path(path)


def json_ready(obj: Any) -> Any:
    """Replace NaN / inf (not valid JSON) by ``None``, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON: NaN and infinities (a class without ground truth has no AP) become ``null``."""
    return json.dumps(json_ready(obj), indent=indent, allow_nan=False, default=str)
