"""The authors' released COCO checkpoints, fetched on first use into the cache and checked before they are kept.

``Detector("yolox-s")``, ``export("yolox_s.pth", ...)`` or ``yolox-export --weights yolox-s`` with no such file
at hand take the checkpoint from the authors' release (:data:`~yolox_deploy.zoo.RELEASE_URL`, or the mirror
in ``$YOLOX_DEPLOY_WEIGHTS_URL``: an address or a folder) into ``<cache>/weights/``
(:func:`~yolox_deploy.utils.files.cache_dir`).
A download is written beside its final name and renamed into place only once it is complete (its length is
the one the server announced) and it is the checkpoint of that variant (read with ``weights_only=True``, its
state dict fits the variant's 80-class module tree): an interrupted or wrong download leaves nothing behind.
"""

from __future__ import annotations

import glob
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import CheckpointError, InputError
from .utils.files import (
    atomic_write,
    cache_dir,
    folder_lock,
    missing_folders,
    remove_empty_folders,
    remove_stale_parts,
    temp_prefix,
)
from .zoo import RELEASE_URL, VARIANTS, canonical_name

log = logging.getLogger(__name__)

MIRROR_ENV = "YOLOX_DEPLOY_WEIGHTS_URL"
CHUNK = 1 << 20
STALE_PART_SECONDS = 3600.0  # a download's temporary file unchanged this long was left by a killed process


def release_url() -> str:
    """Where the checkpoints are fetched from: ``$YOLOX_DEPLOY_WEIGHTS_URL`` (a mirror), else the authors' release."""
    return (os.environ.get(MIRROR_ENV) or RELEASE_URL).rstrip("/")


def weights_folder() -> Path:
    """Where fetched checkpoints are kept: ``<cache>/weights``."""
    return cache_dir() / "weights"


def released_variant(weights: object) -> str | None:
    """The variant that ``weights`` names when it is a bare released name rather than a file: ``"yolox-s"``,
    ``"yolox_s"``, ``"YOLOX-S"``, ``"yolox_s.pth"`` (no folder part, and no file or folder of that name here);
    else None. A short name (``"s"``, ``"tiny"``) is never taken for one: it may be a missing file's."""
    if not isinstance(weights, (str, os.PathLike)):
        return None
    text = os.fspath(weights)
    if not text or Path(text).exists() or os.sep in text or (os.altsep and os.altsep in text):
        return None
    by_file = {spec.weights_file: name for name, spec in VARIANTS.items()}
    if text in by_file:
        return by_file[text]
    if Path(text).suffix or not text.lower().startswith(("yolox-", "yolox_")):
        return None
    try:
        return canonical_name(text)
    except InputError:
        return None


def resolve_weights(weights: object, *, model: str | None = None, progress: bool = True) -> object:
    """``weights`` as given, or, for a bare released name (:func:`released_variant`), the path of that
    checkpoint in the cache (fetched first when it is not there yet). ``model``: the variant the caller builds;
    a released name of another variant is refused before anything is fetched."""
    name = released_variant_for(weights, model)
    return weights if name is None else fetch_weights(name, progress=progress)


def released_variant_for(weights: object, model: str | None) -> str | None:
    """:func:`released_variant` of ``weights``; raises :class:`InputError` when that is another variant than
    ``model`` (when given): its checkpoint cannot load into ``model``, so it is not worth fetching."""
    name = released_variant(weights)
    if name is not None and model is not None and canonical_name(model) != name:
        raise InputError(f"{weights} names the released {name} weights, which do not fit {canonical_name(model)}; "
                         f"give --model {name}, or {canonical_name(model)}'s weights")
    return name


def fetch_weights(model: str, *, root: str | os.PathLike | None = None, url: str | None = None,
                  timeout: float = 30.0, progress: bool = True) -> Path:
    """The authors' checkpoint of ``model`` in ``root`` (default :func:`weights_folder`), downloaded from ``url``
    (default :func:`release_url`) when it is not there yet. Raises :class:`InputError` when it cannot be
    fetched and :class:`CheckpointError` when what arrived is not that checkpoint; nothing is left behind."""
    name = canonical_name(model)
    spec = VARIANTS[name]
    folder = Path(root) if root is not None else weights_folder()
    dest = folder / spec.weights_file
    if dest.is_file():
        return dest
    base = url or release_url()
    if "://" not in base:  # a folder (a mounted share, a copy of the release)
        base = Path(base).expanduser().resolve().as_uri()
    source = f"{base.rstrip('/')}/{spec.weights_file}"
    created = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty_folders(created)
        raise InputError(f"cannot create the weights cache {folder}: {e.strerror or e}") from None
    try:
        with folder_lock(folder, waiting=f"waiting for another process fetching weights into {folder}"):
            if dest.is_file():  # fetched by that process meanwhile
                return dest
            log.info("fetching %s from %s into %s", spec.weights_file, source, folder)
            remove_stale_parts(folder, f"{glob.escape(temp_prefix(spec.weights_file))}*.part", STALE_PART_SECONDS)
            with atomic_write(dest) as tmp:
                _download(source, tmp, timeout, progress)
                _check_checkpoint(tmp, name, source)
    except BaseException:
        remove_empty_folders(created)
        raise
    return dest


def _proxy_for(url: str) -> str | None:
    """The proxy urllib sends ``url`` through (from ``$HTTPS_PROXY`` / ``$HTTP_PROXY``...), or None."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxy


def _download(url: str, target: Path, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``target``; raise :class:`InputError` when it cannot be reached or arrives short."""
    hint = (f"download it by hand into {target.parent} (or give its path), or set ${MIRROR_ENV} to a mirror "
            "that holds the authors' files")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = _copy(response, out, total, Path(url).name if progress else None)
    except urllib.error.HTTPError as e:
        raise InputError(f"cannot fetch {url}: HTTP {e.code} {_one_line(e.reason)}; {hint}") from None
    except ValueError:  # urllib's "unknown url type"
        raise InputError(f"cannot fetch {url}: not an address urllib reads (http://, https://, file://, or a "
                         f"folder); check ${MIRROR_ENV}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        reason = _one_line(getattr(e, "reason", None) or e) or type(e).__name__
        proxy = _proxy_for(url)
        through = f" through the proxy {proxy} (from the *_PROXY environment variables)" if proxy else ""
        raise InputError(f"cannot fetch {url}{through} ({reason}); {hint}") from None
    if total is not None and received != total:
        raise InputError(f"the download of {url} stopped after {received} of {total} bytes; try again, or {hint}")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _copy(response: object, out: object, total: int | None, label: str | None) -> int:
    """Copy the response into ``out`` in chunks, with a progress bar when ``label`` is given; returns the bytes."""
    if label is None:
        shutil.copyfileobj(response, out, CHUNK)
        return out.tell()
    from tqdm import tqdm

    received = 0
    # disable=None: no bar where stderr is not a terminal (a log file would collect its redraws)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False,
              disable=None) as bar:
        while chunk := response.read(CHUNK):
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def _check_checkpoint(path: Path, name: str, url: str) -> None:
    """Refuse a download that is not the 80-class checkpoint of ``name`` (a mirror's error page, another file)."""
    from .nn.checkpoint import identify_variant, parses_as_onnx, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except (CheckpointError, InputError) as e:
        if parses_as_onnx(path):  # (read_checkpoint's advice for an ONNX file at hand does not fit one not kept)
            raise CheckpointError(f"{url} gave an ONNX model, not the {name} checkpoint (.pth); nothing was "
                                  "kept") from None
        raise CheckpointError(f"{url} did not give a checkpoint ({str(e).replace(str(path), 'the download')}); "
                              "nothing was kept") from None
    found = identify_variant(ckpt.state_dict)
    if found != name or ckpt.num_classes != 80:
        what = f"{found} weights" if found else "weights of no YOLOX variant"
        raise CheckpointError(f"{url} gave {what} with {ckpt.num_classes} classes, not the 80-class {name} "
                              "checkpoint; nothing was kept")
