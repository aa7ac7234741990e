"""Calibration images for INT8 post-training quantisation, preprocessed exactly as the artefact expects.

Every INT8 path (OpenVINO/NNCF, the TensorRT calibrator) feeds the same thing: letterboxed, contract-
normalised ``[N, 3, H, W]`` float32 batches, from a folder of ordinary images::

    from yolox_deploy.export.calibration import CalibrationData

    data = CalibrationData("calib/", meta, count=100, batch=8)   # meta: the artefact's ModelMeta
    for batch in data:          # np.ndarray [<=8, 3, H, W] float32, C-contiguous
        ...
    len(data)                   # number of batches one pass yields (if every image reads)
    data.files                  # the images used, in order

Contract:

- the images are the folder's image files (not recursive) in sorted name order; the first ``count``
  readable ones are used, so two runs over the same folder see the same images in the same order;
- each image is letterboxed to ``meta.input_size`` and converted with ``meta.preprocess`` by
  :func:`~yolox_deploy.ops.letterbox.preprocess_batch` (the runtimes' letterbox, and the numbers their
  in-graph conversions compute);
- an unreadable file is skipped with one warning (the next image takes its place); when none can be read
  :class:`InputError` is raised, as for a missing or empty folder;
- the last batch may be smaller than ``batch`` (``last="keep"``), dropped (``"drop"``) or completed with
  images from the start of the set (``"fill"``, for engines with a fixed batch size);
- the object can be iterated any number of times (calibrators often make several passes); each pass reads
  the images again, so memory stays at one batch. A tqdm bar shows the progress of each pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.images import IMAGE_SUFFIXES, list_images, read_image
from ..meta import ModelMeta
from ..ops.letterbox import preprocess_batch

log = logging.getLogger(__name__)

LAST_BATCH = ("keep", "drop", "fill")


def calibration_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a calibration folder, by name; a missing folder, a file and a folder without
    images are refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is a file; calibration takes a folder of images (--calib-images)"
                         if folder.exists() else f"calibration folder not found: {folder}")
    files = list_images(folder)
    if not files:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in calibration folder {folder}")
    return files


def check_calibration_folder(folder: str | os.PathLike) -> None:
    """Refuse, before an export's work, a calibration folder :func:`calibration_files` refuses or whose images
    none can be read (read until the first that can)."""
    files = calibration_files(folder)
    for path in files:
        try:
            read_image(path)
            return
        except InputError:
            continue
    raise InputError(f"none of the {len(files)} images in {folder} could be read")


class CalibrationData:
    """Iterable of preprocessed calibration batches (see the module docstring for the contract).

    Arguments: ``folder`` of images; ``meta`` of the artefact being calibrated (its ``input_size`` and
    ``preprocess`` decide the input); ``count``: at most this many images; ``batch``: images per batch;
    ``last``: what to do with a final partial batch (``keep``, ``drop`` or ``fill``); ``progress``: show a
    tqdm bar; ``desc``: its label.
    """

    def __init__(self, folder: str | os.PathLike, meta: ModelMeta, count: int = 100, batch: int = 1, *,
                 last: str = "keep", progress: bool = True, desc: str = "calibration") -> None:
        if count < 1:
            raise InputError(f"calibration image count must be >= 1, got {count}")
        if batch < 1:
            raise InputError(f"calibration batch size must be >= 1, got {batch}")
        if last not in LAST_BATCH:
            raise InputError(f"last must be one of {', '.join(LAST_BATCH)}, got {last!r}")
        self.folder = Path(folder)
        self.candidates = calibration_files(self.folder)
        self.meta = meta
        self.count = int(count)
        self.batch = int(batch)
        self.last = last
        self.progress = progress
        self.desc = desc
        self._bad: set[Path] = set()

    # --- what a pass uses ----------------------------------------------------------------------------
    @property
    def files(self) -> list[Path]:
        """The images a pass uses, in order: the first ``count`` candidates not known to be unreadable."""
        return [p for p in self.candidates if p not in self._bad][:self.count]

    @property
    def num_images(self) -> int:
        """Images per pass, as far as known (unreadable files are only discovered while reading)."""
        return len(self.files)

    def __len__(self) -> int:
        """Batches per pass (an upper bound until a first pass has found any unreadable file)."""
        n = self.num_images
        full, rest = divmod(n, self.batch)
        if rest and (self.last != "drop" or full == 0):
            full += 1
        return full

    # --- iteration -----------------------------------------------------------------------------------
    def images(self) -> Iterator[np.ndarray]:
        """The BGR uint8 images of one pass, skipping (and remembering) unreadable files."""
        used = 0
        for path in self.candidates:
            if used == self.count:
                return
            if path in self._bad:
                continue
            try:
                image = read_image(path)
            except InputError as e:
                self._bad.add(path)
                log.warning("calibration: skipping %s (%s)", path.name, e)
                continue
            used += 1
            yield image
        if used == 0:
            raise InputError(f"none of the {len(self.candidates)} images in {self.folder} could be read")

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """BGR uint8 images -> the model input ``[len(images), 3, H, W]`` float32 (the artefact's contract)."""
        batch, _ = preprocess_batch(images, tuple(self.meta.input_size), self.meta.preprocess)
        return batch

    def __iter__(self) -> Iterator[np.ndarray]:
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.num_images, desc=self.desc, unit="img", leave=False)
        try:
            head: list[np.ndarray] = []  # first images, kept only to fill a partial last batch
            chunk: list[np.ndarray] = []
            yielded = False
            for image in self.images():
                if self.last == "fill" and len(head) < self.batch:
                    head.append(image)
                chunk.append(image)
                if bar is not None:
                    bar.update(1)
                if len(chunk) == self.batch:
                    yield self.preprocess(chunk)
                    yielded = True
                    chunk = []
            if chunk:
                if self.last == "fill":
                    i = 0
                    while len(chunk) < self.batch:  # cycle through the first images (there are >= 1)
                        chunk.append(head[i % len(head)])
                        i += 1
                    yield self.preprocess(chunk)
                elif self.last == "keep" or not yielded:
                    # "drop" still yields a lone partial batch: fewer images than one batch must not mean none
                    yield self.preprocess(chunk)
        finally:
            if bar is not None:
                bar.close()

    def __repr__(self) -> str:
        return (f"CalibrationData({str(self.folder)!r}, {self.num_images} images, batch={self.batch}, "
                f"input={self.meta.input_size[0]}x{self.meta.input_size[1]})")
