"""``yolox-train``: a short run end to end, resume, and user errors as one line with exit code 2."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import pytest

from yolox_deploy.cli.train import build_parser, config_from_args, main
from yolox_deploy.errors import InputError
from yolox_deploy.train import LATEST

from ..train.conftest import make_synthetic_coco


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def base_args(data, out):
    return ["--model", "nano", "--data", str(data), "--output", str(out), "--epochs", "1", "--batch", "4",
            "--img-size", "64", "--device", "cpu", "--workers", "0", "--no-progress", "--val-split", ""]


def test_short_run_then_resume_of_a_finished_run(tmp_path):
    data = make_synthetic_coco(tmp_path / "d", num_images=8)
    out = tmp_path / "run"
    rc, stdout, err = run(base_args(data, out))
    assert rc == 0, err
    assert "yolox-nano: 8 images, 3 classes, 2 iterations/epoch x 1 epochs" in stdout
    assert "done: 2 iterations" in stdout
    assert (out / LATEST).exists() and (out / "train_log.csv").exists()
    rc, stdout, err = run(base_args(data, out) + ["--resume"])  # a job resuming until its run ends may run once more
    assert rc == 0 and stdout == (f"nothing to do: {out / LATEST} ends a complete run (epoch 1 ended at iteration 2); "
                                  "resume with more --epochs to train it longer\n")
    assert "resumed" not in err  # it said "resumed ... (epoch 2)" of a 1-epoch run


def test_the_last_line_says_why_there_is_no_ap(tmp_path):
    data = make_synthetic_coco(tmp_path / "d", num_images=4)
    rc, stdout, err = run(base_args(data, tmp_path / "a"))
    assert rc == 0 and "evaluation off (--val-split '')" in stdout, err
    rc, stdout, err = run(base_args(data, tmp_path / "c")[:-2])  # the default split, val2017, is not there
    assert rc == 0 and f"no evaluation ({data} has no val2017 split)" in stdout, err
    rc, stdout, err = run(base_args(data, tmp_path / "b") + ["--eval-interval", "0"])
    assert rc == 0 and "evaluation off (--eval-interval 0)" in stdout, err


def test_user_errors_are_one_line(tmp_path):
    rc, _, err = run(base_args(tmp_path / "missing", tmp_path / "run"))
    assert rc == 2 and err.strip().startswith("error: dataset folder not found") and len(err.strip().splitlines()) == 1
    data = make_synthetic_coco(tmp_path / "d", num_images=2)
    rc, _, err = run(base_args(data, tmp_path / "run2"))
    assert rc == 2 and "fewer than one batch of 4" in err
    rc, _, err = run(base_args(data, tmp_path / "run3") + ["--resume"])
    assert rc == 2 and "nothing to resume" in err
    rc, _, err = run(["--model", "yolox-q", "--data", str(data)])
    assert rc == 2 and "unknown model" in err
    rc, _, err = run(base_args(data, tmp_path / "run4") + ["--val-split", "vall2017"])  # a split named must exist
    assert rc == 2 and "--val-split vall2017: " in err and "(its splits: train2017)" in err
    rc, _, err = run(base_args(data, tmp_path / "run5") + ["--train-split", "train"])
    assert rc == 2 and "missing annotations/instances_train.json (it has the split train2017)" in err
    (tmp_path / "afile").write_text("x")
    rc, _, err = run(base_args(tmp_path / "missing", tmp_path / "afile"))  # said before the data is looked at
    assert rc == 2 and err.strip() == f"error: {tmp_path / 'afile'} is a file, not a folder; give a folder to write into"


def test_a_resume_without_epochs_keeps_the_runs(tmp_path, caplog):
    """``yolox-train ... --resume`` without --epochs went on to the default 300 epochs (with a warning)."""
    from yolox_deploy.train import Trainer

    data = make_synthetic_coco(tmp_path / "d", num_images=8)
    out = tmp_path / "run"
    assert run(base_args(data, out))[0] == 0
    argv = [a for a in base_args(data, out) if a not in ("--epochs", "1")] + ["--resume"]
    with Trainer(config_from_args(build_parser().parse_args(argv))) as t:
        assert t.cfg.epochs == 1 and t.complete
    assert "instead of" not in caplog.text
    with Trainer(config_from_args(build_parser().parse_args(argv + ["--epochs", "2"]))) as t:
        assert t.cfg.epochs == 2 and not t.complete  # given: the run is extended


def test_arguments_map_onto_the_config(tmp_path):
    args = build_parser().parse_args(["--model", "s", "--data", "d", "--img-size", "480", "640", "--lr", "0.0002",
                                      "--no-multiscale", "--no-ema", "--resume", "x.pth", "--sync-bn"])
    cfg = config_from_args(args)
    assert cfg.img_size == (480, 640) and cfg.lr_per_image == 0.0002 and not cfg.multiscale and not cfg.ema
    assert str(cfg.resume) == "x.pth" and cfg.sync_bn and cfg.batch == 64 and cfg.epochs is None
    resolved = cfg.resolved()
    # the authors' exps/default/yolox_s.py keeps yolox_base's augmentation; only nano and tiny weaken it
    assert resolved.model == "yolox-s" and resolved.mosaic_scale == (0.1, 2.0) and resolved.mixup is True
    assert resolved.epochs == 300 and resolved.warmup_epochs == 5 and resolved.no_aug_epochs == 15
    tiny = dataclasses.replace(cfg, model="tiny").resolved()
    assert tiny.mosaic_scale == (0.5, 1.5) and tiny.mixup is False


@pytest.mark.parametrize("model,given,train,evaluated,k", [
    ("nano", None, 416, 416, (10, 20)),
    ("tiny", None, 640, 416, (10, 20)),  # its file's input_scale is never read: 640 canvases, sides 320-640
    ("s", None, 640, 640, (15, 25)),  # 480..800, the authors' multiscale_range 5
    ("tiny", 512, 512, 512, (11, 21)),  # a size given serves training and evaluation
    ("tiny", 640, 640, 416, (10, 20)),  # the recipe's own size, stated: still the recipe
    ("tiny", 416, 416, 416, (10, 20)),  # Tiny's training size before: its runs resume with --img-size 416
])
def test_training_and_evaluation_sizes_follow_the_authors_recipe(model, given, train, evaluated, k):
    argv = ["--model", model, "--data", "d"] + ([] if given is None else ["--img-size", str(given)])
    cfg = config_from_args(build_parser().parse_args(argv)).resolved()
    assert (cfg.img_size, cfg.eval_size, cfg.multiscale_range) == ((train, train), (evaluated, evaluated), k)


@pytest.mark.parametrize("cpus,given,workers", [(2, None, 2), (16, None, 4), (2, 3, 3)])
def test_loader_workers_default_to_at_most_one_per_usable_cpu(monkeypatch, cpus, given, workers):
    """Four workers by default on a 2-CPU machine competed with the training (and PyTorch warned of it)."""
    monkeypatch.setattr("yolox_deploy.train.config.usable_cpus", lambda: cpus)
    argv = ["--model", "nano", "--data", "d"] + ([] if given is None else ["--workers", str(given)])
    assert config_from_args(build_parser().parse_args(argv)).resolved().workers == workers


@pytest.mark.parametrize("field,value,message", [("lr_per_image", float("nan"), "lr_per_image must be a finite number"),
                                                 ("lr_per_image", -1e-3, "learning rate"),
                                                 ("workers", -1, "workers must be >= 0"),
                                                 ("batch", "40", "batch must be an integer, got '40'"),
                                                 ("epochs", 1.5, "epochs must be an integer, got 1.5"),
                                                 ("seed", True, "seed must be an integer"),
                                                 ("flip_prob", "0.5", "flip_prob must be a finite number")])
def test_bad_numbers_are_refused(field, value, message):
    cfg = config_from_args(build_parser().parse_args(["--model", "nano", "--data", "d"]))
    with pytest.raises(InputError, match=message):
        dataclasses.replace(cfg, **{field: value}).resolved()
