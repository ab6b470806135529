"""What every task does with a run folder: open it for a resume, seed, record the test part's
single measurement, and close a training run with its curves and summary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepstep.config import PATH_OPTIONS, TrainConfig, absolute_path, flag, preset_source, with_defaults
from deepstep.engine.fit import FitState, Monitor, Training, unrepeatable_note
from deepstep.engine.loop import Step
from deepstep.engine.optim import Plateau, WeightAverage
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError

Log = Callable[[str], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import torchvision

    from deepstep import __version__

    return {"deepstep": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def run_stem(config: TrainConfig, source_name: str) -> str:
    """MODEL-DATA, safe as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.model}-{source_name}")


def default_out(config: TrainConfig, source_name: str) -> Path:
    """runs/MODEL-DATA, or runs/MODEL-DATA-N when that one is taken."""
    stem = run_stem(config, source_name)
    path = Path("runs") / stem
    n = 2
    while path.exists():
        path = Path("runs") / f"{stem}-{n}"
        n += 1
    return path


def find_lr_report(config: TrainConfig, training: Training, source_name: str, log: Log, progress: bool) -> Path:
    """--find-lr: the learning-rate range test on `training` instead of training; writes
    runs/MODEL-DATA-lr-find.png (or OUT-lr-find.png) and a .json beside it, and returns the plot's path."""
    from deepstep.engine.files import cannot_write, write_json
    from deepstep.engine.fit import LR_FIND_MIN_SIGNAL, find_lr
    from deepstep.plots import plot_lr_finding

    base = str(config.out).rstrip("/") if config.out else str(Path("runs") / run_stem(config, source_name))
    png, record = Path(f"{base}-lr-find.png"), Path(f"{base}-lr-find.json")
    try:  # before the test runs, not after
        png.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cannot_write(png, err, "--out" if config.out else "") from None
    finding = find_lr(training, base_lr=config.lr, steps=config.find_lr, progress=progress)
    batch = config.batch_size if finding.batch in (0, config.batch_size) else f"{finding.batch} (all the train part)"
    tried = (
        f"{len(finding.lrs)} steps of batch {batch}, lr {finding.lrs[0]:.0e} to {finding.lrs[-1]:.3g}"
        if finding.lrs
        else "no step"
    )
    log(f"lr range test: {tried}; stopped {finding.stopped}")
    if finding.withheld == "noise":
        log(
            f"no suggestion: the loss fell {finding.fall:.3g} below where it started, within {LR_FIND_MIN_SIGNAL:g}x "
            f"the noise between batches ({finding.noise:.3g} on the curve), which chance alone can do; look at "
            "the plot, or run more steps (--find-lr 200) or larger batches for a steadier curve"
        )
    elif finding.suggestion is None:
        fall = 1 - min(finding.losses) / finding.losses[0] if finding.losses else 0.0
        log(
            f"no suggestion: the loss fell {fall:.1%} at most over the test, too little to read (a net that "
            "learns slowly at first, or a problem in the data); look at the plot, or try --optimizer adamw"
        )
    else:
        log(
            f"suggested: --lr {finding.suggestion:.2g} (where the loss fell fastest; fastai's rule of thumb, a tenth of "
            f"where it was lowest, gives {finding.lrs[int(np.argmin(finding.losses))] / 10:.2g})"
        )
    write_json(
        record,
        {
            "model": config.model,
            "data": config.data,
            "optimizer": config.optimizer,
            "batch_size": config.batch_size,
            **finding.to_dict(),
        },
    )
    plot_lr_finding(
        finding.lrs,
        finding.losses,
        finding.suggestion,
        png,
        title=f"{config.model} on {source_name}: {config.optimizer}, batch {batch}",
    )
    log(f"plot: {png}; numbers: {record}")
    return png


def start_run(
    config: TrainConfig, source_name: str, must_match: Sequence[str], ranks, log: Log = print
) -> tuple[RunDir, list[str]]:
    """The run folder to train in: --out (or runs/MODEL-DATA[-N]) created by rank 0, or the run to
    resume; every rank gets the same folder. Returns it with the changes a resume brings."""
    from deepstep.engine import distributed

    path = error = None
    changes: list[str] = []
    if ranks.main:
        try:
            if config.resume:
                run, changes = open_run_for_resume(config, must_match)
            else:
                run = RunDir.create(config.out or default_out(config, source_name))
            note = run.lock()  # a second process training into this folder is refused
            if note:
                log(f"{run.path}: {note}")
            if not config.resume and run.exists():
                log(f"{run.path}: its earlier run stopped before its first checkpoint; starting it again")
            path = run.path
        except DeepstepError as err:  # every rank stops with it, rather than wait for rank 0
            error = str(err)
    path, changes, error = distributed.share((path, changes, error), ranks)
    if error:
        raise DeepstepError(error)
    return RunDir(path), changes


def open_run_for_resume(config: TrainConfig, must_match: Sequence[str]) -> tuple[RunDir, list[str]]:
    """The run folder in --out, refusing changes in `must_match` that would make the result
    meaningless; returns it with the harmless changes (e.g. more epochs), to be recorded."""
    if not config.out:
        raise DeepstepError("--resume needs --out RUN, the run folder to continue")
    run = RunDir.open(config.out)
    if not run.has_checkpoint():
        raise DeepstepError(
            f"{run.path} has no checkpoint to resume: its run stopped before its first one; "
            "leave out --resume to start it again"
        )
    before, now_ = with_defaults(run.read_config(), config.task), config.to_dict()
    for name in PATH_OPTIONS:  # a run from before paths were recorded absolute, resumed where it was made
        before[flag(name)] = absolute_path(name, before.get(flag(name)))
    blocking = [flag(k) for k in must_match if before.get(flag(k)) != now_.get(flag(k))]
    if blocking:
        diffs = "; ".join(f"{k}: {before.get(k)!r} -> {now_.get(k)!r}" for k in blocking)
        raise DeepstepError(
            f"cannot resume {run.path} with a different {', '.join(blocking)} ({diffs}); start a new run instead"
        )
    changed = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now_.items() if k != "resume" and before.get(k) != v]
    return run, changed


def run_config(run: RunDir, data: str | None = None) -> TrainConfig:
    """The resolved config a run was trained with, from its config.yaml; `data`: where its data
    is now, if it moved since training (the run's fingerprint check then says whether it is the same)."""
    from deepstep.config import check_values

    saved = run.read_config()
    config = TrainConfig(**check_values(with_defaults(saved, saved.get("task")), source=str(run.file("config.yaml"))))
    if data:
        return dataclasses.replace(config, data=absolute_path("data", data))
    if Path(config.data).is_absolute() and not Path(config.data).exists():
        raise DeepstepError(
            f"{config.data}, the data {run.path} was trained on, is not there any more: "
            "give its new place with --data PATH"
        )
    return config


def check_split(split: str, data: str | None) -> None:
    """evaluate's --split of a classifier: test or val of the run's own data, or all of other data (--data)."""
    if split not in ("test", "val", "all"):
        raise DeepstepError(
            f"--split {split!r}: evaluate measures 'test' or 'val', or 'all' of other data given with --data "
            "(the train part is reported by training)"
        )
    if split == "all" and not data:
        raise DeepstepError(
            "--split all scores every example of other labelled data: give it with --data PATH "
            "(all of the run's own data would hold its training part)"
        )


def same_data_for_all(data: str) -> str:
    return f"{data} is the data this run trained on: --split all would score its training part too; use --split test"


def test_evaluations(run: RunDir, split: str, force: bool, describe: Callable[[dict], str]) -> list[dict[str, Any]]:
    """Every earlier test evaluation; refuses a second one without `force` (the test part is measured once)."""
    history = run.read_json("evaluations.json", [])
    earlier = [e for e in history if e["split"] == "test"]
    if split == "test" and earlier and not force:
        raise DeepstepError(
            f"{run.path}'s test split was already evaluated on {earlier[0]['time']} ({describe(earlier[0])}); "
            "the test part is measured once per run. Use --force (in Python: force=True) to measure it again "
            "(it is recorded), or --split val"
        )
    return history


def record_test_evaluation(run: RunDir, history: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """Append a test evaluation to evaluations.json, marking whether it was forced."""
    entry = {"split": "test", **entry, "forced": any(e["split"] == "test" for e in history)}
    run.write_json("evaluations.json", [*history, entry])


def finish(run: RunDir, info: dict[str, Any], state: FitState, monitor: Monitor, log: Log) -> None:
    """curves.png, the result in run.json, and where to go next."""
    from deepstep.plots import plot_curves

    run.unlock()
    curves = plot_curves(state.history, run.file("curves.png"), title=str(run.path.name))
    train_seconds = sum(r["seconds"] for r in state.history)
    info["result"] = {
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        f"best_{monitor.name}": state.best,
        "train_seconds": round(train_seconds, 3),
    }
    run.write_json("run.json", info)
    if state.best is None:
        best = "no validation split: best = last epoch"
    else:
        value = f"{state.best:.2%}" if monitor.name.endswith("acc") else f"{state.best:.4g}"
        best = f"best {monitor.name.replace('_', ' ')} {value} at epoch {state.best_epoch}"
    epochs = f"{state.epoch} epoch{'' if state.epoch == 1 else 's'}"
    log(f"done: {epochs}, {train_seconds:.1f} s of training; {best}")
    log(f"curves: {curves}; checkpoints: {run.checkpoints}; next: deepstep evaluate {run.path}")


def write_record(
    run: RunDir,
    config: TrainConfig,
    *,
    task: str,
    resumed: FitState | None,
    changes: list[str],
    describe: Callable[[], dict[str, Any]],
    log: Log,
) -> dict[str, Any]:
    """config.yaml and run.json at the start of training: a new record (task, time, versions and
    what `describe` returns), or the existing one with this resume and its changes noted; a resume
    with no epoch left to train leaves the record as it is (it would say --epochs 1 of a run of 3)."""
    if resumed is not None:
        info = run.read_json("run.json")
        if resumed.epoch >= config.epochs:
            done = resumed.epoch
            log(f"note: {done} epoch(s) of --epochs {config.epochs} are done; --epochs {done + 1} or more trains on")
            return info
        info.setdefault("resumes", []).append({"time": now(), "from_epoch": resumed.epoch, "changed": changes})
        log(
            f"resuming {run.path} after epoch {resumed.epoch}"
            + (f" (changed: {'; '.join(changes)})" if changes else "")
        )
    else:
        info = {"task": task, "created": now(), "versions": versions(), **describe()}
    run.write_config(config.to_dict())
    run.write_json("run.json", info)
    return info


# What every recurrent run must keep to be resumed; each sequence task adds its data options.
RECURRENT_MUST_MATCH = (
    "monitor",
    "data",
    "model",
    "model_args",
    "batch_size",
    "seed",
    "hidden",
    "layers",
    "dropout",
    "bidirectional",
)


def load_model(run: RunDir, checkpoint: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """The model of checkpoint `checkpoint` rebuilt from its record, weights loaded, in eval mode."""
    from deepstep.engine.checkpoint import load_weights, read_checkpoint
    from deepstep.models import create_model

    record = read_checkpoint(run.checkpoints, checkpoint)
    check_user_model(run, record["model"])
    model = create_model(record["model"]["name"], **record["model"]["args"])
    load_weights(run.checkpoints, checkpoint, model)
    return model.eval(), record


def check_user_model(run: RunDir, model: dict[str, Any]) -> None:
    """A run of the user's own model needs that model registered again: deepstep does not import
    code on a run folder's word, so the file is given (--model-file) or imported by the caller.
    A registered file that changed since training gets a note (its weights may not fit any more)."""
    import sys

    from deepstep.models import file_record, get_model_spec, is_registered

    name, file = model["name"], model.get("file")
    if not file:
        return
    if not is_registered(name):
        raise DeepstepError(
            f"{run.path} was trained with your model {name!r} from {file}: give that file with "
            "--model-file (in Python: import it before loading the run)"
        )
    spec = get_model_spec(name)
    if spec.file and file_record(name)["sha256"] != model.get("sha256"):
        differs = "has changed since" if spec.file == file else f"differs from {file}, the file with which"
        print(f"note: {spec.file} {differs} {run.path} was trained; its weights may not fit", file=sys.stderr)


def class_numbers(data: str, data_classes: Sequence[str], run_classes: Sequence[str]) -> np.ndarray:
    """For each of the data's classes, the run's number for the same name: labels are numbers among
    the data's own classes, so data holding some of the run's classes must be renumbered, and data
    with classes the run does not know (their labels would be read as the run's) is refused."""
    unknown = [c for c in data_classes if c not in run_classes]
    if unknown:
        raise DeepstepError(
            f"{data} has classes this run was not trained on: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; the run knows {', '.join(run_classes[:10])}"
            f"{' ...' if len(run_classes) > 10 else ''}: give --data the data it was trained on"
        )
    return np.array([list(run_classes).index(c) for c in data_classes], dtype=np.int64)


def prediction_table_path(out: str | Path) -> Path:
    """Where predict's --out table goes, checked before anything is predicted."""
    out = Path(out)
    if out.is_dir():
        raise DeepstepError(f"{out} is a folder: give the table's file name, e.g. {out / 'predictions.csv'}")
    if out.suffix.lower() != ".csv":
        raise DeepstepError(f"--out {out}: predictions are written as CSV; end the name with .csv")
    if not out.parent.is_dir():
        raise DeepstepError(f"--out {out}: the folder {out.parent} does not exist")
    return out


def write_predictions(results: Sequence[dict[str, Any]], classes: Sequence[str], out: str | Path) -> Path:
    """A CSV of predictions, a row each: the input (file, and the sequence or image's place when it
    has one), the class said and its probability, then every class's probability in the run's
    order (for a spreadsheet, a ROC curve, or a Kaggle submission)."""
    import csv
    import io

    from deepstep.engine.files import write_text

    places = [key for key in ("sequence", "image") if any(key in r for r in results)]
    buffer = io.StringIO()
    table = csv.writer(buffer, lineterminator="\n")
    table.writerow(["file", *places, "label", "probability", *classes])
    for r in results:
        chances = r["probabilities"]
        row = [r["file"] or "", *(r.get(key, "") for key in places), r["label"], f"{chances[r['label']]:.6g}"]
        table.writerow(row + [f"{chances[c]:.6g}" for c in classes])
    out = Path(out)
    write_text(out, buffer.getvalue())
    return out


def class_weights(config: TrainConfig, labels: np.ndarray, classes: Sequence[str]) -> torch.Tensor | None:
    """--class-weights balanced: each class's loss weighted by N / (K x its count in the train part)
    (N examples, K classes present), as sklearn's compute_class_weight("balanced") and Keras's
    class_weight: each class then weighs as much in the training loss as if all were the same size,
    and the weights average 1 over the examples. None for --class-weights none."""
    if config.class_weights == "none":
        return None
    counts = np.bincount(labels, minlength=len(classes))
    weights = np.where(counts > 0, len(labels) / ((counts > 0).sum() * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def describe_class_weights(weights: torch.Tensor, classes: Sequence[str]) -> str:
    """The training log's line for --class-weights balanced: each class's weight (past 10 classes,
    the lowest and the highest)."""
    shown = [f"{c} {w:.3g}" for c, w in zip(classes, weights.tolist(), strict=True)]
    if len(classes) > 10:
        low, high = int(weights.argmin()), int(weights.argmax())
        shown = [f"from {weights[low]:.3g} ({classes[low]}) to {weights[high]:.3g} ({classes[high]})"]
    return f"class weights (balanced, by the train part's counts): {', '.join(shown)}"


def weighted_mean(losses: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of each example's loss times its class's weight (Keras's sample weights: divided by
    the number of examples, not by the weights' sum, so that parts of a batch add up to it); a
    mixed example's (targets (B, classes) of class shares) weighs its classes' weights by their
    shares. The weights are on the losses' device: the caller moves them there once, not every step."""
    if weights is None:
        return losses.mean()
    per_example = weights[targets] if targets.ndim == 1 else targets @ weights
    return (losses * per_example).mean()


def sequence_model_args(config: TrainConfig, outputs: int, features: int) -> dict[str, Any]:
    """A sequence model's arguments: its outputs and input features, the recurrent flags the model
    takes (a model of the user's may take none), then --model-arg."""
    from deepstep.models import get_model_spec

    spec = get_model_spec(config.model)
    recurrent = {k: getattr(config, k) for k in ("hidden", "layers", "dropout", "bidirectional") if spec.takes(k)}
    both = [k for k in recurrent if k in config.model_args]
    if both:  # two places for one value, one of them unchecked
        raise DeepstepError(f"--model-arg {both[0]}: give it as --{both[0]} instead")
    return {"num_classes": outputs, "input_features": features, **recurrent, **config.model_args}


def optimization(
    config: TrainConfig,
    model: nn.Module,
    steps_per_epoch: int,
    scaled: Sequence[nn.Parameter] = (),
    plateau: Plateau | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and the per-step learning-rate schedule the config asks for; `scaled`
    parameters (a pretrained backbone) learn at --backbone-lr-scale x --lr; `plateau`: the
    --schedule plateau's scale (build_plateau)."""
    from deepstep.engine.optim import build_optimizer, build_schedule

    optimizer = build_optimizer(
        config.optimizer,
        model,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        scaled=list(scaled),
        lr_scale=config.backbone_lr_scale,
        norm_lr_scale=config.norm_lr_scale,
        muon_lr=config.muon_lr,
        muon_momentum=config.muon_momentum,
    )
    total_steps = config.epochs * steps_per_epoch
    schedule = build_schedule(
        config.schedule,
        optimizer,
        total_steps=total_steps,
        warmup_steps=int(config.warmup * total_steps),
        start_factor=config.lr_start_factor,
        end_factor=config.lr_end_factor,
        steps_per_epoch=steps_per_epoch,
        plateau=plateau,
    )
    return optimizer, schedule


def build_plateau(config: TrainConfig, has_validation: bool) -> Plateau | None:
    """The Plateau of --schedule plateau, or None; refused (before a run folder exists) when there
    is no validation part for it to watch."""
    if config.schedule != "plateau":
        return None
    if not has_validation:
        raise DeepstepError(
            "--schedule plateau lowers the rate when validation stops improving, and this run has no "
            "validation part: give it one (--val-split or --val-size above 0) or choose another --schedule"
        )
    given = {"factor": config.plateau_factor, "patience": config.plateau_patience}
    return Plateau(**{key: value for key, value in given.items() if value is not None})


def build_ema(config: TrainConfig, model: nn.Module) -> WeightAverage | None:
    """The weight average of --ema, started from the model as it is now, or None."""
    return WeightAverage(model, config.ema) if config.ema else None


def build_lookahead(config: TrainConfig, model: nn.Module, steps_per_epoch: int):
    """The Lookahead of --lookahead over the run's steps, or None."""
    from deepstep.engine.optim import Lookahead

    return Lookahead(model, config.epochs * steps_per_epoch, steps_per_epoch) if config.lookahead else None


@dataclass
class Job:
    """What a task hands to `train_run`: its data as batches, its steps, and what to record."""

    task: str
    source_name: str
    model_args: dict[str, Any]
    train_batches: Any
    val_batches: Any
    train_step: Step
    eval_step: Step
    monitor: Monitor
    meta: dict[str, Any]  # goes into every checkpoint: what rebuilds the model and its inputs
    data_report: dict[str, Any]
    unit: str
    # --class-weights: given to train_step as `weights=`, on the training device (None: not weighted).
    class_weights: torch.Tensor | None = None


def train_run(config: TrainConfig, job: Job, must_match: Sequence[str], log: Log, progress: bool) -> Path:
    """Create (or resume) the run folder, build the model and optimizer, fit, and close the run."""
    from deepstep.engine import distributed
    from deepstep.engine.backends import prepare_cpu
    from deepstep.engine.fit import fit, resume
    from deepstep.engine.optim import check_optimizer
    from deepstep.engine.precision import resolve_device, resolve_precision, supported_by
    from deepstep.models import create_model, file_record, get_model_spec
    from deepstep.models.shapes import format_size

    spec = get_model_spec(config.model)
    if len(spec.input_size) != 2:  # sequence models declare TIME x FEATURES
        raise DeepstepError(
            f"{config.model} takes {format_size(spec.input_size)} inputs, not TIMExFEATURES sequences, so it "
            f"cannot be trained for {job.task}; use --model rnn, lstm or gru"
        )
    ranks = distributed.from_environment()
    device = distributed.init(ranks, resolve_device(config.device))
    threads = prepare_cpu(device)
    seed_everything(config.seed)
    net = create_model(config.model, **job.model_args).to(device)
    precision = resolve_precision(config.precision, device, preset_source(config, "precision"))
    precision = supported_by(precision, net, auto=config.precision == "auto")  # before a run folder exists
    check_optimizer(config.optimizer, net, config.model)
    if config.compile:
        distributed.check_compiler(device)
    plateau = build_plateau(config, job.val_batches is not None)
    run, changes = (None, []) if config.find_lr else start_run(config, job.source_name, must_match, ranks, log)
    model = distributed.wrap(net, ranks, device, compile=config.compile)
    for batches in (job.train_batches, job.val_batches):
        if batches is not None:
            batches.tensors = [t.to(device) for t in batches.tensors]
    train_step = job.train_step
    if job.class_weights is not None:  # moved once, with the batches, not at every step
        train_step = functools.partial(train_step, weights=job.class_weights.to(device))
    train_batches, val_batches = (
        distributed.RankSlices(b, ranks) if b is not None and ranks.active else b
        for b in (job.train_batches, job.val_batches)
    )
    optimizer, scheduler = optimization(config, model, len(job.train_batches), plateau=plateau)
    training = Training(
        model,
        train_step,
        job.eval_step,
        train_batches,
        val_batches,
        optimizer,
        scheduler,
        precision,
        ranks=ranks,
        checkpoint_every=config.checkpoint_every,
        micro_batch=config.micro_batch,
        clip_grad=config.clip_grad,
        lookahead=build_lookahead(config, model, len(job.train_batches)),
        plateau=plateau,
        ema=build_ema(config, model),
    )
    meta = {
        "task": job.task,
        "model": {"name": config.model, "args": job.model_args, **file_record(config.model)},
        **job.meta,
    }
    parameters = sum(p.numel() for p in model.parameters())

    def log_setup(folder: str) -> None:
        given = ", ".join(f"{k}={v}" for k, v in job.model_args.items())  # as --model-arg takes them
        log(f"model: {config.model}, {parameters:,} parameters ({given})")
        log(
            f"device: {device.type}"
            + (f", {threads} threads" if threads else "")
            + f"; precision {precision.name} ({precision.reason})"
        )
        if note := unrepeatable_note(model, device):
            log(note)
        log(f"run folder: {folder}")

    if config.find_lr:
        log_setup("none (--find-lr)")
        return find_lr_report(config, training, job.source_name, log, progress)
    state = resume(training, run) if config.resume else None

    def describe() -> dict[str, Any]:
        log_setup(str(run.path))
        return {
            "data": job.data_report,
            "model": {
                **meta["model"],
                "parameters": parameters,
                "description": get_model_spec(config.model).description,
            },
            "device": {
                "type": device.type,
                "threads": threads,
                "precision": precision.name,
                "precision_reason": precision.reason,
            },
        }

    if ranks.main:
        info = write_record(run, config, task=job.task, resumed=state, changes=changes, describe=describe, log=log)
    state = fit(
        training,
        epochs=config.epochs,
        run=run,
        meta=meta,
        state=state,
        patience=config.patience,
        monitor=job.monitor,
        progress=progress,
        log=log,
        unit=job.unit,
    )
    if ranks.main:
        finish(run, info, state, job.monitor, log)
    distributed.shutdown(ranks)
    return run.path
