"""One epoch of training, and evaluation: forward, loss, backward, optimizer step.

A task gives a `step(model, batch)` returning {"loss": scalar, "output": tensor, ...}; every
other scalar it returns (e.g. "acc") is a batch mean, averaged here over the epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from deepstep.engine.distributed import SINGLE, Ranks, reduce_sums
from deepstep.engine.optim import Lookahead, WeightAverage
from deepstep.engine.precision import Precision
from deepstep.errors import NonFiniteLoss

Step = Callable[[nn.Module, Any], dict[str, torch.Tensor]]


def batch_size_of(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) else batch
    return len(first)


class Meter:
    """Running sums of batch means, kept on the device so that no step waits for a sync."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, result: dict[str, torch.Tensor], n: int) -> None:
        for key, value in result.items():
            if value.ndim == 0:  # batch means; outputs and targets are not averaged
                total = self.sums.get(key)
                if total is None:
                    self.sums[key] = value.detach() * n
                else:
                    total.add_(value.detach(), alpha=n)  # one op a step: the sum is n times the mean
        self.count += n

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def totals(self, ranks: Ranks = SINGLE) -> dict[str, Any]:
        """The sums and count over every rank (a collective under DDP: all ranks must call it)."""
        sums, count = reduce_sums(self.sums, self.count, ranks)
        return {"sums": {key: value.float() for key, value in sums.items()}, "count": count}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> Meter:
        meter = cls()
        meter.sums = {key: value.to(device, copy=True) for key, value in state["sums"].items()}
        meter.count = state["count"]
        return meter

    def means(self, ranks: Ranks = SINGLE) -> dict[str, float]:
        """Epoch means; under DDP over every rank's examples."""
        sums, count = reduce_sums(self.sums, self.count, ranks)
        self.count = count
        return {key: total.item() / max(1, count) for key, total in sums.items()}


class Progress:
    """A tqdm bar updated every `interval` seconds with the live loss (the only sync it causes)."""

    def __init__(self, total: int, description: str, enabled: bool, interval: float = 0.5):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, desc=description, unit="batch", leave=False, disable=not enabled, dynamic_ncols=True
        )
        self.enabled = not self.bar.disable
        self.interval = interval
        self.next_time = time.monotonic() + interval
        self.pending = 0

    def step(self, meter: Meter) -> None:
        if not self.enabled:
            return
        self.pending += 1
        now = time.monotonic()
        if now >= self.next_time:
            self.bar.update(self.pending)
            self.pending = 0
            loss = meter.sums["loss"].item() / max(1, meter.count)
            self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            self.next_time = now + self.interval

    def close(self) -> None:
        self.bar.close()


def train_one_epoch(
    model: nn.Module,
    step: Step,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: Precision,
    scaler: torch.amp.GradScaler,
    progress: Progress | None = None,
    ranks: Ranks = SINGLE,
    *,
    meter: Meter | None = None,
    start_step: int = 0,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, Meter], None] | None = None,
    lookahead: Lookahead | None = None,
    micro_batch: int = 0,
    clip_grad: float = 0.0,
    ema: WeightAverage | None = None,
) -> tuple[dict[str, float], int]:
    """Forward, loss, backward and optimizer step over every batch; returns the epoch's means
    and the number of examples seen (by all ranks together).

    A resumed epoch passes the `meter` it had and `start_step`: the batches before it are drawn,
    so the order and augmentation replay exactly, but not trained on again. Every
    `checkpoint_every` steps, once the loss is known to be finite, `on_checkpoint(steps_done, meter)`.
    With `micro_batch`, each batch goes forward and backward that many examples at a time; with
    `clip_grad`, the gradients' global norm is clipped to it before each step; `ema`, updated after it."""
    model.train()
    meter = meter or Meter()
    for i, batch in enumerate(batches):
        if i < start_step:
            continue
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, step, batch, micro_batch, precision, scaler, meter)
        optimizer_step(model, optimizer, scaler, clip_grad)
        scheduler.step()
        if lookahead is not None:
            lookahead.after_step(scheduler.last_epoch)  # the schedule counts the run's steps
        if ema is not None:
            ema.update()
        if progress is not None:
            progress.step(meter)
        done = i + 1
        if checkpoint_every and on_checkpoint is not None and done % checkpoint_every == 0 and done < len(batches):
            _check_finite(meter.sums["loss"].item(), f"by step {done} of this epoch")
            on_checkpoint(done, meter)
    means = meter.means(ranks)
    _check_finite(means.get("loss", 0.0), "in this epoch")
    return means, meter.count


def forward_backward(
    model: nn.Module,
    step: Step,
    batch: Any,
    micro_batch: int,
    precision: Precision,
    scaler: torch.amp.GradScaler,
    meter: Meter,
) -> None:
    """Forward pass, loss and backward pass of one batch, its results counted in `meter`.

    With `micro_batch` below the batch's size, at most that many examples at a time: each part's
    mean loss weighted by its share of the batch, so that the summed gradients are the whole
    batch's (batch norm aside, which normalises each part by its own statistics). Under DDP the
    ranks average the gradients once, after the last part."""
    n = batch_size_of(batch)
    count = -(-n // micro_batch) if micro_batch else 1  # parts as equal as they come: 257 by 256 is 129 + 128
    parts = [batch] if count <= 1 else list(zip(*(t.tensor_split(count) for t in batch), strict=True))
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast():
                result = step(model, part)
            loss = result["loss"] if len(parts) == 1 else result["loss"] * (batch_size_of(part) / n)
            scaler.scale(loss).backward()
        meter.update(result, batch_size_of(part))


def optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_grad: float = 0.0
) -> None:
    """The optimizer's step on the gradients of the batch, their global L2 norm first clipped to
    `clip_grad` when it is set (the guard of recurrent nets against exploding gradients: Keras's
    clipnorm, Lightning's gradient_clip_val). With fp16's grad scaler the gradients are unscaled
    first, so that the clip sees their true size; a step with inf or NaN gradients is still skipped."""
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()


def _check_finite(loss_sum: float, where: str) -> None:
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"the training loss became {loss_sum} {where}")


def evaluate(
    model: nn.Module,
    step: Step,
    batches: Iterable,
    precision: Precision,
    keep: tuple[str, ...] = (),
    ranks: Ranks = SINGLE,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Means over `batches` without gradients, and the step's `keep` entries (e.g. "output",
    "target") concatenated over all batches, on the CPU."""
    model.eval()
    meter = Meter()
    kept: dict[str, list[torch.Tensor]] = {key: [] for key in keep}
    with torch.inference_mode():
        for batch in batches:
            with precision.autocast():
                result = step(model, batch)
            meter.update(result, batch_size_of(batch))
            for key in keep:
                value = result[key]
                kept[key].append((value.float() if value.is_floating_point() else value).cpu())
    return meter.means(ranks), {key: torch.cat(values) for key, values in kept.items() if values}
