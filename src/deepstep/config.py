"""The training configuration: one dataclass whose field names are the CLI flags.

Values are resolved in this order, each overriding the one before:
defaults < recipe (`--recipe`) < config file (`--config`, TOML or YAML) < flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepstep.errors import DeepstepError, did_you_mean, reason_of

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "muon")
SCHEDULES = ("none", "step", "cosine", "onecycle", "linear", "plateau")
PRECISIONS = ("auto", "32", "bf16", "16")
DEVICES = ("auto", "cpu", "cuda", "mps")
IN_MEMORY = ("auto", "yes", "no")
TASKS = ("auto", "image-classification", "forecasting", "sequence-classification")
FILLS = ("none", "interpolate", "ffill", "drop")
CLASS_WEIGHTS = ("none", "balanced")
MONITORS = ("val_acc", "val_loss")


@dataclass
class TrainConfig:
    """Everything a training run is made from; written to the run folder as config.yaml."""

    data: str = "cifar10-sample"
    task: str = "auto"
    model: str = "lenet"
    model_args: dict[str, Any] = field(default_factory=dict)
    model_file: str | None = None
    pretrained: bool = False
    freeze_backbone: bool = False
    unfreeze_after: int | None = None
    backbone_lr_scale: float = 1.0
    data_dir: str | None = None
    image_size: str | None = None
    resize: int | None = None
    in_memory: str = "auto"
    workers: int = 0
    val_split: float = 0.1
    test_split: float = 0.2
    mean: list[float] | None = None
    std: list[float] | None = None
    strict: bool = False
    labels: str | None = None  # a CSV naming each image's class, in place of class folders
    # sequences: forecasting a CSV column, or classifying one sequence per file
    target: str | None = None
    features: list[str] | None = None
    time: str | None = None
    fill: str = "none"
    lookback: int = 24
    horizon: int = 1
    stride: int = 1
    test_size: float = 0.2
    val_size: float = 0.1
    season: int | None = None
    group_file: str | None = None
    test_groups: list[str] | None = None
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    relative: bool = True
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_grad: float = 0.0  # the gradients' global norm is clipped to this before each step; 0: off
    schedule: str = "none"
    warmup: float = 0.0
    plateau_factor: float | None = None  # --schedule plateau: x this when validation stalls (default 0.1)
    plateau_patience: int | None = None  # --schedule plateau: after this many epochs without improving (default 3)
    lr_start_factor: float = 0.0
    lr_end_factor: float = 0.0
    norm_lr_scale: float = 1.0
    muon_lr: float = 0.24
    muon_momentum: float = 0.6
    label_smoothing: float = 0.0
    class_weights: str = "none"  # balanced: each class's loss weighted by N / (classes x its count)
    lookahead: bool = False
    ema: float = 0.0  # decay of the weights' moving average that is validated and saved; 0: off
    augment: bool = False
    crop_padding: int | None = None
    alternate_flip: bool = False
    cutout: int = 0  # --augment: side of the square set to the mean colour in each image; 0: off
    mixup: float = 0.0  # Beta(a, a) of mixup's share, for images; 0: off
    cutmix: float = 0.0  # Beta(a, a) of cutmix's share, for images; 0: off
    progressive_crop: int | None = None
    progressive_until: float = 0.4
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    patience: int = 0
    monitor: str = "val_acc"  # what picks the best checkpoint and drives --patience; val_loss for forecasting
    out: str | None = None
    resume: bool = False
    recipe: str | None = None
    compile: bool = False
    find_lr: int = 0  # steps of the learning-rate range test to run instead of training; 0: train
    checkpoint_every: int = 0
    micro_batch: int = 0

    def validate(self) -> TrainConfig:
        """Raise DeepstepError naming the first option whose value cannot work."""
        _finite_numbers(self)
        for name in ("num_classes", "input_features"):
            if name in self.model_args:  # a head sized otherwise gives an IndexError in the loss
                raise DeepstepError(
                    f"--model-arg {name}: deepstep sizes the model by the data (its classes, features or "
                    "--horizon); leave it out"
                )
        _positive_int(self, "epochs")
        _positive_int(self, "batch_size")
        if not self.lr > 0:
            raise DeepstepError(f"--lr must be positive, got {self.lr}")
        for name, choices in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
            ("device", DEVICES),
            ("in_memory", IN_MEMORY),
            ("task", TASKS),
            ("fill", FILLS),
            ("class_weights", CLASS_WEIGHTS),
            ("monitor", MONITORS),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise DeepstepError(
                    f"--{flag(name)} {value!r} is not one of {', '.join(choices)}" + did_you_mean(str(value), choices)
                )
        for name in ("val_split", "test_split"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise DeepstepError(f"--{flag(name)} must be in [0, 1), got {value}")
        for name in ("momentum", "muon_momentum", "label_smoothing", "warmup"):
            if not 0 <= getattr(self, name) < 1:
                raise DeepstepError(f"--{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise DeepstepError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.ema < 1:
            raise DeepstepError(f"--ema is a decay per step in [0, 1) (0: off; e.g. 0.999), got {self.ema}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise DeepstepError(
                    f"--{name} must be >= 0: the alpha of the Beta(alpha, alpha) that draws each batch's "
                    f"mixing share (0: off; e.g. 0.2 or 1), got {getattr(self, name)}"
                )
        if self.clip_grad < 0:
            raise DeepstepError(f"--clip-grad must be a gradient norm >= 0 (0: no clipping), got {self.clip_grad}")
        for name in ("lr_start_factor", "lr_end_factor"):
            if not 0 <= getattr(self, name) <= 1:
                raise DeepstepError(f"--{flag(name)} is a fraction of --lr in [0, 1], got {getattr(self, name)}")
        if self.lr_start_factor and not (self.warmup or self.schedule == "onecycle"):
            raise DeepstepError(
                "--lr-start-factor sets where the warm-up starts: add --warmup F or --schedule onecycle"
            )
        if self.lr_end_factor and self.schedule not in ("cosine", "onecycle", "linear"):
            raise DeepstepError(
                f"--lr-end-factor sets where --schedule cosine, onecycle or linear ends; "
                f"--schedule {self.schedule} has no end"
            )
        if (self.plateau_factor is not None or self.plateau_patience is not None) and self.schedule != "plateau":
            given = "--plateau-factor" if self.plateau_factor is not None else "--plateau-patience"
            raise DeepstepError(f"{given} sets how --schedule plateau lowers the rate: add --schedule plateau")
        if self.plateau_factor is not None and not 0 < self.plateau_factor < 1:
            raise DeepstepError(
                f"--plateau-factor multiplies the rate: it must be in (0, 1), got {self.plateau_factor}"
            )
        if self.plateau_patience is not None and self.plateau_patience < 1:
            raise DeepstepError(f"--plateau-patience must be a number of epochs >= 1, got {self.plateau_patience}")
        if not self.muon_lr > 0:
            raise DeepstepError(f"--muon-lr must be positive, got {self.muon_lr}")
        if not self.norm_lr_scale > 0:
            raise DeepstepError(f"--norm-lr-scale must be positive, got {self.norm_lr_scale}")
        if self.find_lr and self.find_lr < 10:
            raise DeepstepError(f"--find-lr takes at least 10 steps (default 100), got {self.find_lr}")
        if self.find_lr and self.resume:
            raise DeepstepError("--find-lr tries learning rates on a fresh model: it cannot --resume a run")
        if self.patience < 0:
            raise DeepstepError(f"--patience must be >= 0 (0 turns early stopping off), got {self.patience}")
        if self.task == "forecasting" and self.monitor != "val_loss":
            raise DeepstepError(f"--monitor {self.monitor}: a forecast has no accuracy; it is chosen by val_loss")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, 3):
                raise DeepstepError(f"--{name} takes 1 or 3 numbers (one per channel), got {len(value)}")
        if (self.mean is None) != (self.std is None):  # before the images are decoded, not after
            raise DeepstepError("give both --mean and --std, or neither (then both are computed on the train part)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise DeepstepError(f"--std values must be positive, got {self.std}")
        if self.image_size is not None:
            parse_image_size(self.image_size)
        if self.resize is not None and self.resize <= 0:
            raise DeepstepError(f"--resize must be a positive number of pixels, got {self.resize}")
        if (self.freeze_backbone or self.unfreeze_after is not None) and not self.pretrained:
            raise DeepstepError("--freeze-backbone and --unfreeze-after need --pretrained")
        if self.unfreeze_after is not None and self.unfreeze_after < 0:
            raise DeepstepError(f"--unfreeze-after must be a number of epochs >= 0, got {self.unfreeze_after}")
        if self.unfreeze_after is not None and not self.freeze_backbone:
            raise DeepstepError("--unfreeze-after N needs --freeze-backbone (it says when to end the freeze)")
        if not self.backbone_lr_scale > 0:
            raise DeepstepError(f"--backbone-lr-scale must be positive, got {self.backbone_lr_scale}")
        for name in ("lookback", "horizon", "stride", "hidden", "layers"):
            _positive_int(self, name)
        for name in ("test_size", "val_size"):
            value = getattr(self, name)
            if value < 0 or (value >= 1 and value != int(value)):
                raise DeepstepError(f"--{flag(name)} is a fraction in [0, 1) or a whole number of steps, got {value}")
        if not 0 <= self.dropout < 1:
            raise DeepstepError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.season is not None and self.season < 0:
            raise DeepstepError(f"--season must be a number of steps >= 0 (0: no season), got {self.season}")
        if self.checkpoint_every < 0:
            raise DeepstepError(
                f"--checkpoint-every must be a number of steps >= 0 (0: each epoch's end), got {self.checkpoint_every}"
            )
        if self.micro_batch < 0:
            raise DeepstepError(
                f"--micro-batch must be a number of examples >= 0 (0: whole batches), got {self.micro_batch}"
            )
        if self.crop_padding is not None and self.crop_padding < 0:
            raise DeepstepError(f"--crop-padding must be a number of pixels >= 0, got {self.crop_padding}")
        if self.cutout < 0:
            raise DeepstepError(f"--cutout must be a side in pixels >= 0 (0: off), got {self.cutout}")
        if self.progressive_crop is not None and self.progressive_crop < 1:
            raise DeepstepError(f"--progressive-crop must be a side in pixels >= 1, got {self.progressive_crop}")
        if not 0 < self.progressive_until <= 1:
            raise DeepstepError(
                f"--progressive-until is a fraction of the epochs in (0, 1], got {self.progressive_until}"
            )
        if self.workers < 0:
            raise DeepstepError(f"--workers must be >= 0 (0: one per core), got {self.workers}")
        if not 0 <= self.seed < 2**32:  # numpy's seeds
            raise DeepstepError(f"--seed must be a whole number from 0 to 2**32 - 1, got {self.seed}")
        return self

    def with_absolute_paths(self) -> TrainConfig:
        """The config with its file paths made absolute (a --data that is a built-in name stays as
        it is), so that the run folder's config.yaml finds the data from any working folder."""
        return dataclasses.replace(self, **{k: absolute_path(k, getattr(self, k)) for k in PATH_OPTIONS})

    def to_dict(self) -> dict[str, Any]:
        """The config with flag names as keys, as written to config.yaml and read back by --config."""
        return {flag(k): v for k, v in dataclasses.asdict(self).items()}


def flag(name: str) -> str:
    return name.replace("_", "-")


PATH_OPTIONS = ("data", "data_dir", "group_file", "model_file", "labels")


def absolute_path(name: str, value: Any) -> Any:
    """`value` of option `name` as an absolute path if it is one: --data, --group-file and --labels
    only if they exist as given (else they name a built-in dataset, or a file inside the data)."""
    if name not in PATH_OPTIONS or not value or (name != "data_dir" and not Path(value).exists()):
        return value
    return os.path.abspath(value)  # not resolve(): the user's own path, symlinks and all


def _finite_numbers(config: TrainConfig) -> None:
    """nan and inf pass every range check written as a comparison (`nan < 0` is false), and
    argparse, TOML and Python all make them from 'nan' and 'inf': refuse them in every number."""
    for name in _field_types():
        value = getattr(config, name)
        numbers = value if isinstance(value, list) else [value]
        bad = [v for v in numbers if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            what = "finite numbers" if isinstance(value, list) else "a finite number"
            raise DeepstepError(f"--{flag(name)} must be {what}, got {bad[0]}")


def _positive_int(config: TrainConfig, name: str) -> None:
    value = getattr(config, name)
    if value <= 0:
        raise DeepstepError(f"--{flag(name)} must be a positive integer, got {value}")


def parse_image_size(text: str) -> tuple[int, int]:
    """'32' -> (32, 32); '64x48' (or '64,48') -> (64, 48) as (height, width)."""
    from deepstep.models.shapes import size_parts

    parts = size_parts(text)
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) <= 0:
        raise DeepstepError(f"--image-size {text!r} is not a size: use 32 or HEIGHTxWIDTH such as 64x48")
    return sizes[0], sizes[1]


# How the CIFAR recipes train: chosen for resnet-cifar on the validation part (batch 256 vs 512,
# lr 0.2-0.8, weight decay, label smoothing, Lookahead; Lookahead's runs are in bench/RESULTS.md).
CIFAR_OPTIMISATION: dict[str, Any] = {
    "batch_size": 256,
    "optimizer": "sgd",
    "lr": 0.4,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "warmup": 0.2,
    "label_smoothing": 0.2,
    "lookahead": True,  # +0.2-0.5 points of validation accuracy (with or without TTA) at 20 epochs, 2 seeds
    "augment": True,
}

# Named presets of config values (`--recipe NAME`); a recipe sits between the defaults
# and the config file, so anything in it can still be overridden.
RECIPES: dict[str, dict[str, Any]] = {
    # The PyTorch CIFAR-10 tutorial, including its Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).
    "tutorial": {
        "model": "lenet",
        "mean": [0.5],
        "std": [0.5],
        "batch_size": 4,
        "optimizer": "sgd",
        "lr": 0.001,
        "momentum": 0.9,
        "epochs": 2,
        "precision": "32",
        "val_split": 0.0,
    },
    # resnet-cifar on CIFAR-10 in about 10 minutes of a 2-core AVX-512/AMX CPU (bf16): 87.6% test in
    # 553 s (before --lookahead) and in 711 s (with it, 88.9% with flip-translate TTA); see bench/RESULTS.md.
    "cifar-fast": {"model": "resnet-cifar", **CIFAR_OPTIMISATION, "epochs": 25},
    # The airbench94 net trained as airbench94 trains it (94.01% test with TTA in 9.9 epochs, n=1000
    # runs, width 64 on an A100): lr 11.5 per 1,024 images in its decoupled form is 1.5 on the mean
    # loss at momentum 0.85, its decay 0.0153 is 0.0020 per step, i.e. 1.33e-3 at that lr. On an
    # H200 (bf16, eager) it reached 90.29% test with flip-translate TTA (89.12% without) in 2.8 s; on
    # a 2-core AVX2 CPU in fp32 (150-170 img/s), 90.35% (89.46%) in 3,108 s, and 90.27% (89.27%) in
    # a second run; on a 2-core AMX CPU in bf16 (418-648 img/s), 90.30% (89.37%) in 938 s; see
    # bench/RESULTS.md. On that CPU add
    # `--micro-batch 256` (20-30% more img/s in alternating runs of one process; with it, 90.41%
    # (89.42%) in 1,085 s on a slower hour; 90.25% (89.59%) in 802 s with the whitening bias stopped
    # after 3 epochs); not set here, since a GPU wants its batches whole.
    "cifar-airbench": {
        "model": "airbench",
        "batch_size": 1024,
        "optimizer": "sgd",
        "lr": 1.5,
        "momentum": 0.85,
        "nesterov": True,
        "weight_decay": 1.33e-3,
        "norm_lr_scale": 64.0,
        "schedule": "onecycle",
        "warmup": 0.23,
        "lr_start_factor": 0.2,
        "lr_end_factor": 0.07,
        "label_smoothing": 0.2,
        "lookahead": True,
        "augment": True,
        "crop_padding": 2,
        "alternate_flip": True,
        "epochs": 10,
    },
    # airbench94's Muon version (94.01% test with TTA in 8 epochs, n=200 runs, on an A100): Muon
    # for the conv filters at lr 0.24, momentum 0.6; SGD-Nesterov at momentum 0.85 for the rest.
    # Its rates per summed loss of 2,000 images, in this model's form (logits x 1/9): head 0.67
    # -> 1.66, norm shifts 0.053 -> 64x that; weight decay 0.004 per step -> 2.4e-3 at that lr;
    # straight down from the first step to 0; no Lookahead. The whitening bias stops after 3
    # epochs as there, but learns at --lr and is not decayed (there: the shifts' rate, down to 0,
    # which `--model-arg whiten_bias=norm` does: validation -0.28 points over seeds 0 and 1).
    # On the 2-core AMX CPU in bf16 with `--micro-batch 256`: 90.31% test with flip-translate TTA
    # (89.07% without) in 679 s, against cifar-airbench's 90.25% (89.59%) in 802 s; seed 1 on a
    # faster hour, 90.34% (89.36%) in 532 s; seed 2 on a slow one, 90.46% (89.32%) in 834 s; seed 3,
    # 90.39% (89.45%) in 553 s; with the matmul weight gradient (engine/backends.py), seed 0 90.13%
    # (89.32%) in 623 s, seed 1 90.41% (89.57%) in 588 s, seed 2 90.28% (89.53%) in 651 s; seed 4 on
    # the fastest hour yet, 90.63% (89.76%) in 320 s; on an H200 (bf16, eager), 90.31% (89.17%) in 2.9 s.
    # With `--val-split 0 --epochs 10` on the AMX CPU, 91.01% (90.01%) on average over seeds 0-3 in
    # 320-467 s of fast hours; see bench/RESULTS.md.
    "cifar-airbench-muon": {
        "model": "airbench",
        "batch_size": 2000,
        "optimizer": "muon",
        "muon_lr": 0.24,
        "muon_momentum": 0.6,
        "lr": 1.66,
        "momentum": 0.85,
        "nesterov": True,
        "weight_decay": 2.4e-3,
        "norm_lr_scale": 64.0,
        "schedule": "linear",
        "label_smoothing": 0.2,
        "augment": True,
        "crop_padding": 2,
        "alternate_flip": True,
        "epochs": 8,
    },
}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def coerce(name: str, value: Any, source: str) -> Any:
    """Check `value` against TrainConfig's type for `name`; ints are accepted for floats."""
    expected = _field_types()[name]
    ok, converted = _coerce(expected, value)
    if not ok:
        raise DeepstepError(f"{source}: {flag(name)} must be {_describe(expected)}, got {value!r}")
    return converted


def _coerce(expected: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(expected):
            ok, converted = _coerce(option, value)
            if ok:
                return True, converted
        return False, None
    if expected is type(None):
        return value is None, None
    if expected is bool:
        return isinstance(value, bool), value
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if expected is str:
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        return ok, str(value) if ok else None
    if origin is list:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            return False, None
        (item_type,) = typing.get_args(expected)
        items = [_coerce(item_type, v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict), value
    raise TypeError(f"no coercion for {expected}")


def _describe(expected: Any) -> str:
    args = [a for a in typing.get_args(expected) if a is not type(None)]
    if args:
        expected = args[0]
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if expected in names:
        return names[expected]
    if typing.get_origin(expected) is list:
        return "a list of numbers"
    return "a table of key = value"


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML or YAML file whose keys are flag names; unknown keys and wrong types are errors."""
    path = Path(path)
    if not path.is_file():
        raise DeepstepError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raise DeepstepError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as err:
        raise DeepstepError(f"config file {path} is not valid {path.suffix[1:].upper()}: {err}") from None
    except Exception as err:  # yaml.YAMLError without importing yaml at module level
        if type(err).__module__.startswith("yaml"):
            first_line = reason_of(err)
            raise DeepstepError(f"config file {path} is not valid YAML: {first_line}") from None
        raise
    if not isinstance(raw, dict):
        raise DeepstepError(f"config file {path} must hold key: value pairs at its top level")
    return check_values(raw, source=str(path))


def check_values(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Map flag-style keys to field names, refusing unknown keys and wrong types."""
    fields = _field_types()
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            if isinstance(value, dict):  # [train] or train: as some other tools' configs have
                raise DeepstepError(
                    f"{source}: unknown section {key!r}; the options go at the top level, one per line "
                    "(as in a run's config.yaml), with model-args the only table"
                )
            known = [flag(f) for f in fields]
            raise DeepstepError(f"{source}: unknown option {key!r}{did_you_mean(flag(name), known)}")
        values[name] = coerce(name, value, source)
    return values


# Defaults that differ by task, applied between the dataclass defaults and a recipe. Recurrent
# nets learn well with Adam at 1e-3 and need more, cheaper epochs than image nets; they stay in
# fp32 because they are small (latency-bound, so bf16 gains little) and regression targets feel
# bf16's 8-bit mantissa.
_SEQUENCE_DEFAULTS = {
    "model": "lstm",
    "optimizer": "adam",
    "lr": 1e-3,
    "epochs": 50,
    "batch_size": 32,
    "precision": "32",
}
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "forecasting": {**_SEQUENCE_DEFAULTS, "monitor": "val_loss"},
    "sequence-classification": _SEQUENCE_DEFAULTS,
}


def with_defaults(saved: dict[str, Any], task: str | None) -> dict[str, Any]:
    """A run's saved config (flag names as keys) with the options it lacks, because it was written
    before they existed, at their defaults for its task: an option comes in at the value that
    keeps what deepstep did before it."""
    defaults = {**TrainConfig().to_dict(), **{flag(k): v for k, v in TASK_DEFAULTS.get(task or "", {}).items()}}
    return {**defaults, **saved}


def preset_source(config: TrainConfig, name: str) -> str:
    """'the tutorial recipe' or 'the default for forecasting' when `name` has the value that preset
    gives it (so a log line does not credit the user with a choice they may not have made), else ''."""
    value = getattr(config, name)
    if config.recipe is not None and RECIPES.get(config.recipe, {}).get(name) == value:
        return f"the {config.recipe} recipe's"
    if TASK_DEFAULTS.get(config.task, {}).get(name) == value:
        return f"the default for {config.task}"
    return ""


def resolve_config(
    file_values: dict[str, Any] | None = None, flags: dict[str, Any] | None = None, task: str | None = None
) -> TrainConfig:
    """Defaults < the task's defaults < recipe < config file < flags, validated. Model arguments
    are merged one by one while the model stays the same (a file's `model-args: {width: 8}` and
    `--model-arg whiten_bias=norm` give both; a `--model` other than the file's drops the file's)."""
    file_values = file_values or {}
    flags = flags or {}
    recipe_name = flags.get("recipe", file_values.get("recipe"))
    values: dict[str, Any] = dict(TASK_DEFAULTS.get(task or "", {}))
    if task is not None:
        values["task"] = task
    layers = [file_values, flags]
    if recipe_name is not None:
        if recipe_name not in RECIPES:
            raise DeepstepError(
                f"unknown recipe {recipe_name!r}{did_you_mean(recipe_name, RECIPES)}; recipes: {', '.join(RECIPES)}"
            )
        layers.insert(0, RECIPES[recipe_name])
    for layer in layers:
        same_model = layer.get("model", values.get("model")) == values.get("model")
        model_args = {**(values.get("model_args", {}) if same_model else {}), **layer.get("model_args", {})}
        values.update(layer)
        values["model_args"] = model_args
    return TrainConfig(**values).validate()
