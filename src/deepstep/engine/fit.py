"""Epochs of train + validate, with metrics, best/last checkpoints, early stopping and resume."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from deepstep.engine.checkpoint import load_state, load_weights, save_checkpoint, unwrap
from deepstep.engine.distributed import SINGLE, Ranks
from deepstep.engine.loop import (
    Meter,
    Progress,
    Step,
    batch_size_of,
    evaluate,
    forward_backward,
    optimizer_step,
    train_one_epoch,
)
from deepstep.engine.optim import Lookahead, Plateau, WeightAverage
from deepstep.engine.precision import Precision
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError, NonFiniteLoss


@dataclass
class Training:
    """What fit() runs: the model, the task's steps, the batches and the optimisation."""

    model: nn.Module
    train_step: Step
    eval_step: Step
    train_batches: Iterable
    val_batches: Iterable | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    scaler: torch.amp.GradScaler = field(init=False)
    # Each called with the (1-based) epoch before it trains, e.g. to freeze or unfreeze layers.
    before_epoch: Sequence[Callable[[int], None]] = ()
    # Under torchrun: this process's rank; only rank 0 logs and writes.
    ranks: Ranks = SINGLE
    # Save `last` every this many steps inside an epoch too (0: at the end of each epoch only).
    checkpoint_every: int = 0
    # --micro-batch: forward and backward each batch this many examples at a time (0: whole).
    micro_batch: int = 0
    # --lookahead: the slow weights that training returns to (saved with `last`).
    lookahead: Lookahead | None = None
    # --clip-grad: the gradients' global norm is clipped to this before each step (0: not clipped).
    clip_grad: float = 0.0
    # --schedule plateau: lowers the rate when validation stops improving (saved with `last`).
    plateau: Plateau | None = None
    # --ema: the averaged weights that validation and the checkpoints use (the trained ones go in `last`'s state).
    ema: WeightAverage | None = None

    @property
    def kept_model(self) -> nn.Module:
        """The model that is validated and saved: the weight average under --ema."""
        return self.ema.module if self.ema is not None else self.model

    def __post_init__(self) -> None:
        self.scaler = self.precision.grad_scaler()


@dataclass
class Monitor:
    """The validation metric that picks the best checkpoint and drives early stopping."""

    name: str = "val_acc"
    higher_is_better: bool = True

    @classmethod
    def named(cls, name: str) -> Monitor:
        """--monitor's metric: an accuracy is better higher, a loss lower."""
        return cls(name, higher_is_better=not name.endswith("loss"))

    def better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best


@dataclass
class FitState:
    """Where training stands: finished epochs, their rows, the best monitored value so far."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0
    # Inside epoch `epoch + 1`: the steps done, and what replays it (the batches' state at its
    # start, its running sums, its learning rate and seconds so far). Empty between epochs.
    step: int = 0
    partial: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            "step": self.step,
            "partial": self.partial,
        }


def capture_rng(batches: Iterable) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(batches, "state_dict"):
        rng["batches"] = batches.state_dict()
    return rng


def unrepeatable_note(model: nn.Module, device: torch.device) -> str | None:
    """A note when `--seed` cannot make the run repeat, nor a checkpoint resume it exactly: on
    CUDA, cuDNN's recurrent layers draw their dropout (between stacked layers) from a random state
    of their own, set once a process from a seed of its choosing and held in no checkpoint
    (pytorch/pytorch#74177, #104697). capture_rng saves every other stream."""
    if device.type != "cuda" or not torch.backends.cudnn.enabled:
        return None
    kinds = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase) and m.dropout > 0 and m.num_layers > 1}
    )
    if not kinds:
        return None
    return (
        f"note: on CUDA, cuDNN's {'/'.join(kinds)} dropout keeps a random state of its own that --seed does not set "
        "and checkpoints do not hold: this run will not repeat exactly, nor resume to the same weights "
        "(--dropout 0 or --device cpu would)"
    )


def restore_rng(rng: dict[str, Any], batches: Iterable) -> None:
    torch.set_rng_state(rng["torch"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(rng["numpy"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "batches" in rng and hasattr(batches, "load_state_dict"):
        batches.load_state_dict(rng["batches"])


def _laid_out_as_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Each optimizer state tensor of its parameter's shape in the parameter's memory layout: a
    checkpoint stores them contiguous, and an SGD step that mixes channels_last conv weights with
    contiguous momentum took resnet-cifar's 0.96 ms against 0.44 ms (1.17 against 0.65 ms with
    weight decay; 2 cores, 30 November 2026), for the rest of a resumed run."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def resume(training: Training, run: RunDir) -> FitState:
    """Load the last checkpoint's weights and training state; return where to continue."""
    load_weights(run.checkpoints, "last", training.kept_model)
    state = load_state(run.checkpoints, "last")
    if training.ema is not None:
        if not state.get("ema"):
            raise DeepstepError(f"{run.path} was trained without --ema: resume it without, or start a new run")
        unwrap(training.model).load_state_dict(state["ema"]["trained"])
        training.ema.load_state_dict(state["ema"])
    elif state.get("ema"):
        raise DeepstepError(f"{run.path} was trained with --ema: resume it with the same --ema")
    saved, built = len(state["optimizer"]["param_groups"]), len(training.optimizer.param_groups)
    if saved != built:  # torch would raise a ValueError with a traceback
        raise DeepstepError(
            f"{run.path}: its last checkpoint's optimizer has {saved} parameter groups and this version of "
            f"deepstep builds {built} for the same settings; finish it with the version that started it, "
            "or start a new run"
        )
    training.optimizer.load_state_dict(state["optimizer"])
    _laid_out_as_parameters(training.optimizer)
    training.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        training.scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"], training.train_batches)
    if training.lookahead is not None and state.get("lookahead"):
        training.lookahead.load_state_dict(state["lookahead"])
    if training.plateau is not None and state.get("plateau"):
        training.plateau.load_state_dict(state["plateau"])
    return FitState(**state["fit"])


def _format_row(row: dict[str, Any], epochs: int, unit: str) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train loss {row['train_loss']:.4f}"]
    if "train_acc" in row:
        parts[-1] += f" acc {row['train_acc']:.2%}"
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.4f}" + (f" acc {row['val_acc']:.2%}" if "val_acc" in row else ""))
        if "val_acc5" in row:
            parts[-1] += f" top-5 {row['val_acc5']:.2%}"
    parts.append(f"{row['seconds']:.1f} s")
    parts.append(f"{row[f'{unit}_per_s']:.0f} {unit}/s")
    return "  ".join(parts)


def fit(
    training: Training,
    *,
    epochs: int,
    run: RunDir,
    meta: dict[str, Any],
    state: FitState | None = None,
    patience: int = 0,
    monitor: Monitor | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    unit: str = "images",
) -> FitState:
    """Train for `epochs` (continuing from `state`), validating after each epoch.

    After every epoch: a row in metrics.csv, the `last` checkpoint (with everything needed to
    resume), and the `best` checkpoint when the monitored validation metric improved; `unit`
    names what the examples are in the throughput column (`images_per_s`). Without
    validation batches the best checkpoint is the last one.
    """
    state = state or FitState()
    monitor = monitor or Monitor()
    model = training.model
    main = training.ranks.main
    if not main:
        progress, log = False, lambda message: None
    for epoch in range(state.epoch + 1, epochs + 1):
        for hook in training.before_epoch:
            hook(epoch)
        if hasattr(training.train_batches, "set_epoch"):  # as a DistributedSampler is told the epoch
            training.train_batches.set_epoch(epoch)
        partial = state.partial or {
            "batches": getattr(training.train_batches, "state_dict", dict)(),
            "lr": training.optimizer.param_groups[0]["lr"],
            "seconds": 0.0,
        }
        # A resumed epoch's sums so far are the totals over all ranks: rank 0 carries them on.
        device = next(model.parameters()).device
        meter = Meter.from_state(partial["meter"], device) if state.step and main else Meter()
        bar = Progress(len(training.train_batches), f"epoch {epoch}/{epochs}", progress)
        lr = partial["lr"]
        start = time.perf_counter()

        def checkpoint(steps_done: int, meter: Meter, partial=partial, start=start) -> None:
            state.step = steps_done
            state.partial = {
                **partial,
                "meter": meter.totals(training.ranks),
                "seconds": partial["seconds"] + time.perf_counter() - start,
            }
            if main:
                _save_last(training, state, run, {**meta, "epoch": state.epoch, "step": steps_done})

        try:
            train_means, n_train = train_one_epoch(
                model,
                training.train_step,
                training.train_batches,
                training.optimizer,
                training.scheduler,
                training.precision,
                training.scaler,
                bar,
                training.ranks,
                meter=meter,
                start_step=state.step,
                checkpoint_every=training.checkpoint_every,
                micro_batch=training.micro_batch,
                on_checkpoint=checkpoint,
                lookahead=training.lookahead,
                clip_grad=training.clip_grad,
                ema=training.ema,
            )
        except NonFiniteLoss as err:  # the loop does not know the epoch; a failed save passes through as it is
            advice = "lower --lr" if training.precision.name == "32" else "lower --lr or use --precision 32"
            kept = "the last good checkpoint is kept" if run.has_checkpoint() else "no epoch had finished to keep"
            raise NonFiniteLoss(f"epoch {epoch}: {err}; {advice} ({kept})") from None
        finally:
            bar.close()
        seconds = partial["seconds"] + time.perf_counter() - start
        state.step, state.partial = 0, None
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in train_means.items()})
        if training.val_batches is not None:
            val_start = time.perf_counter()
            val_means, _ = evaluate(
                training.kept_model, training.eval_step, training.val_batches, training.precision, ranks=training.ranks
            )
            row.update({f"val_{k}": v for k, v in val_means.items()})
            row["val_seconds"] = time.perf_counter() - val_start
        row["seconds"] = seconds
        row[f"{unit}_per_s"] = n_train / seconds if seconds > 0 else 0.0
        row["lr"] = lr
        state.history.append(row)
        state.epoch = epoch

        value = row.get(monitor.name)
        improved = value is None or monitor.better(value, state.best)
        if value is not None and improved:
            state.best, state.best_epoch, state.stale_epochs = value, epoch, 0
        elif value is not None:
            state.stale_epochs += 1
        if value is None:
            state.best_epoch = epoch
        lowered = (
            training.plateau is not None
            and value is not None
            and training.plateau.after_epoch(improved, training.optimizer)
        )

        if main:
            _save(training, state, run, meta, row, improved)
        log(_format_row(row, epochs, unit) + ("  *" if improved and value is not None else ""))
        if lowered:
            stalled = training.plateau.patience
            log(
                f"lr x{training.plateau.factor:g}: {monitor.name} has not improved for {stalled} "
                f"epoch{'s' if stalled > 1 else ''} (now {training.optimizer.param_groups[0]['lr']:.3g})"
            )
        if patience and value is not None and state.stale_epochs >= patience:
            log(
                f"early stop: {monitor.name} has not improved for {patience} epochs (best {state.best:.4f} at epoch {state.best_epoch})"
            )
            break
    return state


@dataclass
class LrFinding:
    """An LR range test: the learning rates tried, one step each, and the smoothed training loss."""

    lrs: list[float]
    losses: list[float]
    suggestion: float | None  # where the loss fell fastest; None when it did not fall enough to read
    stopped: str  # why the test ended
    noise: float = 0.0  # the curve's batch-to-batch noise, measured over the first steps (see LR_FIND_MIN_SIGNAL)
    fall: float = 0.0  # how far the curve fell below the loss of those first steps
    withheld: str = ""  # why there is no suggestion: "flat" (LR_FIND_MIN_FALL) or "noise" (LR_FIND_MIN_SIGNAL)
    batch: int = 0  # the largest batch stepped on: the whole train part when it is smaller than --batch-size

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggestion": self.suggestion,
            "stopped": self.stopped,
            "fall": self.fall,
            "noise": self.noise,
            "withheld": self.withheld,
            "lrs": self.lrs,
            "losses": self.losses,
        }


def find_lr(
    training: Training,
    *,
    base_lr: float,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    progress: bool = True,
) -> LrFinding:
    """The learning-rate range test (Smith 2015; fastai's lr_find, Lightning's Tuner.lr_find): train
    `steps` steps with the learning rate growing exponentially from `start_lr` to `end_lr`, and
    record the loss. Each parameter group keeps its rate relative to `base_lr` (the --lr the
    optimizer was built with). Stops early once the loss, smoothed, passes 4x its lowest. The
    model's weights are changed: it is not trained further, and nothing is saved.

    The curve is the loss averaged over a centred window of steps: fastai's and Lightning's running
    average (beta 0.98) lags about 49 steps, 4 of the 8 decades a 100-step test spans, which moves
    the curve's fall to rates higher than the ones that caused it. The suggestion is where the
    curve falls fastest, before its lowest point (Lightning's rule)."""
    model, optimizer = training.model, training.optimizer
    # each group's own rate before the schedule moved it (a warm-up starts lower)
    scales = [group.get("initial_lr", group["lr"]) / base_lr for group in optimizer.param_groups]
    for hook in training.before_epoch:
        hook(1)
    model.train()
    lrs, raw, running, best, stopped, largest = [], [], 0.0, math.inf, f"after {steps} steps", 0
    bar = Progress(steps, "lr range test", progress)
    batches = iter(())
    for i in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (i / max(1, steps - 1))
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            group["lr"] = lr * scale
        try:
            batch = next(batches)
        except StopIteration:  # the train part is shorter than the test: start it again
            batches = iter(training.train_batches)
            batch = next(batches)
        largest = max(largest, batch_size_of(batch))
        meter = Meter()
        optimizer.zero_grad(set_to_none=True)
        forward_backward(
            model, training.train_step, batch, training.micro_batch, training.precision, training.scaler, meter
        )
        optimizer_step(model, optimizer, training.scaler, training.clip_grad)
        bar.step(meter)
        loss = meter.means()["loss"]
        if not math.isfinite(loss):
            stopped = f"at step {i + 1}, lr {lr:.3g}: the loss became {loss}"
            break
        lrs.append(lr)
        raw.append(loss)
        running = 0.9 * running + 0.1 * loss  # for the stop only: lag ~9 steps
        smoothed = running / (1 - 0.9 ** (i + 1))  # bias-corrected
        best = min(best, smoothed)
        if smoothed > 4 * best and i > steps // 10:
            stopped = f"at step {i + 1}, lr {lr:.3g}: the loss passed 4x its lowest"
            break
    bar.close()
    half = max(2, steps // 40)
    curve = _centred_mean(raw, half)
    suggestion = _steepest(lrs, curve, skip=steps // 10, half=half)
    withheld = "" if suggestion is not None else "flat"
    # At the first rates (1e-7 and up) nothing is learned yet: their losses differ only because the
    # batches do, which measures the noise left in the curve, a mean of 2 * half + 1 steps.
    first = np.asarray(raw[: max(5, steps // 5)])
    noise = float(first.std(ddof=1) / math.sqrt(2 * half + 1)) if len(first) > 2 else 0.0
    fall = float(first.mean() - min(curve)) if curve else 0.0
    if suggestion is not None and fall < LR_FIND_MIN_SIGNAL * noise:
        suggestion, withheld = None, "noise"
    return LrFinding(lrs, curve, suggestion, stopped, noise, fall, withheld, largest)


def _centred_mean(values: Sequence[float], half: int) -> list[float]:
    """Each value averaged with up to `half` neighbours on each side (fewer at the ends)."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    n = len(values)
    lo, hi = np.maximum(np.arange(n) - half, 0), np.minimum(np.arange(n) + half + 1, n)
    return ((sums[hi] - sums[lo]) / (hi - lo)).tolist()


# The loss must fall this much (of where it started) before the test suggests a rate: on a flat
# curve (lenet with SGD barely moves in 100 steps) the steepest point is noise.
LR_FIND_MIN_FALL = 0.05
# ... and this many times the curve's noise: the lowest of a few dozen noisy points lies about two
# of their standard deviations below their mean by chance alone. Airline passengers in 30 steps
# (3 batches an epoch) fell 1.8x its noise, and its steepest point was the noise's; in 100 steps, 5.9x.
LR_FIND_MIN_SIGNAL = 3.0


def _steepest(lrs: Sequence[float], curve: Sequence[float], skip: int, half: int) -> float | None:
    """The rate at which the curve falls fastest against log(lr) (over `half` steps each side),
    after the first `skip` steps and before its lowest point; None if it never fell by
    LR_FIND_MIN_FALL of where it started."""
    lowest = int(np.argmin(curve)) if curve else 0
    if lowest <= skip or curve[lowest] > (1 - LR_FIND_MIN_FALL) * curve[0]:
        return None
    loss, log_lr = np.asarray(curve), np.log(np.asarray(lrs))
    best, where = 0.0, None
    for i in range(skip, lowest + 1):
        a, b = max(0, i - half), min(len(curve) - 1, i + half)
        slope = (loss[b] - loss[a]) / (log_lr[b] - log_lr[a])
        if slope < best:
            best, where = slope, i
    return None if where is None else float(lrs[where])


def _save(
    training: Training, state: FitState, run: RunDir, meta: dict[str, Any], row: dict[str, Any], improved: bool
) -> None:
    """metrics.csv, the `last` checkpoint with everything needed to resume, and `best` if it improved."""
    checkpoint_meta = {**meta, "epoch": state.epoch, "metrics": row}
    if improved:
        save_checkpoint(run.checkpoints, "best", f"e{state.epoch:04d}", training.kept_model, checkpoint_meta)
    _save_last(training, state, run, checkpoint_meta)
    run.write_metrics(state.history)


def _save_last(training: Training, state: FitState, run: RunDir, checkpoint_meta: dict[str, Any]) -> None:
    """The `last` checkpoint: weights, optimizer, schedule, scaler, every RNG and where training
    stands. Inside an epoch the batches' state is the one the epoch started from, which replays it."""
    rng = capture_rng(training.train_batches)
    if state.partial is not None:  # a copy: the partial record keeps its own
        rng["batches"] = {key: value.clone() for key, value in state.partial["batches"].items()}
    save_checkpoint(
        run.checkpoints,
        "last",
        f"e{state.epoch:04d}s{state.step:06d}",
        training.kept_model,
        checkpoint_meta,
        state={
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            "scaler": training.scaler.state_dict(),
            "rng": rng,
            "fit": state.to_dict(),
            "lookahead": training.lookahead.state_dict() if training.lookahead else None,
            "plateau": training.plateau.state_dict() if training.plateau else None,
            "ema": {**training.ema.state_dict(), "trained": unwrap(training.model).state_dict()}
            if training.ema
            else None,
        },
    )
