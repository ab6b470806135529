"""deepstep train: fit a model on the train part, validating every epoch."""

from __future__ import annotations

import argparse
from typing import Any

from deepstep.cli.common import formatter, key_value, progress_enabled
from deepstep.config import (
    CLASS_WEIGHTS,
    DEVICES,
    FILLS,
    IN_MEMORY,
    MONITORS,
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    SCHEDULES,
    TASKS,
    TrainConfig,
)

EXAMPLES = """\
examples:
  deepstep train --data cifar10-sample --model lenet --epochs 10
  deepstep train --data ../shared/data/cifar10-jpeg.tar.gz --model lenet --recipe tutorial
  deepstep train --data photos/ --model resnet18 --image-size 128 --augment
  deepstep train --data cifar10-sample --model-file mynet.py --model my-net   # your own model (README: Your own model)
  deepstep train --config experiment.toml --lr 0.05          # flags override the file
  deepstep train --data cifar10-sample --model lenet --find-lr   # which --lr? the range test, plotted
  deepstep train --out runs/lenet-cifar10 --resume --epochs 20
  deepstep train --data airline-passengers.csv --target Passengers --model lstm --lookback 24 --horizon 12 --test-size 24
  deepstep train --data IndoorMovement.zip --model lstm --bidirectional --group-file MovementAAL_DatasetGroup.csv --test-groups 3

The run folder (--out, default runs/MODEL-DATA) receives config.yaml, run.json, metrics.csv,
curves.png and checkpoints/ (best and last). The test part is never used here: measure it
once with `deepstep evaluate RUN`.
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# (flag, argparse keywords); the flag names are TrainConfig's fields with dashes.
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "data",
        {
            "metavar": "D",
            "help": "built-in dataset (see `deepstep datasets`), image folder or .tar.gz/.zip of one, CSV series, "
            "or labelled sequences (a folder or .zip of CSVs, or an .npz); default cifar10-sample",
        },
    ),
    (
        "labels",
        {
            "metavar": "FILE.csv",
            "help": "images: a CSV of 'image,class' rows naming each image's class, for a folder of images "
            "without class folders (Kaggle's layout); looked for inside --data too",
        },
    ),
    (
        "task",
        {
            "choices": TASKS,
            "help": "default auto: a .csv or built-in series is forecast, labelled sequences are classified, else images",
        },
    ),
    ("model", {"metavar": "M", "help": "model name (see `deepstep models`; default lenet, lstm for sequences)"}),
    (
        "model-file",
        {
            "metavar": "FILE.py",
            "help": "a Python file of yours that registers models with @deepstep.register_model; "
            "then --model names one of them",
        },
    ),
    (
        "model-arg",
        {
            "dest": "model_args",
            "metavar": "KEY=VALUE",
            "type": key_value,
            "action": "append",
            "help": "a model argument, e.g. width=32 (repeatable; added to the config file's for the same model)",
        },
    ),
    (
        "pretrained",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "start from the model's ImageNet weights (torchvision models) with a new head, "
            "and use the weights' own pre-processing",
        },
    ),
    (
        "freeze-backbone",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "with --pretrained: train the head only (backbone weights and batch-norm statistics fixed)",
        },
    ),
    (
        "unfreeze-after",
        {"type": int, "metavar": "N", "help": "with --freeze-backbone: train everything from epoch N+1 on"},
    ),
    (
        "backbone-lr-scale",
        {
            "type": float,
            "metavar": "F",
            "help": "discriminative learning rates: the backbone learns at F x --lr, the head at --lr (default 1)",
        },
    ),
    (
        "data-dir",
        {
            "metavar": "DIR",
            "help": "cache for downloads, unpacked archives and decoded images (env DEEPSTEP_DATA, default ~/.cache/deepstep)",
        },
    ),
    ("image-size", {"metavar": "N|HxW", "help": "resize images to this instead of the model's declared input size"}),
    (
        "resize",
        {
            "type": int,
            "metavar": "N",
            "help": "scale the short side to N before the center crop (e.g. 256 with --image-size 224); "
            "default: just enough to cover the crop",
        },
    ),
    (
        "in-memory",
        {
            "choices": IN_MEMORY,
            "help": "hold the decoded images in memory (auto: if they need at most a quarter of RAM), "
            "or stream files with per-image torchvision transforms",
        },
    ),
    ("workers", {"type": int, "metavar": "N", "help": "processes decoding/streaming images (default 0: one per core)"}),
    (
        "val-split",
        {
            "type": float,
            "metavar": "F",
            "help": "fraction of each class of the train part held out for validation (default 0.1)",
        },
    ),
    (
        "test-split",
        {
            "type": float,
            "metavar": "F",
            "help": "fraction carved as the test part when a folder has no test/ (default 0.2)",
        },
    ),
    (
        "mean",
        {
            "type": _floats,
            "metavar": "M[,M,M]",
            "help": "normalisation mean per channel, in [0, 1] (default: computed on the train part)",
        },
    ),
    (
        "std",
        {
            "type": _floats,
            "metavar": "S[,S,S]",
            "help": "normalisation std per channel (default: computed on the train part)",
        },
    ),
    (
        "strict",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "stop at the first unreadable image instead of skipping it with a warning",
        },
    ),
    ("target", {"metavar": "COL", "help": "sequences: the CSV column to forecast"}),
    (
        "features",
        {
            "type": _names,
            "metavar": "COL,COL",
            "help": "sequences: other CSV columns the model reads (categorical ones are one-hot encoded; 'all': every column)",
        },
    ),
    (
        "time",
        {
            "metavar": "COL[,COL]",
            "help": "sequences: the time column(s) (default: inferred, e.g. Month or year,month,day,hour)",
        },
    ),
    ("fill", {"choices": FILLS, "help": "sequences: what to do with missing values (default none: they are an error)"}),
    ("lookback", {"type": _int, "metavar": "L", "help": "forecasting: steps the model reads (default 24)"}),
    ("horizon", {"type": _int, "metavar": "H", "help": "forecasting: steps it predicts at once (default 1)"}),
    ("stride", {"type": _int, "metavar": "S", "help": "forecasting: steps between training windows (default 1)"}),
    (
        "test-size",
        {"type": float, "metavar": "N|F", "help": "sequences: test part, steps (N >= 1) or a fraction (default 0.2)"},
    ),
    (
        "val-size",
        {"type": float, "metavar": "N|F", "help": "sequences: validation part, steps or a fraction (default 0.1)"},
    ),
    (
        "season",
        {
            "type": int,
            "metavar": "M",
            "help": "forecasting: season length (default from the frequency: 12 monthly; 0: none)",
        },
    ),
    (
        "relative",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "forecasting: predict changes from the last observed value (default on), so trends extrapolate",
        },
    ),
    ("group-file", {"metavar": "CSV", "help": "sequence classification: 'id,group' rows, for --test-groups"}),
    (
        "test-groups",
        {"type": _names, "metavar": "G,G", "help": "sequence classification: hold these groups out as the test part"},
    ),
    ("hidden", {"type": _int, "metavar": "N", "help": "rnn/lstm/gru: hidden units per layer (default 64)"}),
    ("layers", {"type": _int, "metavar": "N", "help": "rnn/lstm/gru: stacked layers (default 1)"}),
    (
        "dropout",
        {"type": float, "metavar": "P", "help": "rnn/lstm/gru: dropout between layers and before the head (default 0)"},
    ),
    ("bidirectional", {"action": argparse.BooleanOptionalAction, "help": "rnn/lstm/gru: read both ways"}),
    ("epochs", {"type": _int, "metavar": "N", "help": "passes over the train part (default 10; 50 for sequences)"}),
    (
        "batch-size",
        {
            "type": _int,
            "metavar": "N",
            "help": "examples (images, windows, sequences) per mini-batch, one optimizer step each (default 64; 32 for sequences)",
        },
    ),
    (
        "micro-batch",
        {
            "type": _int,
            "metavar": "N",
            "help": "forward and backward each batch N examples at a time, summing the gradients into the "
            "batch's one optimizer step: the same batch in less memory, and faster where smaller parts fit "
            "the caches (default 0: whole batches; batch norm sees each part alone)",
        },
    ),
    ("lr", {"type": float, "metavar": "LR", "help": "learning rate (default 0.01)"}),
    (
        "optimizer",
        {"choices": OPTIMIZERS, "help": "default sgd; muon: Muon for conv filters (--muon-lr), SGD for the rest"},
    ),
    ("momentum", {"type": float, "metavar": "M", "help": "SGD momentum (default 0.9)"}),
    ("nesterov", {"action": argparse.BooleanOptionalAction, "help": "Nesterov momentum (SGD)"}),
    (
        "weight-decay",
        {"type": float, "metavar": "WD", "help": "L2 penalty on weights, not on biases or norms (default 0)"},
    ),
    (
        "clip-grad",
        {
            "type": float,
            "metavar": "NORM",
            "help": "clip the gradients' global L2 norm to NORM before each step, the guard of recurrent "
            "nets against exploding gradients (default 0: off; 1 is a common choice)",
        },
    ),
    (
        "schedule",
        {
            "choices": SCHEDULES,
            "help": "learning-rate schedule, stepped every batch (default none); plateau: lowered when "
            "validation stops improving",
        },
    ),
    (
        "plateau-factor",
        {"type": float, "metavar": "F", "help": "--schedule plateau: multiply the rate by F (default 0.1)"},
    ),
    (
        "plateau-patience",
        {
            "type": _int,
            "metavar": "N",
            "help": "--schedule plateau: after N epochs in a row without a better val metric (default 3)",
        },
    ),
    (
        "warmup",
        {
            "type": float,
            "metavar": "F",
            "help": "fraction of training with a linear warm-up of the learning rate (default 0)",
        },
    ),
    (
        "lr-start-factor",
        {
            "type": float,
            "metavar": "F",
            "help": "the warm-up starts at F x --lr (default 0; airbench94: 0.2)",
        },
    ),
    (
        "lr-end-factor",
        {
            "type": float,
            "metavar": "F",
            "help": "--schedule onecycle, cosine or linear ends at F x --lr (default 0; airbench94: 0.07)",
        },
    ),
    (
        "norm-lr-scale",
        {
            "type": float,
            "metavar": "S",
            "help": "the biases of normalisation layers learn at S x --lr, decayed per step as much as the "
            "weights (default 1, not decayed; airbench94: 64)",
        },
    ),
    (
        "muon-lr",
        {"type": float, "metavar": "LR", "help": "--optimizer muon: the conv filters' learning rate (default 0.24)"},
    ),
    (
        "muon-momentum",
        {"type": float, "metavar": "M", "help": "--optimizer muon: the filters' Nesterov momentum (default 0.6)"},
    ),
    ("label-smoothing", {"type": float, "metavar": "F", "help": "cross-entropy label smoothing (default 0)"}),
    (
        "class-weights",
        {
            "choices": CLASS_WEIGHTS,
            "help": "balanced: weight each class's training loss by N / (classes x its count in the train part), "
            "for classes of unequal size, as Keras's class_weight (default none)",
        },
    ),
    (
        "lookahead",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "airbench's Lookahead: from 30%% of the steps on, every 5 steps average the weights into a slow "
            "copy (ever more strongly) and go on from it; each epoch ends on the slow copy",
        },
    ),
    (
        "ema",
        {
            "type": float,
            "metavar": "DECAY",
            "help": "validate, save and predict with a moving average of the weights, DECAY x average + "
            "(1 - DECAY) x weights after each step (default 0: off; e.g. 0.999, an average over about 1,000 steps)",
        },
    ),
    (
        "augment",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "random crop within a reflected border (--crop-padding) and horizontal flip, on whole batches "
            "(images streamed from disk: a random resized crop and flip)",
        },
    ),
    (
        "crop-padding",
        {
            "type": _int,
            "metavar": "P",
            "help": "--augment: the crop moves up to P pixels each way (default an eighth of the side: 4 at 32x32)",
        },
    ),
    (
        "alternate-flip",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "--augment: flip each image in every other epoch (at random in the first) instead of at random "
            "each epoch (airbench's derandomised flip; images held in memory)",
        },
    ),
    (
        "cutout",
        {
            "type": _int,
            "metavar": "SIZE",
            "help": "--augment: set a SIZExSIZE square of each training image, at a random place inside it, to the "
            "mean colour (Cutout; airbench96 uses 12 at 32x32; default 0: off)",
        },
    ),
    (
        "mixup",
        {
            "type": float,
            "metavar": "ALPHA",
            "help": "blend each training image with another of its batch, and their labels alike, by a share drawn "
            "from Beta(ALPHA, ALPHA) each batch (mixup; default 0: off; e.g. 0.2, or 0.8 as timm)",
        },
    ),
    (
        "cutmix",
        {
            "type": float,
            "metavar": "ALPHA",
            "help": "paste a box of another image of its batch into each training image, the labels mixed by the "
            "box's area, drawn from Beta(ALPHA, ALPHA) each batch (CutMix; default 0: off; e.g. 1); with --mixup, "
            "either one each batch",
        },
    ),
    (
        "progressive-crop",
        {
            "type": _int,
            "metavar": "SIDE",
            "help": "train the first epochs (--progressive-until) on a random SIDExSIDE window of each batch: "
            "cheaper epochs, so more of them in the same time (progressive resizing; images held in memory, "
            "nets that pool globally)",
        },
    ),
    (
        "progressive-until",
        {
            "type": float,
            "metavar": "F",
            "help": "--progressive-crop: the fraction of the epochs trained on windows (default 0.4)",
        },
    ),
    (
        "precision",
        {
            "choices": PRECISIONS,
            "help": "auto: bf16 on CPUs with AMX/AVX-512-BF16 and GPUs that have it, fp16 on other GPUs, else 32",
        },
    ),
    ("device", {"choices": DEVICES, "help": "default auto: cuda, then mps, then cpu"}),
    (
        "seed",
        {
            "type": int,
            "metavar": "N",
            "help": "seed for weights, data order, augmentation and validation split (default 0)",
        },
    ),
    (
        "patience",
        {
            "type": int,
            "metavar": "N",
            "help": "stop after N epochs without a better --monitor value (default 0: never)",
        },
    ),
    (
        "monitor",
        {
            "choices": MONITORS,
            "help": "the validation metric that picks the best checkpoint and drives --patience and --schedule "
            "plateau: val_acc (default; a classifier's) or val_loss (a forecast's only one; finer than "
            "the accuracy of a small validation part, which ties from epoch to epoch)",
        },
    ),
    ("out", {"metavar": "DIR", "help": "run folder (default runs/MODEL-DATA[-N])"}),
    (
        "resume",
        {"action": argparse.BooleanOptionalAction, "help": "continue the run in --out from its last checkpoint"},
    ),
    (
        "recipe",
        {"choices": sorted(RECIPES), "help": "a named preset of these options, applied before --config and flags"},
    ),
    (
        "checkpoint-every",
        {
            "type": _int,
            "metavar": "N",
            "help": "also save the last checkpoint every N steps inside an epoch, so that --resume after a "
            "crash continues from there exactly (default 0: at each epoch's end)",
        },
    ),
    (
        "find-lr",
        {
            "nargs": "?",
            "const": 100,
            "type": _int,
            "metavar": "STEPS",
            "help": "instead of training, the learning-rate range test: STEPS steps (default 100) with the rate "
            "growing from 1e-7 to 10; plots the loss against it and suggests an --lr (writes no run)",
        },
    ),
    (
        "compile",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "torch.compile the model (compiling takes a while at the start; on a CPU it needs a C++ "
            "compiler and can be slower: see bench/)",
        },
    ),
]


# --help lists OPTIONS under these headings, each starting at the flag named.
GROUPS = {
    "data": "data",
    "model": "model",
    "data-dir": "images and their pre-processing",
    "target": "sequences",
    "hidden": "recurrent models (rnn, lstm, gru)",
    "epochs": "optimisation",
    "augment": "augmentation (images)",
    "precision": "device, precision and the run folder",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train + validate a model, writing a run folder",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML file whose keys are these flags' names")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    group = parser
    for flag, kwargs in OPTIONS:
        if flag in GROUPS:
            group = parser.add_argument_group(GROUPS[flag])
        group.add_argument(f"--{flag}", default=argparse.SUPPRESS, **kwargs)
    parser.set_defaults(run=run)


def flags_given(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags typed on the command line (the others were suppressed)."""
    fields = TrainConfig.__dataclass_fields__
    given = {k: v for k, v in vars(args).items() if k in fields}
    if "model_args" in given:
        given["model_args"] = dict(given["model_args"])
    return given


def run(args: argparse.Namespace) -> int:
    from deepstep.config import read_config_file
    from deepstep.tasks import resolve_train_config, train

    file_values = read_config_file(args.config) if args.config else {}
    given = flags_given(args)
    if given.get("resume") and "out" in given and not args.config:
        from deepstep.engine.run_dir import RunDir

        file_values = read_config_file_from_run(RunDir.open(given["out"]))
    config = resolve_train_config(file_values, given)
    train(config, progress=progress_enabled(args))
    return 0


def read_config_file_from_run(run) -> dict[str, Any]:
    """A run's own config.yaml, so that `--out RUN --resume` needs no other flags."""
    from deepstep.config import check_values

    values = check_values(run.read_config(), source=str(run.file("config.yaml")))
    values.pop("resume", None)
    return values
