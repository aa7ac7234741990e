"""``yolox-train``: train or fine-tune YOLOX on a COCO-format dataset with the paper's recipe.

    yolox-train --model yolox-s --data datasets/mine --weights yolox_s.pth --epochs 50 --batch 16
    torchrun --nproc-per-node 4 -m yolox_deploy.cli.train --model yolox-s --data datasets/coco --batch 64

The dataset folder holds ``annotations/instances_<split>.json`` and ``<split>/`` images (train2017 for
training, val2017 for the periodic evaluation when present). Checkpoints land in ``--output``:
``latest_ckpt.pth``, ``best_ckpt.pth``, ``last_mosaic_epoch_ckpt.pth`` (the authors' layout; ``Detector``,
``yolox-eval`` and ``yolox-export`` read them with no other flag), with ``train_log.csv``, ``eval_log.csv``
and TensorBoard events.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..train.config import DEFAULT_EPOCHS, DEFAULT_VAL_SPLIT, DEFAULT_WORKERS, TrainConfig
from ..train.dataset import CACHE_MEMORY_SHARE
from ..zoo import VARIANTS
from .common import cli_entry, description, main_guard


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yolox-train", description=description(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"variant: {', '.join(VARIANTS)}")
    p.add_argument("--data", required=True, help="COCO-format folder: annotations/instances_<split>.json + <split>/")
    p.add_argument("--weights", help="start from these weights (e.g. the authors' COCO checkpoint, or its variant "
                                     "name, yolox-s, to fetch it); the class head "
                                     "is taken over by class name when the checkpoint has every class of the data, "
                                     "by position when the class counts agree, else initialised afresh")
    p.add_argument("--num-classes", type=int, help="expected number of classes (checked against the dataset)")
    p.add_argument("--epochs", type=int, help=f"epochs (default {DEFAULT_EPOCHS}; a --resume keeps the run's)")
    p.add_argument("--batch", type=int, default=64, help="total batch over all processes (default 64)")
    p.add_argument("--img-size", nargs="+", type=int, metavar="N",
                   help="training size, one number or height width, also the evaluation size and the one the "
                        "checkpoints run at, except for the recipe's own (default: the variant's recipe: nano 416; "
                        "tiny trains at 640 and is evaluated at 416, as the authors' experiment files; others 640)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--output", default="runs/train", help="output folder (default runs/train)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue the run in --output (or from CKPT) at the iteration it stopped")
    g = p.add_argument_group("recipe")
    g.add_argument("--train-split", default="train2017", help="training split (default train2017)")
    g.add_argument("--val-split", help=f"evaluation split (default {DEFAULT_VAL_SPLIT}, skipped when absent; a split "
                   "named here must exist)")
    g.add_argument("--eval-interval", type=int, default=10, help="evaluate every N epochs (default 10; 0: never)")
    g.add_argument("--warmup-epochs", type=int, help="warm-up epochs (default 5, at most a quarter of --epochs)")
    g.add_argument("--no-aug-epochs", type=int,
                   help="final epochs without Mosaic/MixUp, with the L1 loss (default 15, at most a quarter of --epochs)")
    g.add_argument("--lr", type=float, help="learning rate per image (default 0.01 / 64)")
    g.add_argument("--no-multiscale", action="store_true", help="train at --img-size only")
    g.add_argument("--no-ema", action="store_true", help="no EMA of the weights")
    g.add_argument("--no-amp", action="store_true", help="FP32 on CUDA too")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (torchrun)")
    g.add_argument("--workers", type=int, help=f"data-loading processes per training process (default "
                                               f"{DEFAULT_WORKERS}, or one per usable CPU when there are fewer)")
    g.add_argument("--seed", type=int, default=0, help="seed of the data order, augmentation and initialisation")
    g.add_argument("--cache", action="store_true",
                   help="read every image once before training and keep it in memory, resized to the training size "
                        f"(refused when that takes over {CACHE_MEMORY_SHARE * 100:.0f}%% of the memory available)")
    g.add_argument("--skip-missing", action="store_true",
                   help="skip images listed in the annotations but missing on disk (default: stop with an error)")
    g.add_argument("--save-history", action="store_true", help="also keep a checkpoint of every epoch")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    extra = {}
    if args.lr is not None:
        extra["lr_per_image"] = args.lr
    return TrainConfig(
        model=args.model, data=Path(args.data), output=Path(args.output),
        weights=Path(args.weights) if args.weights else None, num_classes=args.num_classes,
        train_split=args.train_split, epochs=args.epochs, batch=args.batch,
        val_split=DEFAULT_VAL_SPLIT if args.val_split is None else args.val_split or None,  # "": no evaluation
        img_size=tuple(args.img_size) if args.img_size else None, device=args.device, workers=args.workers,
        seed=args.seed, warmup_epochs=args.warmup_epochs, no_aug_epochs=args.no_aug_epochs,
        ema=not args.no_ema, amp=not args.no_amp, sync_bn=args.sync_bn, multiscale=not args.no_multiscale,
        eval_interval=args.eval_interval, save_history=args.save_history, cache_images=args.cache,
        skip_missing=args.skip_missing, resume=Path(args.resume) if isinstance(args.resume, str) else args.resume,
        progress=not args.no_progress, **extra)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.val_split and args.eval_interval != 0 and Path(args.data).is_dir():
        from ..eval.coco import coco_splits  # a split the user named: a typo must not cost the evaluation

        if args.val_split not in (found := coco_splits(args.data)):
            raise InputError(f"--val-split {args.val_split}: {args.data} has no annotations/instances_{args.val_split}"
                             f".json (its splits: {', '.join(found) or 'none'})")
    from ..train.trainer import Trainer

    with Trainer(config_from_args(args)) as trainer:
        if trainer.complete:
            if trainer.dist.is_main:
                print(f"nothing to do: {trainer.resume_path} ends a complete run (epoch {trainer.cfg.epochs} ended at "
                      f"iteration {trainer.iteration}); resume with more --epochs to train it longer")
            return 0
        if trainer.dist.is_main:
            cfg = trainer.cfg
            print(f"{cfg.model}: {len(trainer.data)} images, {trainer.data.num_classes} classes, "
                  f"{trainer.iters_per_epoch} iterations/epoch x {cfg.epochs} epochs, batch {cfg.batch}, "
                  f"{cfg.img_size[0]}x{cfg.img_size[1]}"
                  + (f" (evaluated at {cfg.eval_size[0]}x{cfg.eval_size[1]})" if cfg.eval_size != cfg.img_size else "")
                  + f", device {trainer.device}"
                  + (f", {trainer.dist.world_size} processes" if trainer.dist.enabled else ""))
        result = trainer.train()
    if trainer.dist.is_main:
        cfg = trainer.cfg
        if result.best is not None:
            ap = f"best AP {result.best_ap:.4f}"
        elif cfg.eval_interval == 0:
            ap = "evaluation off (--eval-interval 0)"
        elif not cfg.val_split:
            ap = "evaluation off (--val-split '')"
        else:
            ap = f"no evaluation ({cfg.data} has no {cfg.val_split} split)"
        print(f"done: {result.iterations} iterations, {ap}; checkpoints in {result.output}")
    return 0


if __name__ == "__main__":
    main_guard(main)
