"""Training configuration: every knob of the recipe, with the paper's values as defaults.

Values left ``None`` are filled in by :meth:`TrainConfig.resolved` from the variant (``zoo.py``): training
input size (nano 416, others 640: Tiny's experiment file trains at 640, see ``zoo.ModelSpec``) and evaluation
size (the variant's test size, or a training size of the run's own), Mosaic scale range and probability,
MixUp on/off, multi-scale range; warm-up and no-augmentation epochs default to the paper's 5 and 15, each
capped at a quarter of ``epochs`` so short fine-tuning runs keep a cosine phase. The no-augmentation phase is
the last ``no_aug_epochs`` epochs, as the paper says (the authors' trainer switches one epoch earlier, at
``epoch + 1 == max_epoch - no_aug_epochs``, so its runs have 16).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..hub import released_variant_for
from ..utils.cpus import usable_cpus
from ..utils.sizes import parse_img_size
from ..utils.values import is_finite_number, is_integer
from ..zoo import get_spec
from .dataset import AugmentConfig
from .optim import BASE_LR_PER_IMAGE
from .schedule import MIN_SIDE, default_multiscale_range

INTEGER_FIELDS = ("num_classes", "epochs", "batch", "workers", "seed", "warmup_epochs", "no_aug_epochs",
                  "multiscale_interval", "eval_interval")
NUMBER_FIELDS = ("lr_per_image", "momentum", "weight_decay", "min_lr_ratio", "ema_decay", "mosaic_prob", "mixup_prob",
                 "hsv_prob", "flip_prob", "degrees", "translate", "shear")


DEFAULT_VAL_SPLIT = "val2017"  # evaluated when the dataset has it
DEFAULT_WORKERS = 4
DEFAULT_EPOCHS = 300


@dataclass
class TrainConfig:
    """What to train, on what, and how. Paths may be ``str``; sizes ``(height, width)``."""

    model: str
    data: Path
    output: Path = Path("runs/train")
    weights: Path | None = None
    num_classes: int | None = None
    train_split: str = "train2017"
    val_split: str | None = DEFAULT_VAL_SPLIT
    epochs: int | None = None              # None: DEFAULT_EPOCHS, or a resumed run's
    batch: int = 64                        # total over all processes
    img_size: tuple[int, int] | None = None   # training input size
    eval_size: tuple[int, int] | None = None  # evaluation, and what the checkpoints run at
    device: str = "auto"
    workers: int | None = None             # None: DEFAULT_WORKERS, or one per usable CPU when fewer
    seed: int = 0
    # optimiser and schedule
    lr_per_image: float = BASE_LR_PER_IMAGE
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int | None = None
    no_aug_epochs: int | None = None
    min_lr_ratio: float = 0.05
    ema: bool = True
    ema_decay: float = 0.9998
    amp: bool = True                       # CUDA only
    sync_bn: bool = False
    # augmentation
    multiscale: bool = True
    multiscale_range: tuple[int, int] | None = None
    multiscale_interval: int = 10
    mosaic_prob: float | None = None
    mosaic_scale: tuple[float, float] | None = None
    mixup: bool | None = None
    mixup_prob: float = 1.0
    mixup_scale: tuple[float, float] = (0.5, 1.5)
    hsv_prob: float = 1.0
    flip_prob: float = 0.5
    degrees: float = 10.0
    translate: float = 0.1
    shear: float = 2.0
    # bookkeeping
    eval_interval: int = 10
    save_history: bool = False
    cache_images: bool = False
    skip_missing: bool = False
    resume: bool | Path = False
    progress: bool = True
    tensorboard: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in from the variant, validated."""
        for name in INTEGER_FIELDS:
            value = getattr(self, name)
            if value is not None and not is_integer(value):
                raise InputError(f"{name} must be an integer, got {value!r}")
        for name in NUMBER_FIELDS:
            value = getattr(self, name)
            if value is not None and not is_finite_number(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        spec = get_spec(self.model)
        released_variant_for(self.weights, spec.name)  # before the data is read, not after
        weights = Path(self.weights) if self.weights else None
        if weights is not None and weights.exists():  # recorded in the checkpoints: a resume from another
            weights = weights.absolute()                # folder compares it with its own --weights
        c = dataclasses.replace(self, model=spec.name, data=Path(self.data), output=Path(self.output),
                                weights=weights)
        c.img_size = parse_img_size(c.img_size) if c.img_size is not None else tuple(spec.train_size)
        if c.eval_size is not None:
            c.eval_size = parse_img_size(c.eval_size)
        else:  # a size of the run's own serves both; the recipe's (its training size given or not) its own pair
            c.eval_size = c.img_size if c.img_size != tuple(spec.train_size) else tuple(spec.test_size)
        if min(c.img_size) < MIN_SIDE:
            raise InputError(f"training inputs need sides of at least {MIN_SIDE} (at {min(c.img_size)} the stride-32 "
                             f"feature map is one cell), got {c.img_size[0]}x{c.img_size[1]}")
        if c.seed < 0:
            raise InputError(f"seed must be >= 0, got {c.seed}")
        if c.epochs is None:
            c.epochs = DEFAULT_EPOCHS
        if c.epochs < 1:
            raise InputError(f"epochs must be >= 1, got {c.epochs}")
        if c.batch < 1:
            raise InputError(f"batch must be >= 1, got {c.batch}")
        for name in ("warmup_epochs", "no_aug_epochs"):
            if getattr(c, name) is not None and getattr(c, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(c, name)}")
        if c.warmup_epochs is None:
            c.warmup_epochs = min(5, c.epochs // 4)
        if c.no_aug_epochs is None:
            c.no_aug_epochs = min(15, c.epochs // 4)
        c.check_phases()
        if c.mosaic_prob is None:
            c.mosaic_prob = spec.mosaic_prob
        if c.mosaic_scale is None:
            c.mosaic_scale = tuple(spec.mosaic_scale)
        if c.mixup is None:
            c.mixup = spec.mixup
        c.check_augmentation()
        if c.multiscale and c.multiscale_range is None:
            c.multiscale_range = default_multiscale_range(spec.name, c.img_size)
        if c.multiscale_range is not None and not (MIN_SIDE // 32 <= c.multiscale_range[0] <= c.multiscale_range[1]):
            raise InputError(f"multi-scale range {tuple(c.multiscale_range)} (sides 32 k) must be increasing and "
                             f"start at {MIN_SIDE // 32} or more")
        if c.multiscale_interval < 1 or c.eval_interval < 0:
            raise InputError("multiscale interval must be >= 1 and eval interval >= 0")
        if c.num_classes is not None and c.num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {c.num_classes}")
        if not (math.isfinite(c.lr_per_image) and c.lr_per_image > 0):
            raise InputError(f"learning rate per image must be a positive number, got {c.lr_per_image}")
        if c.workers is None:  # more workers than CPUs only compete with the training for them
            c.workers = min(DEFAULT_WORKERS, usable_cpus())
        if c.workers < 0:
            raise InputError(f"workers must be >= 0, got {c.workers}")
        return c

    def check_augmentation(self) -> None:
        """Refuse probabilities outside [0, 1], scale ranges other than two increasing positive numbers and
        negative geometry (they failed at the first sample, or silently left every box out of the image)."""
        for name in ("mosaic_prob", "mixup_prob", "hsv_prob", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("mosaic_scale", "mixup_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_finite_number, value))
                    and 0 < value[0] <= value[1]):
                raise InputError(f"{name} must be two numbers 0 < low <= high, got {value!r}")
        for name in ("degrees", "translate", "shear"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def check_phases(self) -> None:
        """Refuse warm-up and no-augmentation phases longer than the run together."""
        if self.warmup_epochs + self.no_aug_epochs > self.epochs:
            raise InputError(f"{self.warmup_epochs} warm-up + {self.no_aug_epochs} no-augmentation epochs do not fit "
                             f"in {self.epochs} epochs")

    def no_aug(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` is one of the last ``no_aug_epochs`` (no Mosaic/MixUp, L1 loss on)."""
        return epoch >= self.epochs - int(self.no_aug_epochs or 0)

    def augment(self) -> AugmentConfig:
        return AugmentConfig(mosaic_prob=float(self.mosaic_prob), mosaic_scale=tuple(self.mosaic_scale),
                             mixup_prob=self.mixup_prob, mixup_scale=tuple(self.mixup_scale),
                             enable_mixup=bool(self.mixup), hsv_prob=self.hsv_prob, flip_prob=self.flip_prob,
                             degrees=self.degrees, translate=self.translate, shear=self.shear)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (stored in checkpoints, which are read with ``weights_only=True``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out
