"""Tasks: what is learned from what. Each gives the engine its `step` and owns its data and metrics.

image-classification      images -> a class           (tasks/image_classification.py)
forecasting               a time series -> its future (tasks/forecasting.py)
sequence-classification   a sequence -> a class       (tasks/sequence_classification.py)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from deepstep.errors import DeepstepError

MODULES = {
    "image-classification": "deepstep.tasks.image_classification",
    "forecasting": "deepstep.tasks.forecasting",
    "sequence-classification": "deepstep.tasks.sequence_classification",
}


IMAGES, FORECASTING, SEQUENCES = MODULES  # the task names, in MODULES' order

# The options only some tasks read, and those tasks; the others (optimisation, device, run folder)
# apply to every task. A value set for a task that does not read it is refused, as evaluate and
# predict refuse theirs, rather than ignored in silence.
TASK_OPTIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "pretrained", "freeze_backbone", "unfreeze_after", "backbone_lr_scale", "image_size", "resize",
            "in_memory", "workers", "val_split", "test_split", "mean", "std", "strict", "label_smoothing",
            "augment", "crop_padding", "alternate_flip", "cutout", "mixup", "cutmix", "progressive_crop",
            "progressive_until", "labels",
        ),
        (IMAGES,),
    ),
    **dict.fromkeys(
        ("target", "features", "time", "fill", "lookback", "horizon", "stride", "season", "relative"), (FORECASTING,)
    ),
    **dict.fromkeys(
        ("test_size", "val_size", "hidden", "layers", "dropout", "bidirectional"), (FORECASTING, SEQUENCES)
    ),
    **dict.fromkeys(("group_file", "test_groups"), (SEQUENCES,)),
    "class_weights": (IMAGES, SEQUENCES),
}  # fmt: skip
_INSTEAD = {"val_split": "val_size", "test_split": "test_size", "val_size": "val_split", "test_size": "test_split"}


def refuse_idle_options(config) -> None:
    """A one-line error for options set away from their defaults that `config.task` does not read
    (a recipe's values aside: a recipe for images names its model, whose error says more)."""
    from deepstep.config import TrainConfig, flag, preset_source

    defaults = TrainConfig()
    idle = [
        n
        for n, tasks in TASK_OPTIONS.items()
        if config.task not in tasks and getattr(config, n) != getattr(defaults, n) and not preset_source(config, n)
    ]
    for name in idle:
        other = _INSTEAD.get(name)
        if other and config.task in TASK_OPTIONS[other]:
            raise DeepstepError(f"--{flag(name)} does not apply to {config.task}: its part is set by --{flag(other)}")
    if idle:
        verb, it = ("does", "it") if len(idle) == 1 else ("do", "them")
        flags = ", ".join(f"--{flag(name)}" for name in idle)
        raise DeepstepError(f"{flags} {verb} not apply to {config.task}; leave {it} out")


def infer_task(data: str, task: str = "auto") -> str:
    """The task given, or the one the data implies: a CSV or built-in series is forecast, labelled
    sequences (.npz, or CSVs with a labels file) are classified, anything else is images."""
    if task != "auto":
        return task
    from deepstep.data.sequences import is_sequence_spec
    from deepstep.data.series import is_series_spec

    if is_series_spec(data):
        return "forecasting"
    if is_sequence_spec(data):
        return "sequence-classification"
    return "image-classification"


def task_module(task: str) -> ModuleType:
    return importlib.import_module(MODULES[task])


def run_task(run_path: str | Path) -> str:
    """The task a run folder was trained for (run.json), so that evaluate and predict follow it."""
    from deepstep.engine.run_dir import RunDir

    task = RunDir.open(run_path).read_json("run.json").get("task", "image-classification")
    if task not in MODULES:
        raise DeepstepError(f"{run_path} was trained for task {task!r}, which this deepstep does not know")
    return task


def resolve_train_config(file_values: dict | None, flags: dict | None):
    """The config of a training run: the task inferred from the data (unless given), then
    defaults < the task's defaults < recipe < config file < flags."""
    from deepstep.config import TrainConfig, resolve_config

    file_values, flags = file_values or {}, flags or {}
    data = flags.get("data", file_values.get("data", TrainConfig.data))
    task = infer_task(str(data), flags.get("task", file_values.get("task", "auto")))
    return resolve_config(file_values, flags, task=task).with_absolute_paths()


def trained_on(run_path: str | Path) -> dict:
    """What `show` needs to draw the data a run trained on, from its config.yaml: data, data_dir,
    time and labels (None where the run had none)."""
    from deepstep.engine.run_dir import RunDir

    saved = RunDir.open(run_path).read_config()
    return {name: saved.get(name.replace("_", "-")) for name in ("data", "data_dir", "time", "labels")}


def show(
    data: str,
    *,
    split: str = "train",
    n: int = 16,
    out: str | Path = "grid.png",
    data_dir: str | None = None,
    time: str | None = None,
    task: str | None = None,
    labels: str | None = None,
) -> Path:
    """A picture of a dataset, by what it holds (`task`, inferred when not given): a labelled
    grid of images from `split`, the columns of a series over time, or `n` labelled sequences.
    Returns the PNG's path."""
    task = task or infer_task(str(data))
    if task == "forecasting":
        return task_module(task).show_series(data, out=out, time=time)
    if task == "sequence-classification":
        return task_module(task).show_sequences(data, n=n, out=out, data_dir=data_dir)
    return task_module(task).show_images(data, split=split, n=n, out=out, data_dir=data_dir, labels=labels)


def train(config, log=print, progress: bool = True) -> Path:
    """Train `config` (a resolved TrainConfig) with its task's module; returns the run folder."""
    from deepstep.engine import distributed

    if config.find_lr and distributed.from_environment().active:
        raise DeepstepError("--find-lr runs in one process: start it without torchrun")
    refuse_idle_options(config)
    if config.model_file:
        from deepstep.models import load_model_file

        load_model_file(config.model_file)
    try:
        return task_module(config.task).train(config, log=log, progress=progress)
    finally:
        distributed.abandon()  # after an error under torchrun; the normal end has left the group already
