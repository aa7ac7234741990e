"""CalibrationData: which images, in which order, in which batches, preprocessed by the artefact's contract."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from yolox_deploy.errors import InputError
from yolox_deploy.export.calibration import CalibrationData
from yolox_deploy.io.images import read_image
from yolox_deploy.meta import ModelMeta, Preprocess
from yolox_deploy.ops.letterbox import preprocess_batch

META = ModelMeta.default(80, (64, 96))


@pytest.fixture
def folder(tmp_path, rng):
    """Seven images of different sizes and kinds (one grayscale PNG), named out of creation order."""
    d = tmp_path / "calib"
    d.mkdir()
    names = ["g.jpg", "a.png", "e.jpg", "c.bmp", "f.jpg", "b.jpg", "d.png"]
    for i, name in enumerate(names):
        h, w = 40 + 10 * i, 90 - 5 * i
        image = rng.integers(0, 256, (h, w) if name == "a.png" else (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(d / name), image)
    (d / "notes.txt").write_text("not an image")
    return d


def _sorted_images(folder, n=None):
    files = sorted(p for p in folder.iterdir() if p.suffix != ".txt")[:n]
    return files, [read_image(p) for p in files]


def test_batches_count_and_last_partial_batch(folder):
    data = CalibrationData(folder, META, count=5, batch=2, progress=False)
    batches = list(data)
    assert [b.shape for b in batches] == [(2, 3, 64, 96), (2, 3, 64, 96), (1, 3, 64, 96)]
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in batches)
    assert len(data) == 3 and data.num_images == 5
    assert [p.name for p in data.files] == ["a.png", "b.jpg", "c.bmp", "d.png", "e.jpg"]

    dropped = CalibrationData(folder, META, count=5, batch=2, last="drop", progress=False)
    assert [b.shape[0] for b in dropped] == [2, 2] and len(dropped) == 2

    filled = CalibrationData(folder, META, count=5, batch=2, last="fill", progress=False)
    out = list(filled)
    assert [b.shape[0] for b in out] == [2, 2, 2] and len(filled) == 3
    np.testing.assert_array_equal(out[2][1], out[0][0])  # completed with the first image

    everything = CalibrationData(folder, META, count=100, batch=3, progress=False)
    assert [b.shape[0] for b in everything] == [3, 3, 1] and everything.num_images == 7


def test_fewer_images_than_one_batch(folder):
    assert [b.shape[0] for b in CalibrationData(folder, META, count=2, batch=4, last="drop", progress=False)] == [2]
    filled = list(CalibrationData(folder, META, count=3, batch=8, last="fill", progress=False))
    assert len(filled) == 1 and filled[0].shape[0] == 8
    np.testing.assert_array_equal(filled[0][3], filled[0][0])
    np.testing.assert_array_equal(filled[0][7], filled[0][1])


def test_order_is_deterministic_and_passes_repeat(folder):
    a = np.concatenate(list(CalibrationData(folder, META, count=6, batch=4, progress=False)))
    data = CalibrationData(folder, META, count=6, batch=4, progress=False)
    b1 = np.concatenate(list(data))
    b2 = np.concatenate(list(data))  # a second pass over the same object
    np.testing.assert_array_equal(a, b1)
    np.testing.assert_array_equal(b1, b2)


@pytest.mark.parametrize("contract", [Preprocess(), Preprocess.legacy(), Preprocess(pad_value=0)])
def test_preprocessing_is_the_runtime_one(folder, contract):
    meta = META.with_(preprocess=contract)
    got = np.concatenate(list(CalibrationData(folder, meta, count=4, batch=3, progress=False)))
    _, images = _sorted_images(folder, 4)
    want, _ = preprocess_batch(images, (64, 96), contract)
    np.testing.assert_array_equal(got, want)


def test_unreadable_images_are_skipped_with_a_warning(folder, caplog):
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (folder / "c.bmp").write_bytes(b"")
    data = CalibrationData(folder, META, count=3, batch=2, progress=False)
    with caplog.at_level(logging.WARNING, logger="yolox_deploy.export.calibration"):
        got = np.concatenate(list(data))
    assert got.shape[0] == 3  # the next images take the place of the unreadable ones
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "b.jpg" in warned and "c.bmp" in warned
    assert [p.name for p in data.files] == ["a.png", "d.png", "e.jpg"]
    want, _ = preprocess_batch([read_image(folder / n) for n in ("a.png", "d.png", "e.jpg")], (64, 96))
    np.testing.assert_array_equal(got, want)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="yolox_deploy.export.calibration"):
        list(data)
    assert not caplog.records  # each bad file is reported once


def test_errors(tmp_path, folder):
    with pytest.raises(InputError, match="not found"):
        CalibrationData(tmp_path / "nope", META)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="no images"):
        CalibrationData(empty, META)
    for kw, msg in ((dict(count=0), "count"), (dict(batch=0), "batch"), (dict(last="pad"), "last")):
        with pytest.raises(InputError, match=msg):
            CalibrationData(folder, META, **kw)

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("x.jpg", "y.png"):
        (broken / name).write_bytes(b"garbage")
    data = CalibrationData(broken, META, progress=False)
    with pytest.raises(InputError, match="none of the 2 images"):
        list(data)


def test_progress_bar_and_real_images(unlabelled_images, capsys):
    data = CalibrationData(unlabelled_images, META.with_(input_size=(416, 416)), count=5, batch=2, desc="calib")
    assert len(data) == 3 and "5 images" in repr(data)
    batches = list(data)
    assert sum(b.shape[0] for b in batches) == 5
    assert "calib" in capsys.readouterr().err  # tqdm writes to stderr
    _, images = _sorted_images(unlabelled_images, 5)
    np.testing.assert_array_equal(np.concatenate(batches), preprocess_batch(images, (416, 416))[0])
