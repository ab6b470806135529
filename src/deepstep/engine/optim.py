"""Optimizers and learning-rate schedules, picked by name from small tables."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from deepstep.errors import DeepstepError


def parameter_groups(
    model: nn.Module, weight_decay: float, lr: float, scaled: list[nn.Parameter] = (), lr_scale: float = 1.0
) -> list[dict]:
    """Weight decay on weights only: biases and norm scales (1-d tensors) are not decayed.

    The `scaled` parameters (a pretrained backbone) learn at `lr_scale` x `lr`. Frozen parameters
    are included: they have no gradient, so the optimizer skips them until they are unfrozen.
    """
    scaled_ids = set(map(id, scaled))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        groups.setdefault((p.ndim > 1, id(p) in scaled_ids), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * (lr_scale if is_scaled else 1.0)}
        for (decay, is_scaled), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))
    ]


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr, momentum, nesterov: torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov),
    "adam": lambda groups, lr, momentum, nesterov: torch.optim.Adam(groups, lr=lr),
    "adamw": lambda groups, lr, momentum, nesterov: torch.optim.AdamW(groups, lr=lr),
}


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    scaled: list[nn.Parameter] = (),
    lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD uses momentum/nesterov; Adam and AdamW use their default betas."""
    if nesterov and (name != "sgd" or momentum <= 0):
        raise DeepstepError("--nesterov needs --optimizer sgd and a --momentum above 0")
    return OPTIMIZERS[name](parameter_groups(model, weight_decay, lr, scaled, lr_scale), lr, momentum, nesterov)


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def _constant(step: int, total: int, warmup: int) -> float:
    return _warmup(step, warmup)


def _step_decay(step: int, total: int, warmup: int) -> float:
    """x0.1 at half and again at three quarters of training (the classic CIFAR schedule)."""
    return _warmup(step, warmup) * (0.1 ** ((step >= total // 2) + (step >= 3 * total // 4)))


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _one_cycle(step: int, total: int, warmup: int) -> float:
    """Linear up to the peak over the warm-up (a quarter of training by default), linear down to 0."""
    warmup = warmup or max(1, total // 4)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


SCHEDULES: dict[str, Callable[[int, int, int], float]] = {
    "none": _constant,
    "step": _step_decay,
    "cosine": _cosine,
    "onecycle": _one_cycle,
}


def build_schedule(
    name: str, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: the factor on the base learning rate after each optimizer step."""
    factor = SCHEDULES[name]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step, total_steps, warmup_steps))


class Lookahead:
    """airbench94's Lookahead: a slow copy of the weights that training keeps returning to.

    From `start` x the total steps on, every `every` steps the model's floating-point state
    (weights and batch-norm statistics) moves into the slow copy, slow = rho * slow + (1 - rho) *
    fast, and training continues from the slow copy; rho = base**every * (t / total)**power grows
    from almost 0 to 0.77, so the averaging is weak while the learning rate is high and strong at
    the end. At the end of each epoch the model takes the slow copy, so that validation and
    checkpoints see it. Measured in the README (`--lookahead`).
    """

    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        steps_per_epoch: int,
        start: float = 0.3,
        every: int = 5,
        base: float = 0.95,
        power: float = 3.0,
    ):
        self.model, self.total_steps, self.steps_per_epoch = model, total_steps, steps_per_epoch
        self.start, self.every, self.base, self.power = start, every, base, power
        self.slow: list[torch.Tensor] | None = None

    def _state(self) -> list[torch.Tensor]:
        return [v for v in self.model.state_dict().values() if v.dtype.is_floating_point]

    @torch.no_grad()
    def _pull(self, rho: float) -> None:
        for slow, fast in zip(self.slow, self._state(), strict=True):
            slow.lerp_(fast, 1 - rho)
            fast.copy_(slow)

    def after_step(self, step: int) -> None:
        """After optimizer step number `step` (1-based, counted over the whole run)."""
        if step >= self.start * self.total_steps and step % self.every == 0:
            if self.slow is None:
                self.slow = [v.detach().clone() for v in self._state()]
            else:
                self._pull(self.base**self.every * (step / self.total_steps) ** self.power)
        if step % self.steps_per_epoch == 0 and self.slow is not None:
            self._pull(1.0)  # the epoch ends on the slow copy

    def state_dict(self) -> dict[str, list[torch.Tensor] | None]:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict[str, list[torch.Tensor] | None]) -> None:
        device = next(iter(self._state())).device
        self.slow = None if state["slow"] is None else [t.to(device) for t in state["slow"]]
