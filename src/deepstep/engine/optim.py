"""Optimizers and learning-rate schedules, picked by name from small tables."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from deepstep.errors import DeepstepError

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # _NormBase: batch and instance norms


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    scaled: list[nn.Parameter] = (),
    lr_scale: float = 1.0,
    norm_lr_scale: float = 1.0,
) -> list[dict]:
    """Weight decay on weights only: biases and norm scales (1-d tensors) are not decayed.

    The `scaled` parameters (a pretrained backbone) learn at `lr_scale` x `lr`. With a
    `norm_lr_scale` other than 1, the biases of normalisation layers learn at that multiple and
    are decayed by as much per step as the weights (weight decay / norm_lr_scale): airbench94's
    way of letting them move fast without growing. Frozen parameters are included: they have no
    gradient, so the optimizer skips them until they are unfrozen.
    """
    scaled_ids = set(map(id, scaled))
    norm_bias_ids = set()
    if norm_lr_scale != 1.0:
        norm_bias_ids = {id(m.bias) for m in model.modules() if isinstance(m, NORM_LAYERS) and m.bias is not None}
    groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        groups.setdefault((p.ndim > 1, id(p) in scaled_ids, id(p) in norm_bias_ids), []).append(p)

    def group(decay: bool, is_scaled: bool, norm_bias: bool, params: list[nn.Parameter]) -> dict:
        group_lr = lr * (lr_scale if is_scaled else 1.0)
        if norm_bias:
            return {"params": params, "weight_decay": weight_decay / norm_lr_scale, "lr": group_lr * norm_lr_scale}
        return {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": group_lr}

    order = sorted(groups, key=lambda key: (not key[0], key[1], key[2]))  # decayed weights first: the logged lr
    return [group(*key, groups[key]) for key in order]


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
    norm_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD uses momentum/nesterov; Adam and AdamW use their default betas."""
    if nesterov and (name != "sgd" or momentum <= 0):
        raise DeepstepError("--nesterov needs --optimizer sgd and a --momentum above 0")
    groups = parameter_groups(model, weight_decay, lr, scaled, lr_scale, norm_lr_scale)
    return OPTIMIZERS[name](groups, lr, momentum, nesterov)


def _warmup(step: int, warmup_steps: int, start: float) -> float:
    """From `start` x the base rate up to the base rate, linearly, over the warm-up steps."""
    return start + (1 - start) * (step + 1) / warmup_steps if step < warmup_steps else 1.0


def _constant(step: int, total: int, warmup: int, start: float, end: float) -> float:
    return _warmup(step, warmup, start)


def _step_decay(step: int, total: int, warmup: int, start: float, end: float) -> float:
    """x0.1 at half and again at three quarters of training (the classic CIFAR schedule)."""
    return _warmup(step, warmup, start) * (0.1 ** ((step >= total // 2) + (step >= 3 * total // 4)))


def _cosine(step: int, total: int, warmup: int, start: float, end: float) -> float:
    """After the warm-up, half a cosine from the base rate down to `end` x the base rate."""
    if step < warmup:
        return _warmup(step, warmup, start)
    progress = (step - warmup) / max(1, total - warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _one_cycle(step: int, total: int, warmup: int, start: float, end: float) -> float:
    """Linear up to the peak over the warm-up (a quarter of training by default), linear down to
    `end` x the peak (airbench94: up from 0.2, down to 0.07)."""
    warmup = warmup or max(1, total // 4)
    if step < warmup:
        return _warmup(step, warmup, start)
    return end + (1 - end) * max(0.0, (total - step) / max(1, total - warmup))


SCHEDULES: dict[str, Callable[[int, int, int, float, float], float]] = {
    "none": _constant,
    "step": _step_decay,
    "cosine": _cosine,
    "onecycle": _one_cycle,
}


def build_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    start_factor: float = 0.0,
    end_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: the factor on the base learning rate after each optimizer step. The
    warm-up starts at `start_factor`; cosine and one-cycle end at `end_factor`."""
    factor = SCHEDULES[name]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: factor(step, total_steps, warmup_steps, start_factor, end_factor)
    )


class Lookahead:
    """airbench94's Lookahead: a slow copy of the weights that training keeps returning to.

    From `start` x the total steps on, every `every` steps the model's floating-point state
    (weights and batch-norm statistics) moves into the slow copy, slow = rho * slow + (1 - rho) *
    fast, and training continues from the slow copy; rho = base**every * (t / total)**power grows
    from almost 0 to 0.77, so the averaging is weak while the learning rate is high and strong at
    the end. An epoch that ends between two such steps ends with one more, so that validation and
    checkpoints see the slow copy and the steps since the last update are averaged in, not lost.
    Measured in the README (`--lookahead`).
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
        if self.slow is None:
            if step >= self.start * self.total_steps and step % self.every == 0:
                self.slow = [v.detach().clone() for v in self._state()]
        elif step % self.every == 0 or step % self.steps_per_epoch == 0:
            self._pull(self.base**self.every * (step / self.total_steps) ** self.power)

    def state_dict(self) -> dict[str, list[torch.Tensor] | None]:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict[str, list[torch.Tensor] | None]) -> None:
        device = next(iter(self._state())).device
        self.slow = None if state["slow"] is None else [t.to(device) for t in state["slow"]]
