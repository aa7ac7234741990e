"""The augmented stream: determinism per (seed, epoch, index), output contract, sampler sharding, collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolox_deploy.errors import InputError
from yolox_deploy.io.images import read_image
from yolox_deploy.ops.letterbox import letterbox
from yolox_deploy.train.data import load_detection_set
from yolox_deploy.train.dataset import (
    MIN_BOX_SIDE,
    AugmentConfig,
    TrainBatchSampler,
    TrainDataset,
    collate,
    loader_worker_init,
)


@pytest.fixture
def data(synthetic_coco):
    return load_detection_set(synthetic_coco)


def test_samples_are_a_pure_function_of_seed_epoch_index(data):
    ds = TrainDataset(data, (64, 96), AugmentConfig(mosaic_prob=1.0), seed=7)
    a, b = ds[(3, 2, True)], ds[(3, 2, True)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    c = ds[(3, 3, True)]
    assert not torch.equal(a[0], c[0])
    other_seed = TrainDataset(data, (64, 96), AugmentConfig(mosaic_prob=1.0), seed=8)[(3, 2, True)]
    assert not torch.equal(a[0], other_seed[0])


@pytest.mark.parametrize("mosaic", [True, False])
def test_output_contract(data, mosaic):
    ds = TrainDataset(data, (64, 96), AugmentConfig(mosaic_scale=(0.5, 1.5), enable_mixup=True), seed=0)
    for index in range(len(ds)):
        image, targets, image_ids = ds[(index, 0, mosaic)]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
        assert targets.dtype == torch.float32 and targets.ndim == 2 and targets.shape[1] == 5
        # the indexed image, then a mosaic's three others and perhaps MixUp's
        assert image_ids[0] == data.records[index].image_id and len(image_ids) in ((4, 5) if mosaic else (1,))
        assert set(image_ids) <= {r.image_id for r in data.records}
        if len(targets):
            cls, cx, cy, w, h = targets.T
            assert ((cls >= 0) & (cls < 3)).all() and (cls == cls.round()).all()
            assert (w > MIN_BOX_SIDE).all() and (h > MIN_BOX_SIDE).all()
            assert (cx - w / 2 >= -1e-3).all() and (cx + w / 2 <= 96 + 1e-3).all()
            assert (cy - h / 2 >= -1e-3).all() and (cy + h / 2 <= 64 + 1e-3).all()


def test_without_augmentation_a_sample_is_the_inference_letterbox(data):
    aug = AugmentConfig(mosaic_prob=0.0, hsv_prob=0.0, flip_prob=0.0)
    ds = TrainDataset(data, (64, 64), aug)
    image, targets, _ = ds[(0, 0, True)]
    rec = data.records[0]
    ref, r = letterbox(read_image(rec.path), (64, 64))
    assert np.array_equal(image.numpy().transpose(1, 2, 0), ref)
    x1, y1, x2, y2 = (rec.boxes[0] * r).tolist()
    assert targets[0].tolist() == pytest.approx([rec.labels[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], abs=1e-4)


def test_cache_gives_the_same_samples(data):
    plain = TrainDataset(data, (64, 64), seed=1)
    cached = TrainDataset(data, (64, 64), seed=1, cache=True)
    for key in [(0, 0, True), (0, 0, True), (5, 1, False)]:
        assert torch.equal(plain[key][0], cached[key][0])


def test_the_cache_is_filled_once_up_front(data, monkeypatch):
    """Before the loader's workers start, so that forked workers share one copy (each kept its own)."""
    plain = TrainDataset(data, (64, 64), seed=1)
    cached = TrainDataset(data, (64, 64), seed=1, cache=True)
    # 8 images of 96x128 fit in 64x64 as 48x64: 3 bytes a pixel
    assert cached.cache_bytes() == 8 * 48 * 64 * 3
    keys = [(0, 0, True), (3, 2, False), (5, 1, True)]
    want = [plain[k][0] for k in keys]
    cached.fill_cache(progress=False)
    for rec in data.records:
        rec.path.unlink()  # from now on the images come from memory alone
    assert all(torch.equal(w, cached[k][0]) for w, k in zip(want, keys))
    monkeypatch.setattr("yolox_deploy.train.dataset.memory_bytes", lambda field="MemAvailable": 100_000)
    with pytest.raises(InputError, match=r"caching the 8 training images takes 0.0 GiB \(2 process\(es\)\) and "
                                         r"0.0 GiB of memory is available: train without --cache"):
        TrainDataset(data, (64, 64), cache=True).fill_cache(copies=2, progress=False)


def test_opencv_runs_single_threaded_in_loader_workers(data):
    import cv2

    class Threads(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return cv2.getNumThreads()

    loader = torch.utils.data.DataLoader(Threads(), batch_size=2, num_workers=1, worker_init_fn=loader_worker_init)
    assert next(iter(loader)).tolist() == [1, 1]


def test_image_size_that_disagrees_with_the_json_is_an_error(data):
    data.records[0].width += 1
    with pytest.raises(InputError, match="annotation file says .*; the file or its width/height entry is not the "
                                         "one annotated"):
        TrainDataset(data, (64, 64)).load(0)


def test_an_image_resized_after_annotation_is_named_so(data):
    """The message said to fix the width/height entry, which scored the boxes of the original on the copy."""
    import cv2

    path = data.records[0].path
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))
    with pytest.raises(InputError, match=r"resized after it was annotated \(by 0\.5\): its boxes are for the "
                                         "annotated size, so use the original image"):
        TrainDataset(data, (64, 64)).load(0)


def test_swapped_width_and_height_entries_are_named(data):
    """No EXIF tag: the annotation's width and height are the wrong way round (a common converter slip)."""
    rec = data.records[0]
    rec.width, rec.height = rec.height, rec.width
    if rec.width == rec.height:
        pytest.skip("a square image")
    with pytest.raises(InputError, match="the entry's width and height are swapped"):
        TrainDataset(data, (64, 64)).load(0)


def test_an_image_turned_by_its_exif_orientation_is_named(data, tmp_path):
    """JPEG orientation 6 (rotate 90): OpenCV, like the authors' cv2.imread, returns the turned pixels."""
    import cv2
    import numpy as np

    rec = data.records[0]
    ok, jpg = cv2.imencode(".jpg", np.full((rec.height, rec.width, 3), 80, np.uint8))
    exif = (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
            b"\x00\x00\x00\x00")
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    path = tmp_path / "turned.jpg"
    path.write_bytes(jpg.tobytes()[:2] + app1 + jpg.tobytes()[2:])
    rec.path = path
    with pytest.raises(InputError, match="its EXIF orientation turns it on reading"):
        TrainDataset(data, (64, 64)).load(0)


def test_collate_pads_with_class_minus_one():
    a = (torch.zeros(3, 4, 4, dtype=torch.uint8), torch.tensor([[1, 2, 2, 1, 1.]]), (10, 3, 4, 5))
    b = (torch.ones(3, 4, 4, dtype=torch.uint8), torch.zeros(0, 5), (11,))
    images, targets, ids = collate([a, b])
    assert images.shape == (2, 3, 4, 4) and ids == [(10, 3, 4, 5), (11,)]
    assert targets.shape == (2, 1, 5)
    assert targets[0, 0].tolist() == [1, 2, 2, 1, 1] and targets[1, 0, 0] == -1
    named = collate([(*a[:2], ("img163840",)), (*b[:2], ("img7",))])[2]  # image ids that are names train too
    assert named == [("img163840",), ("img7",)]


def test_sampler_epochs_and_shards():
    one = TrainBatchSampler(10, 4, seed=3)
    assert one.iters_per_epoch == 3 and len(one) == 3  # the authors' last, incomplete batch runs on
    one.set_epoch(5, mosaic=False)
    batches = list(one)
    assert all(len(b) == 4 and all(k[2] is False for k in b) for b in batches)
    flat = [k[0] for b in batches for k in b]
    # epoch 5 is positions 60..71 of the stream of permutations: the end of permutation 6, the start of 7
    stream = np.concatenate([one.epoch_order(q) for q in range(8)])
    assert flat == stream[60:72].tolist() and [k[1] for b in batches for k in b] == [6] * 10 + [7] * 2
    # two ranks of 2 see exactly the global batches of one process of 4, split in halves
    ranks = [TrainBatchSampler(10, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(5, mosaic=False)
    halves = [list(s) for s in ranks]
    for it, global_batch in enumerate(batches):
        assert halves[0][it] + halves[1][it] == global_batch
    # the order changes with the epoch; resuming mid-epoch skips what was seen
    one.set_epoch(6)
    assert [k[0] for b in one for k in b] != flat
    one.set_epoch(5, mosaic=False, start_iter=1)
    assert list(one) == batches[1:] and len(one) == 2


def test_sampler_rejects_a_batch_larger_than_the_data():
    with pytest.raises(InputError, match="fewer than one batch"):
        TrainBatchSampler(5, 8)


GROUP_SIGNAL_SCRIPT = """
import os, signal, sys
import torch
from yolox_deploy.train.dataset import loader_worker_init

GROUP = os.getpgid(0)
got = []
signal.signal(signal.SIGTERM, lambda sig, frame: got.append(sig))  # the training process's own stop request


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if sys.argv[2] == "group":
            os.killpg(GROUP, signal.SIGTERM)  # the whole process group, as timeout and kill -- -PGID signal it
        else:  # every process of the job, one by one, as systemd and Slurm stop a control group
            os.kill(os.getppid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return index


init = loader_worker_init if sys.argv[1] == "init" else None
loader = torch.utils.data.DataLoader(Items(), batch_size=2, num_workers=1, worker_init_fn=init)
try:
    print([b.tolist() for b in loader], bool(got))
except RuntimeError as e:
    print("failed:", e)
"""


def test_loader_workers_leave_a_group_sigterm_to_the_training_process():
    """A SIGTERM to the training's process group ended PyTorch's workers (and the training, in a traceback)."""
    import subprocess
    import sys

    def run(mode: str, sent_to: str) -> str:
        done = subprocess.run([sys.executable, "-c", GROUP_SIGNAL_SCRIPT, mode, sent_to], capture_output=True,
                              text=True, timeout=120, start_new_session=True)  # the test's group is not signalled
        return done.stdout.strip()

    for sent_to in ("group", "each"):
        assert run("init", sent_to) == "[[0, 1], [2, 3]] True", sent_to
        assert run("bare", sent_to).startswith("failed: DataLoader worker"), sent_to  # what it was


STUCK_WORKER_SCRIPT = """
import os, time
import torch
from yolox_deploy.train.dataset import loader_worker_init


class Stuck(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index >= 2:
            time.sleep(600)  # a worker that never returns
        return os.getpid()


def ended(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


batches = iter(torch.utils.data.DataLoader(Stuck(), batch_size=2, num_workers=1, worker_init_fn=loader_worker_init))
worker = int(next(batches)[0])
del batches  # PyTorch waits a few seconds, then sends the worker SIGTERM
time.sleep(2)
print("ended", ended(worker), flush=True)
os._exit(0)  # not multiprocessing's exit, which would stop a worker left behind the same way
"""


def test_the_parent_still_stops_a_stuck_worker(tmp_path):
    """Workers leave others' SIGTERM to the training process; the one PyTorch itself sends still ends them."""
    import subprocess
    import sys

    out = tmp_path / "out.txt"
    with open(out, "w") as f:  # a file, not a pipe that a worker left behind would hold open
        subprocess.run([sys.executable, "-c", STUCK_WORKER_SCRIPT], stdout=f, stderr=subprocess.STDOUT, timeout=120)
    assert out.read_text().strip().endswith("ended True"), out.read_text()[-2000:]


def test_samples_without_usable_boxes_get_no_colour_jitter_or_flip(data):
    """The authors' TrainTransform only letterboxes a sample without labels, and falls back to the sample before
    its HSV and flip (all boxes kept) when every box is 1 px or thinner after them."""
    import dataclasses

    data.records[0] = dataclasses.replace(data.records[0], boxes=np.zeros((0, 4), np.float32),
                                          labels=np.zeros(0, np.int64))
    data.records[1] = dataclasses.replace(data.records[1], boxes=np.array([[10, 10, 10.5, 40]], np.float32),
                                          labels=np.array([1]))
    ds = TrainDataset(data, (96, 128), AugmentConfig(mosaic_prob=0.0, hsv_prob=1.0, flip_prob=1.0))
    for index, expected in ((0, np.zeros((0, 5))), (1, np.array([[1.0, 10.25, 25.0, 0.5, 30.0]]))):
        image, targets, _ = ds[(index, 0, False)]
        ref, _ = letterbox(read_image(data.records[index].path), (96, 128))
        assert np.array_equal(image.numpy().transpose(1, 2, 0), ref)
        np.testing.assert_allclose(targets.numpy().reshape(-1, 5), expected, atol=1e-4)


@pytest.mark.parametrize("size, batch, world", [(80, 64, 1), (10, 4, 1), (118287, 8, 8), (65, 32, 2), (64, 16, 4)])
def test_iterations_per_epoch_are_the_authors(size, batch, world):
    """The authors' len(train_loader): YoloBatchSampler(drop_last=False) over an InfiniteSampler of length
    size // world: an incomplete last batch is a step (coco-tiny's 80 images at batch 64 are 2 steps an epoch)."""
    authors = len(torch.utils.data.BatchSampler(range(size // world), batch, drop_last=False))
    sampler = TrainBatchSampler(size, batch, world_size=world)
    assert sampler.iters_per_epoch == authors
    if size < 1000:  # every epoch continues the stream: each permutation is seen whole, once
        seen = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            for rank in range(world):
                sampler.rank = rank
                seen += [k for b in sampler for k in b]
        stream = sorted(seen, key=lambda k: k[1])
        for q in range(len(seen) // size):
            assert sorted(k[0] for k in stream if k[1] == q) == list(range(size))
