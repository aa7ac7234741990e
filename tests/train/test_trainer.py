"""The training loop end to end on small data: exact resume, checkpoints every tool loads, a class-count
change that goes through Detector and ONNX export, the non-finite-loss guard, bad inputs, and (slow) the
fine-tuning of the real nano weights and a two-process torchrun-style run."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from yolox_deploy import Detector, build_model, load_model
from yolox_deploy.errors import CheckpointError, InputError
from yolox_deploy.eval.coco import open_coco
from yolox_deploy.nn.checkpoint import read_checkpoint
from yolox_deploy.train import (
    LATEST,
    AugmentConfig,
    TrainConfig,
    TrainDataset,
    Trainer,
    YOLOXLoss,
    collate,
    load_training_state,
)
from yolox_deploy.train.trainer import NonFiniteLossError, transfer_class_head
from yolox_deploy.utils.signals import Terminated

from .conftest import make_synthetic_coco, write_coco


def config(data, out, **kw):
    base = dict(output=out, epochs=2, batch=2, img_size=64, device="cpu", workers=0, progress=False,
                tensorboard=False, val_split=None, warmup_epochs=1, no_aug_epochs=1, multiscale_interval=2, seed=3)
    base.update(kw)
    return TrainConfig("yolox-nano", data, **base)


def snapshot(trainer):
    return {"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "ema": {k: v.clone() for k, v in trainer.ema.model.state_dict().items()},
            "opt": [s["momentum_buffer"].clone() for s in trainer.optimizer.state_dict()["state"].values()],
            "iteration": trainer.iteration, "ema_updates": trainer.ema.updates}


def assert_bitwise_equal(a, b):
    assert a["iteration"] == b["iteration"] and a["ema_updates"] == b["ema_updates"]
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part} {k} differs"
    assert len(a["opt"]) == len(b["opt"]) and all(torch.equal(x, y) for x, y in zip(a["opt"], b["opt"]))


def test_resume_mid_epoch_gives_the_bitwise_same_next_step(synthetic_coco, tmp_path):
    # 8 images, batch 2: 4 iterations per epoch; epoch 2 is the no-augmentation epoch (L1 on, Mosaic off);
    # the input size changes every 2 iterations. Stop after iteration 6 (mid-epoch 2), resume, run step 7.
    with Trainer(config(synthetic_coco, tmp_path / "straight")) as t:
        t.train(max_iterations=7)
        straight = snapshot(t)
    with Trainer(config(synthetic_coco, tmp_path / "resumed")) as t:
        result = t.train(max_iterations=6)
        assert result.iterations == 6 and not result.finished
    state = load_training_state(tmp_path / "resumed" / LATEST)
    assert state.iteration == 6 and state.start_epoch == 1
    with Trainer(config(synthetic_coco, tmp_path / "resumed", resume=True)) as t:
        assert t.iteration == 6
        t.train(max_iterations=7)
        resumed = snapshot(t)
    assert_bitwise_equal(straight, resumed)
    with open(tmp_path / "resumed" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 8))
    assert {r["size"] for r in rows} != {"64"}  # multi-scale was on
    assert float(rows[-1]["l1_loss"]) > 0 and float(rows[0]["l1_loss"]) == 0  # L1 only in the no-aug epoch


def test_a_resume_refuses_a_recipe_other_than_the_runs(synthetic_coco, tmp_path):
    """A resume took this command line's learning rate, augmentation and multi-scale (or their defaults) in place
    of the run's, silently: a lower learning rate and other input sizes from the resumed iteration on."""
    with Trainer(config(synthetic_coco, tmp_path / "run", lr_per_image=0.001, multiscale=False)) as t:
        t.train(max_iterations=2)
    with pytest.raises(InputError, match=r"cannot resume latest_ckpt.pth with different settings \(lr_per_image "
                                         r"0.001 -> 0.000156.*; multiscale False -> True.*\); give the original run's"):
        Trainer(config(synthetic_coco, tmp_path / "run", resume=True))
    with pytest.raises(InputError, match="from other weights .*: a resume continues from its checkpoint"):
        Trainer(config(synthetic_coco, tmp_path / "run", resume=True, lr_per_image=0.001, multiscale=False,
                       weights=tmp_path / "other.pth"))
    with Trainer(config(synthetic_coco, tmp_path / "run", resume=True, lr_per_image=0.001, multiscale=False,
                        workers=1, eval_interval=1)) as t:  # the same recipe; other workers and evaluation
        assert t.iteration == 2


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_inside_a_step_resumes_bit_exactly(synthetic_coco, tmp_path, signum):
    """Ctrl-C (or SIGTERM, as a scheduler sends) arriving in the middle of iteration 5's forward pass: the
    iteration finishes, the checkpoint is written at 5, and the resumed run's iteration 7 equals an
    uninterrupted run's."""
    import signal

    with Trainer(config(synthetic_coco, tmp_path / "straight")) as t:
        t.train(max_iterations=7)
        straight = snapshot(t)
    with Trainer(config(synthetic_coco, tmp_path / "stopped")) as t:
        def ctrl_c_in_forward(module, inputs):
            if t.iteration == 4:  # inside the fifth step, after BatchNorm statistics start moving
                os.kill(os.getpid(), getattr(signal, signum))

        hook = t.net.backbone.register_forward_pre_hook(ctrl_c_in_forward)
        with pytest.raises(KeyboardInterrupt) as stopped:
            t.train(max_iterations=7)
        hook.remove()
        assert t.iteration == 5
        assert isinstance(stopped.value, Terminated) == (signum == "SIGTERM")  # a CLI exits 143 for it, not 130
    assert load_training_state(tmp_path / "stopped" / LATEST).iteration == 5
    with Trainer(config(synthetic_coco, tmp_path / "stopped", resume=True)) as t:
        assert t.iteration == 5
        t.train(max_iterations=7)
        assert_bitwise_equal(straight, snapshot(t))


def test_a_second_ctrl_c_inside_a_step_keeps_the_last_whole_checkpoint(synthetic_coco, tmp_path, caplog):
    """Ctrl-C twice: the second stopped iteration 6 after its weights moved, and that state was written as
    iteration 5, so the resumed run silently differed from an uninterrupted one."""
    import signal

    with Trainer(config(synthetic_coco, tmp_path / "straight")) as t:
        t.train(max_iterations=7)
        straight = snapshot(t)
    with Trainer(config(synthetic_coco, tmp_path / "stopped")) as t:
        update = t.scaler.update

        def twice_after_the_update():  # the weights of iteration 6 are written, its count is not
            update()
            if t.iteration == 5:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

        t.scaler.update = twice_after_the_update
        with pytest.raises(KeyboardInterrupt):
            t.train(max_iterations=7)
    assert "interrupted inside iteration 6, whose state is not whole" in caplog.text
    assert load_training_state(tmp_path / "stopped" / LATEST).iteration == 4  # the end of epoch 1
    with Trainer(config(synthetic_coco, tmp_path / "stopped", resume=True)) as t:
        t.train(max_iterations=7)
        assert_bitwise_equal(straight, snapshot(t))


def test_a_data_error_after_some_steps_keeps_them_for_the_resume(synthetic_coco, tmp_path, caplog):
    """The images went missing after iteration 6: the steps since the end of epoch 1 were lost."""
    with Trainer(config(synthetic_coco, tmp_path / "run")) as t:
        step = t.step

        def then_the_images_go(*args):
            loss = step(*args)
            if t.iteration == 6:
                for rec in t.data.records:
                    rec.path.unlink()
            return loss

        t.step = then_the_images_go
        with pytest.raises(InputError, match="image not found"):
            t.train(max_iterations=8)
    assert "stopped by its data at iteration 6" in caplog.text and "fix it and continue with --resume" in caplog.text
    assert load_training_state(tmp_path / "run" / LATEST).iteration == 6


def test_an_evaluation_image_error_keeps_the_epochs_steps_for_the_resume(synthetic_coco, tmp_path, caplog):
    """A corrupt validation image met at the end of epoch 2: its steps were lost (latest_ckpt.pth stayed at the
    end of epoch 1); they are kept, and the resume does the epoch's evaluation once the image is fixed."""
    bad = synthetic_coco / "val2017" / "000001.jpg"
    good = bad.read_bytes()
    bad.write_bytes(b"not an image")
    cfg = dict(val_split="val2017", eval_interval=2, epochs=3, no_aug_epochs=0)
    with Trainer(config(synthetic_coco, tmp_path / "run", **cfg)) as t:
        with pytest.raises(InputError, match="not a readable image"):
            t.train()
    assert "stopped by its data at iteration 8" in caplog.text
    assert load_training_state(tmp_path / "run" / LATEST).iteration == 8  # the end of epoch 2, not of epoch 1
    bad.write_bytes(good)
    with Trainer(config(synthetic_coco, tmp_path / "run", resume=True, **cfg)) as t:
        assert t.iteration == 8
        result = t.train(max_iterations=8)  # only the evaluation and checkpoints of epoch 2 were left to do
    assert result.best is not None and load_training_state(result.best).start_epoch == 2


def test_a_complete_run_resumes_to_nothing_and_may_be_extended(synthetic_coco, tmp_path):
    short = dict(epochs=1, batch=4, warmup_epochs=0, no_aug_epochs=0)  # 2 iterations per epoch
    with Trainer(config(synthetic_coco, tmp_path / "run", **short)) as t:
        assert t.train().finished and not t.complete
    # what a kill -9 during a checkpoint write left goes at the next start; a write under way is not touched
    killed, live = tmp_path / "run" / ".latest_ckpt.pth.x1y2z3.part", tmp_path / "run" / ".best_ckpt.pth.a1b2c3.part"
    for part in (killed, live):
        part.write_bytes(b"half a checkpoint")
    os.utime(killed, (time.time() - 120, time.time() - 120))
    with Trainer(config(synthetic_coco, tmp_path / "run", resume=True, **short)) as t:
        assert t.complete and t.train().iterations == 2
    assert not killed.exists() and live.exists()
    with Trainer(config(synthetic_coco, tmp_path / "run", resume=True, **{**short, "epochs": 2})) as t:
        assert not t.complete and t.train(max_iterations=3).iterations == 3
    with pytest.raises(InputError, match=r"it is at iteration 3, past the end of the last epoch asked \(epoch 1, "
                                         r"iteration 2\); give more --epochs"):
        Trainer(config(synthetic_coco, tmp_path / "run", resume=True, **short))


def test_a_resume_keeps_what_the_run_derived_or_was_given(synthetic_coco, tmp_path, monkeypatch):
    """Warm-up / no-aug epochs left to their defaults were derived again from a resume's --epochs (4 -> 8 epochs:
    "warmup_epochs 1 -> 2", refused); relative --weights were compared from the resume's folder; a resume without
    --weights recorded none, so a later resume that named them was refused."""
    import shutil

    phases = dict(batch=4, warmup_epochs=None, no_aug_epochs=None)  # 2 iterations per epoch
    with Trainer(config(synthetic_coco, tmp_path / "run", epochs=4, **phases)) as t:
        t.train(max_iterations=1)
        assert (t.cfg.warmup_epochs, t.cfg.no_aug_epochs) == (1, 1)
    with Trainer(config(synthetic_coco, tmp_path / "run", epochs=8, resume=True, **phases)) as t:
        assert (t.cfg.warmup_epochs, t.cfg.no_aug_epochs) == (1, 1) and t.iteration == 1
    with pytest.raises(InputError, match="1 warm-up \\+ 1 no-augmentation epochs do not fit in 1 epochs"):
        Trainer(config(synthetic_coco, tmp_path / "run", epochs=1, resume=True, **phases))

    shutil.copy(tmp_path / "run" / LATEST, tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)
    with Trainer(config(synthetic_coco, tmp_path / "b", epochs=2, weights="w.pth")) as t:
        t.train(max_iterations=1)
    monkeypatch.chdir(tmp_path / "b")
    with Trainer(config(synthetic_coco, tmp_path / "b", epochs=2, resume=True, weights="../w.pth")) as t:
        assert t.iteration == 1
    with Trainer(config(synthetic_coco, tmp_path / "b", epochs=2, resume=True)) as t:
        t.train(max_iterations=2)
    assert load_training_state(tmp_path / "b" / LATEST).config["weights"] == str(tmp_path / "w.pth")
    with Trainer(config(synthetic_coco, tmp_path / "b", epochs=2, resume=True, weights=tmp_path / "w.pth")) as t:
        assert t.iteration == 2


def test_ctrl_c_in_an_epochs_last_step_leaves_its_evaluation_and_checkpoints_to_the_resume(synthetic_coco, tmp_path):
    """Stopped by Ctrl-C in iteration 4, the last of epoch 1: the checkpoint says epoch 1 is not closed, and
    the resumed run first evaluates it and writes its checkpoints, so the run's files equal a straight run's."""
    import signal

    kw = dict(val_split="val2017", eval_interval=1)
    with Trainer(config(synthetic_coco, tmp_path / "straight", **kw)) as t:
        t.train()
    with Trainer(config(synthetic_coco, tmp_path / "stopped", **kw)) as t:
        def ctrl_c_in_forward(module, inputs):
            if t.iteration == 3:
                os.kill(os.getpid(), signal.SIGINT)

        hook = t.net.backbone.register_forward_pre_hook(ctrl_c_in_forward)
        with pytest.raises(KeyboardInterrupt):
            t.train()
        hook.remove()
    state = load_training_state(tmp_path / "stopped" / LATEST)
    assert state.iteration == 4 and state.start_epoch == 0
    assert not (tmp_path / "stopped" / "last_mosaic_epoch_ckpt.pth").exists()
    with Trainer(config(synthetic_coco, tmp_path / "stopped", resume=True, **kw)) as t:
        result = t.train()
    assert result.finished and result.iterations == 8

    def epochs_evaluated(run):
        with open(tmp_path / run / "eval_log.csv") as f:
            return [int(r["epoch"]) for r in csv.DictReader(f)]

    assert epochs_evaluated("stopped") == epochs_evaluated("straight") == [1, 2]
    for name in ("last_mosaic_epoch_ckpt.pth", "best_ckpt.pth", LATEST):
        a, b = (read_checkpoint(tmp_path / run / name) for run in ("straight", "stopped"))
        assert all(torch.equal(v, b.state_dict[k]) for k, v in a.state_dict.items()), name


def test_a_run_stopped_while_writing_its_best_checkpoint_writes_it_on_resume(synthetic_coco, tmp_path):
    """A second Ctrl-C (or a full disk) while best_ckpt.pth was being written left latest_ckpt.pth recording the
    new best AP: the resumed run compared its evaluation with that record, kept the older best_ckpt.pth, and
    logged the evaluation a second time."""
    from yolox_deploy.eval.coco import EvalResult
    from yolox_deploy.train.checkpoint import BEST

    def evaluating(t, aps):
        t.evaluate = lambda: EvalResult({"AP": aps.pop(0), "AP50": 0.5}, {}, 8)

    kw = dict(val_split="val2017", eval_interval=1)
    with Trainer(config(synthetic_coco, tmp_path / "run", **kw)) as t:
        evaluating(t, [0.1, 0.2])
        real_save = t._save

        def save(name, start_epoch):
            if name == BEST and start_epoch == 2:
                raise KeyboardInterrupt  # stopped at once while the epoch-2 best is written
            return real_save(name, start_epoch=start_epoch)

        t._save = save
        with pytest.raises(KeyboardInterrupt):
            t.train()
    assert read_checkpoint(tmp_path / "run" / BEST).extra["best_ap"] == 0.1
    with Trainer(config(synthetic_coco, tmp_path / "run", resume=True, **kw)) as t:
        assert t.best_ap == 0.1  # the best_ckpt.pth's, not a record it never reached
        evaluating(t, [0.2])
        assert t.train().best_ap == 0.2
    assert read_checkpoint(tmp_path / "run" / BEST).extra["best_ap"] == 0.2
    with open(tmp_path / "run" / "eval_log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]  # epoch 2 once


def test_a_start_whose_logs_cannot_be_written_leaves_nothing(synthetic_coco, tmp_path, monkeypatch):
    """A full disk while TensorBoard opened its events file left the folder, and the same command then found
    "a training run's files" there."""
    import errno
    import sys
    import types

    def full(log_dir, **kwargs):  # as SummaryWriter: its folder and events file made, then the disk is full
        Path(log_dir).mkdir(parents=True)
        (Path(log_dir) / "events.out.tfevents.1").write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=full))
    with pytest.raises(OSError, match="No space left"):
        Trainer(config(synthetic_coco, tmp_path / "run", tensorboard=True))
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    with Trainer(config(synthetic_coco, tmp_path / "run")) as t:  # the same command, once there is room
        assert t.iteration == 0


def test_the_evaluation_size_is_what_checkpoints_run_at(synthetic_coco, tmp_path, monkeypatch):
    """YOLOX-Tiny's recipe trains at 640 and is evaluated at 416: the two sizes are kept apart."""
    with Trainer(config(synthetic_coco, tmp_path / "run", eval_size=96, val_split="val2017")) as t:
        assert t.cfg.img_size == (64, 64) and t.model.input_size == (96, 96)
        seen = []
        monkeypatch.setattr("yolox_deploy.eval.coco.evaluate", lambda det, split, progress: seen.append(
            det.meta.input_size))
        t.evaluate()
        assert seen == [(96, 96)]


def test_checkpoints_have_the_authors_layout_and_load_everywhere(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    with Trainer(config(synthetic_coco, out, val_split="val2017", eval_interval=1)) as t:
        result = t.train()
    assert result.finished and result.iterations == 8 and result.best is not None
    for name in (LATEST, "best_ckpt.pth", "last_mosaic_epoch_ckpt.pth"):
        raw = torch.load(out / name, map_location="cpu", weights_only=True)
        assert {"start_epoch", "model", "optimizer", "best_ap", "curr_ap", "model_name", "class_names"} <= set(raw)
        assert raw["model_name"] == "yolox-nano" and raw["class_names"] == ["red", "green", "blue"]
        assert raw["category_ids"] == [1, 2, 5]  # the dataset's ids of those classes
    raw = torch.load(out / LATEST, map_location="cpu", weights_only=True)
    assert raw["start_epoch"] == 2
    # the authors' loader: a strict load of "model" into the module tree
    net = build_model("yolox-nano", 3)
    net.load_state_dict(raw["model"], strict=True)
    # "model" holds the EMA weights
    with Trainer(config(synthetic_coco, out, resume=True)) as t:
        assert all(torch.equal(v, raw["model"][k]) for k, v in t.ema.model.state_dict().items())
    model = load_model(out / "best_ckpt.pth")
    assert model.class_names == ("red", "green", "blue") and model.spec.name == "yolox-nano"
    assert model.category_ids == (1, 2, 5)
    assert raw["input_size"] == [64, 64] and model.input_size == (64, 64)  # it runs at its training size
    with Detector(out / "best_ckpt.pth") as det:
        assert det.meta.input_size == (64, 64) and det.category_ids == (1, 2, 5)
    with open(out / "eval_log.csv") as f:
        evals = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in evals] == [1, 2] and all(0 <= float(r["AP"]) <= 1 for r in evals)
    assert raw["best_ap"] == pytest.approx(max(float(r["AP"]) for r in evals), abs=1e-6)


def coco_subset(coco_tiny: Path, root: Path, names=("dog", "cat", "bus")) -> Path:
    """A COCO folder with only ``names`` (their images and boxes) from coco-tiny, images symlinked."""
    for split in ("train2017", "val2017"):
        src = json.loads((coco_tiny / "annotations" / f"instances_{split}.json").read_text())
        cats = [c for c in src["categories"] if c["name"] in names]
        keep_cats = {c["id"] for c in cats}
        anns = [a for a in src["annotations"] if a["category_id"] in keep_cats]
        keep_imgs = {a["image_id"] for a in anns}
        images = [im for im in src["images"] if im["id"] in keep_imgs]
        write_coco(root, split, images, anns, cats)
        for im in images:
            os.symlink(coco_tiny / split / im["file_name"], root / split / im["file_name"])
    return root


def test_fine_tune_nano_to_three_classes_then_detector_and_onnx(coco_tiny, nano_pth, tmp_path):
    pytest.importorskip("onnxruntime")
    from yolox_deploy.export import export

    names = ("dog", "cat", "bus")  # COCO category ids 18, 17, 6: sorted by id -> bus, cat, dog
    data = coco_subset(coco_tiny, tmp_path / "subset", names)
    out = tmp_path / "run"
    cfg = config(data, out, weights=nano_pth, num_classes=3, batch=2, img_size=128, epochs=2,
                 val_split="val2017", eval_interval=1)
    with Trainer(cfg) as t:
        assert t.data.class_names == ("bus", "cat", "dog")
        result = t.train()
    assert result.finished and result.best is not None and math.isfinite(result.last_losses["total_loss"])
    val = open_coco(data, "val2017")
    image = val.image_path(val.image_ids[0])
    with Detector(result.best, conf=0.3) as det:
        assert det.meta.class_names == ("bus", "cat", "dog") and det.meta.num_classes == 3
        [torch_dets] = det(image)
        assert set(torch_dets.names) <= set(names)
    onnx_path = tmp_path / "subset.onnx"
    exported = export(result.best, "onnx", onnx_path)
    assert exported.meta.class_names == ("bus", "cat", "dog") and onnx_path.exists()
    assert exported.meta.category_ids == (6, 17, 18)
    with Detector(onnx_path, conf=0.3) as det:
        assert det.meta.num_classes == 3 and det.category_ids == (6, 17, 18)
        [onnx_dets] = det(image)
    assert len(onnx_dets) == len(torch_dets)
    assert onnx_dets.category_ids is not None  # COCO results carry the dataset's ids, not the class indices 0..2
    assert [r["category_id"] for r in onnx_dets.to_coco(1)] == [(6, 17, 18)[c] for c in onnx_dets.class_ids]


def test_class_head_transfer_by_name_and_afresh():
    src = build_model("yolox-nano", 80)
    torch.manual_seed(1)
    for p in src.head.cls_preds.parameters():
        p.data.normal_()
    from yolox_deploy.nn.checkpoint import Checkpoint

    ckpt = Checkpoint(src.state_dict())  # 80 classes, no names: COCO's
    dst = build_model("yolox-nano", 2, class_names=("dog", "person"))
    assert "by class name" in transfer_class_head(dst, ckpt, ("dog", "person"))
    for k in range(3):
        w_src, w_dst = src.head.cls_preds[k].weight, dst.head.cls_preds[k].weight
        assert torch.equal(w_dst[0], w_src[16]) and torch.equal(w_dst[1], w_src[0])  # dog is COCO class 16
    fresh = build_model("yolox-nano", 2, class_names=("cat-ish", "other"))
    before = fresh.head.cls_preds[0].bias.clone()
    assert "afresh" in transfer_class_head(fresh, ckpt, ("cat-ish", "other"))
    assert torch.equal(fresh.head.cls_preds[0].bias, before)


def test_non_finite_loss_stops_with_iteration_and_image_ids(synthetic_coco, tmp_path):
    """The ids named were the samples' own images only, not the three others of each mosaic (nor MixUp's)."""
    with Trainer(config(synthetic_coco, tmp_path / "run", mosaic_prob=1.0)) as t:
        order = [int(i) for i in t.sampler.epoch_order(0)[:2]]
        drawn = [t.dataset[(i, 0, True)][2] for i in order]
        with torch.no_grad():
            t.model.head.obj_preds[0].bias.fill_(float("nan"))
        with pytest.raises(NonFiniteLossError) as e:
            t.train(max_iterations=1)
    msg = str(e.value)
    ids = list(dict.fromkeys(i for sample in drawn for i in sample))
    assert drawn[0][0] == t.data.records[order[0]].image_id and len(drawn[0]) >= 4
    assert "iteration 1 " in msg and "obj_loss=nan" in msg
    assert f"on the {len(ids)} images of its batch (ids {', '.join(map(repr, ids))})" in msg


def test_weights_that_diverge_with_a_finite_loss_are_never_saved(synthetic_coco, tmp_path, monkeypatch):
    """The step's loss was finite but its update was not: no checkpoint is written with those weights."""
    out = tmp_path / "run"
    with Trainer(config(synthetic_coco, out)) as t:
        step = t.step

        def diverging_step(*args):
            loss = step(*args)
            with torch.no_grad():
                t.model.head.reg_preds[0].weight.fill_(float("inf"))
                t.ema.model.head.reg_preds[0].weight.fill_(float("inf"))
            return loss

        monkeypatch.setattr(t, "step", diverging_step)
        with pytest.raises(NonFiniteLossError, match=r"weights are not finite after iteration 1 .*head\.reg_preds\.0"):
            t.train(max_iterations=1)
    assert not (out / LATEST).exists()


def test_bad_annotations_train_with_finite_loss(tmp_path):
    root = make_synthetic_coco(tmp_path / "d", num_images=4)
    ann_file = root / "annotations" / "instances_train2017.json"
    doc = json.loads(ann_file.read_text())
    extra = [[-30, -30, 60, 60], [100, 80, 90, 90], [10, 10, 0, 30], [10, 10, 30, -2], [500, 500, 10, 10]]
    for i, bbox in enumerate(extra):
        doc["annotations"].append({"id": 1000 + i, "image_id": 1, "category_id": 2, "bbox": bbox, "iscrowd": 0})
    ann_file.write_text(json.dumps(doc))
    with Trainer(config(root, tmp_path / "run", epochs=1, warmup_epochs=0, no_aug_epochs=0)) as t:
        assert t.data.report.clipped == 2 and t.data.report.degenerate == 3
        result = t.train()
    assert result.finished and all(math.isfinite(v) for v in result.last_losses.values())


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing(synthetic_coco, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with Trainer(config(synthetic_coco, out, tensorboard=True)) as t:
        step = t.step

        def fails_at_the_second_step(*args):
            if t.iteration == 1:
                raise OSError("an image could not be read")
            return step(*args)

        monkeypatch.setattr(t, "step", fails_at_the_second_step)
        with pytest.raises(OSError):
            t.train(max_iterations=3)
    assert not out.exists()  # the same command can run again once the cause is fixed
    with Trainer(config(synthetic_coco, out)) as t:
        assert t.train(max_iterations=1).iterations == 1


def test_a_run_continued_in_a_new_folder_keeps_its_own_best(synthetic_coco, tmp_path):
    """best_ap goes with the best_ckpt.pth beside it: a run resumed into a new folder starts its own."""
    first = tmp_path / "first"
    with Trainer(config(synthetic_coco, first, epochs=3, val_split="val2017", eval_interval=1)) as t:
        t.train(max_iterations=4)
    raw = torch.load(first / LATEST, map_location="cpu", weights_only=True)
    torch.save({**raw, "best_ap": 0.5}, first / LATEST)  # a record best_ckpt.pth never reached
    on_disk = load_training_state(first / "best_ckpt.pth").best_ap
    with Trainer(config(synthetic_coco, first, epochs=3, val_split="val2017", eval_interval=1, resume=True)) as t:
        assert t.best_ap == on_disk < 0.5  # the best is the best_ckpt.pth's
    # resumed in place from an earlier checkpoint: the best_ckpt.pth on disk is only replaced by a better one
    best = torch.load(first / "best_ckpt.pth", map_location="cpu", weights_only=True)
    torch.save({**best, "best_ap": 0.75}, first / "best_ckpt.pth")
    with Trainer(config(synthetic_coco, first, epochs=3, val_split="val2017", eval_interval=1, resume=True)) as t:
        assert t.best_ap == 0.75
    with Trainer(config(synthetic_coco, tmp_path / "second", epochs=3, val_split="val2017", eval_interval=1,
                        resume=first / LATEST)) as t:
        assert t.iteration == 4 and t.best_ap == 0.0
        result = t.train(max_iterations=8)
    best = load_training_state(tmp_path / "second" / "best_ckpt.pth")
    assert result.best_ap == best.best_ap == best.curr_ap < 0.5  # the one evaluation this folder saw


def test_run_folder_guards(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError, match="nothing to resume"):
        Trainer(config(synthetic_coco, out, resume=True))
    with pytest.raises(InputError, match="--num-classes 5 but"):
        Trainer(config(synthetic_coco, out, num_classes=5))
    with Trainer(config(synthetic_coco, out)) as t:
        t.train(max_iterations=1)
    with pytest.raises(InputError, match="already holds a training run's files .*latest_ckpt.pth.*--resume"):
        Trainer(config(synthetic_coco, out))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train_log.csv").write_text("my notes\n")  # logs without a checkpoint: not appended to either
    with pytest.raises(InputError, match=r"already holds a training run's files \(train_log.csv\); delete them"):
        Trainer(config(synthetic_coco, mine))
    assert (mine / "train_log.csv").read_text() == "my notes\n" and len(list(mine.iterdir())) == 1
    with pytest.raises(InputError, match=r"different settings \(batch 2 -> 4\)"):
        Trainer(config(synthetic_coco, out, resume=True, batch=4))
    smaller = tmp_path / "smaller"  # the same data less two images: the epochs would shift
    shutil.copytree(synthetic_coco, smaller)
    ann = smaller / "annotations" / "instances_train2017.json"
    doc = json.loads(ann.read_text())
    gone = {im["id"] for im in doc["images"][:2]}
    doc["images"] = doc["images"][2:]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] not in gone]
    ann.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"the training set changed \(4 iterations per epoch then, 3 now; or the run"):
        Trainer(config(smaller, out, resume=True))
    # a checkpoint resumed into another run's folder would replace that run's checkpoints and extend its logs
    other = tmp_path / "other-run"
    with Trainer(config(synthetic_coco, other)) as t:
        t.train(max_iterations=1)
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    with pytest.raises(InputError, match=r"other-run holds another run's files .*resume latest_ckpt.pth in its own"):
        Trainer(config(synthetic_coco, other, resume=out / LATEST))
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        torch.save({"model": build_model("yolox-nano", 3).state_dict()}, tmp_path / "weights.pth")
        Trainer(config(synthetic_coco, tmp_path / "other", resume=tmp_path / "weights.pth"))
    with pytest.raises(InputError, match="fewer than one batch"):
        Trainer(config(synthetic_coco, tmp_path / "big", batch=16))
    with pytest.raises(CheckpointError, match="yolox-s"):
        Trainer(config(synthetic_coco, tmp_path / "w", weights=_weights_of("yolox-s", tmp_path)))


def _no_data_reading(monkeypatch):
    def read(*args, **kwargs):
        raise AssertionError("the training set was read")

    monkeypatch.setattr("yolox_deploy.train.trainer.load_detection_set", read)


def test_wrong_weights_and_recipes_are_refused_before_the_data_is_read(synthetic_coco, tmp_path, monkeypatch):
    """A missing --weights file, one of another variant, or a resume without the run's --batch was said only
    after the whole training set was read (and, with --cache, loaded into memory); the batch as "lower --batch"."""
    with Trainer(config(synthetic_coco, tmp_path / "run", batch=4)) as t:
        t.train(max_iterations=1)
    _no_data_reading(monkeypatch)
    with pytest.raises(InputError, match="checkpoint not found"):
        Trainer(config(synthetic_coco, tmp_path / "a", weights=tmp_path / "missing.pth", cache_images=True))
    with pytest.raises(CheckpointError, match="yolox-s"):
        Trainer(config(synthetic_coco, tmp_path / "b", weights=_weights_of("yolox-s", tmp_path)))
    with pytest.raises(InputError, match=r"different settings \(batch 4 -> 64\)"):
        Trainer(config(synthetic_coco, tmp_path / "run", resume=True, batch=64))
    with pytest.raises(InputError, match="no_aug_epochs must be >= 0, got -1"):
        Trainer(config(synthetic_coco, tmp_path / "c", warmup_epochs=0, no_aug_epochs=-1))


def _weights_of(name, tmp_path):
    path = tmp_path / f"{name}.pth"
    torch.save({"model": build_model(name, 80).state_dict()}, path)
    return path


def test_unreadable_image_in_a_loader_worker_is_a_one_line_error(tmp_path):
    root = make_synthetic_coco(tmp_path / "d", num_images=4)
    (root / "train2017" / "000002.jpg").write_bytes(b"not a jpeg")
    with Trainer(config(root, tmp_path / "run", workers=1, batch=4, epochs=1, warmup_epochs=0,
                        no_aug_epochs=0)) as t:
        with pytest.raises(InputError) as e:
            t.train(max_iterations=1)
    msg = str(e.value)
    assert "000002.jpg" in msg and "\n" not in msg and "Traceback" not in msg


def test_loader_workers_give_the_same_batches(synthetic_coco, tmp_path):
    runs = []
    for workers in (0, 2):
        with Trainer(config(synthetic_coco, tmp_path / f"w{workers}", workers=workers)) as t:
            t.sampler.set_epoch(0)
            runs.append([b for b in t._batches()])
    for (a_img, a_t, a_ids), (b_img, b_t, b_ids) in zip(*runs):
        assert torch.equal(a_img, b_img) and torch.equal(a_t, b_t) and a_ids == b_ids


@pytest.mark.gpu
def test_cuda_amp_run_and_resume(synthetic_coco, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (AMP and the CUDA data path)")
    cfg = dict(device="cuda", amp=True, val_split="val2017", eval_interval=1)
    with Trainer(config(synthetic_coco, tmp_path / "gpu", **cfg)) as t:
        assert t.amp and t.scaler.is_enabled()
        result = t.train(max_iterations=6)
    assert all(math.isfinite(v) for v in result.last_losses.values())
    state = load_training_state(tmp_path / "gpu" / LATEST)
    assert state.scaler and state.iteration == 6
    with Trainer(config(synthetic_coco, tmp_path / "gpu", resume=True, **cfg)) as t:
        assert t.scaler.get_scale() == state.scaler["scale"]
        assert t.train().finished
    assert load_model(tmp_path / "gpu" / LATEST).num_classes == 3


# --- slow ----------------------------------------------------------------------------------------------------
def plain_loss(trainer, model) -> float:
    """Mean total loss (no L1) of ``model`` in evaluation mode on every training image, letterboxed at the
    training size without any augmentation, in batches of 8."""
    ds = TrainDataset(trainer.data, trainer.cfg.img_size, AugmentConfig(mosaic_prob=0, hsv_prob=0, flip_prob=0))
    loss_fn = YOLOXLoss(model.num_classes)
    model.eval()
    model.head.training = True  # raw logits from an evaluation-mode network
    totals = []
    try:
        with torch.no_grad():
            for start in range(0, len(ds), 8):
                images, targets, _ = collate([ds[i] for i in range(start, min(start + 8, len(ds)))])
                totals.append(float(loss_fn(model(images.float()), targets, trainer.cfg.img_size).total))
    finally:
        model.head.training = False
    return float(np.mean(totals))


@pytest.mark.slow
def test_fine_tuning_nano_lowers_the_loss_and_keeps_the_training_ap(coco_tiny, nano_pth, tmp_path):
    """A few hundred iterations on coco-tiny/train2017 from the shared nano weights (CPU: tens of minutes)."""
    epochs = int(os.environ.get("YOLOX_FT_EPOCHS", 30))
    cfg = config(coco_tiny, tmp_path / "ft", weights=nano_pth, epochs=epochs, batch=8, img_size=320,
                 warmup_epochs=None, no_aug_epochs=None, multiscale_interval=10, workers=2, cache_images=True,
                 seed=0)
    train_split = open_coco(coco_tiny, "train2017")
    with Trainer(cfg) as t:
        loss_before = plain_loss(t, t.ema.model)
        before = t.evaluate(train_split, img_size=(416, 416)).stats
        start = time.perf_counter()
        result = t.train()
        seconds = time.perf_counter() - start
        after = t.evaluate(train_split, img_size=(416, 416)).stats
        loss_after = plain_loss(t, t.ema.model)
    with open(tmp_path / "ft" / "train_log.csv") as f:
        losses = [float(r["total_loss"]) - float(r["l1_loss"]) for r in csv.DictReader(f)]
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    report = (f"{result.iterations} iterations in {seconds:.0f} s; loss on the training images (no augmentation, "
              f"320 px, EMA weights) {loss_before:.3f} -> {loss_after:.3f}; training-log loss without L1 {first:.3f} "
              f"(first 20 iterations) -> {last:.3f} (last 20); AP on train2017 (416 px) {before['AP']:.4f} -> "
              f"{after['AP']:.4f}, AP50 {before['AP50']:.4f} -> {after['AP50']:.4f}")
    print(report)
    Path(os.environ.get("YOLOX_FT_REPORT", tmp_path / "report.txt")).write_text(report + "\n")
    assert result.iterations >= 200
    assert loss_after < loss_before
    assert after["AP"] >= before["AP"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str, result_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    with Trainer(config(data, out, batch=4, val_split="val2017", eval_interval=1)) as t:
        result = t.train()
        flat = torch.cat([p.detach().flatten().double() for p in t.model.parameters()])
        # BatchNorm statistics are each process's own until they are averaged at the end of each epoch
        stats = torch.cat([b.detach().flatten().double() for n, b in t.model.named_buffers() if "running" in n])
        torch.save({"iterations": result.iterations, "flat": flat, "stats": stats}, Path(result_dir) / f"rank{rank}.pt")


def _ddp_stop_worker(rank: int, world: int, port: int, data: str, out: str, result_dir: str) -> None:
    """A Ctrl-C that reaches rank 1 alone, right after its first step (a signal between two processes' checks)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    with Trainer(config(data, out, batch=4)) as t:
        step = t.step

        def step_then_signal(*args, **kwargs):
            loss = step(*args, **kwargs)
            if rank == 1:
                t._stop.requested = True
            return loss

        t.step = step_then_signal
        with pytest.raises(KeyboardInterrupt):
            t.train()
        torch.save({"iteration": t.iteration}, Path(result_dir) / f"rank{rank}.pt")


def test_a_stop_that_reached_one_process_stops_all_at_one_iteration(synthetic_coco, tmp_path):
    """Each process checked its own stop request: the one without it went on to the next step and waited in its
    gradient exchange with a process that had left (until torchrun killed it)."""
    import torch.multiprocessing as mp

    out, res = tmp_path / "ddp", tmp_path / "res"
    res.mkdir()
    ctx = mp.spawn(_ddp_stop_worker, args=(2, _free_port(), str(synthetic_coco), str(out), str(res)), nprocs=2,
                   join=False)
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "a process did not stop"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    assert [torch.load(res / f"rank{r}.pt", weights_only=True)["iteration"] for r in range(2)] == [1, 1]
    assert load_training_state(out / LATEST).iteration == 1  # written by rank 0 at the iteration both stopped at


@pytest.mark.slow
def test_two_process_gloo_run(synthetic_coco, tmp_path):
    import torch.multiprocessing as mp

    out, res = tmp_path / "ddp", tmp_path / "res"
    res.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(synthetic_coco), str(out), str(res)), nprocs=2, join=True)
    r0, r1 = (torch.load(res / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["iterations"] == r1["iterations"] == 4  # 8 images / global batch 4 x 2 epochs
    assert torch.equal(r0["flat"], r1["flat"])  # DDP keeps the replicas identical
    assert torch.allclose(r0["stats"], r1["stats"], rtol=0, atol=1e-6)  # and the statistics averaged
    assert (out / LATEST).exists() and (out / "best_ckpt.pth").exists()
    with open(out / "train_log.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]  # rank 0 only
    read_checkpoint(out / LATEST)
    shutil.rmtree(res)
