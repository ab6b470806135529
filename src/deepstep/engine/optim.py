"""Optimizers and learning-rate schedules, picked by name from small tables."""

from __future__ import annotations

import copy
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

    A module can ask for more with an `optimizer_hints()` method: a list of {"params": [...]}
    with "norm_bias": True (train them as the norm biases are trained) and/or "stop_epoch": n
    (their rate falls from its start to 0 over the first n epochs; see `build_schedule`). Each
    hint becomes a group of its own, after the others.
    """
    scaled_ids = set(map(id, scaled))
    hints = [hint for m in model.modules() if hasattr(m, "optimizer_hints") for hint in m.optimizer_hints()]
    hinted_ids = {id(p) for hint in hints for p in hint["params"]}
    norm_bias_ids = set()
    if norm_lr_scale != 1.0:
        norm_bias_ids = {id(m.bias) for m in model.modules() if isinstance(m, NORM_LAYERS) and m.bias is not None}
    groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if id(p) not in hinted_ids:
            groups.setdefault((p.ndim > 1, id(p) in scaled_ids, id(p) in norm_bias_ids), []).append(p)

    def group(decay: bool, is_scaled: bool, norm_bias: bool, params: list[nn.Parameter]) -> dict:
        group_lr = lr * (lr_scale if is_scaled else 1.0)
        if norm_bias:
            return {"params": params, "weight_decay": weight_decay / norm_lr_scale, "lr": group_lr * norm_lr_scale}
        return {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": group_lr}

    order = sorted(groups, key=lambda key: (not key[0], key[1], key[2]))  # decayed weights first: the logged lr
    hinted = []
    for hint in hints:
        norm_bias = hint.get("norm_bias", False)
        extra = {"stop_epoch": hint["stop_epoch"]} if "stop_epoch" in hint else {}
        decay = not norm_bias and all(p.ndim > 1 for p in hint["params"])
        hinted.append({**group(decay, False, norm_bias and norm_lr_scale != 1.0, hint["params"]), **extra})
    return [group(*key, groups[key]) for key in order] + hinted


def orthogonalize(matrix: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """About U V^T for `matrix` = U S V^T: its singular values moved into roughly [0.5, 1.5]
    by a quintic Newton-Schulz iteration in bf16 (Muon's, with Jordan's coefficients, which
    push small singular values up fast rather than converging exactly)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix.to(torch.bfloat16)
    x = x / (x.norm() + 1e-7)  # all singular values <= 1
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T  # the Gram matrix of the short side is the smaller one
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan, 2024) for conv filters, as airbench94's Muon version trains them, and
    SGD for every other parameter, in one optimizer (one schedule, one state to checkpoint).

    Groups with `muon=True` (conv filters): the Nesterov momentum of the gradient, seen as a
    matrix out_channels x (in_channels * kh * kw), is orthogonalised (all its directions the same
    size) and taken as the step. Before each step the filters are rescaled to a Frobenius norm of
    sqrt(out_channels): their scale stays fixed (the batch norm after them ignores it), in place of
    weight decay; so it is meant for nets with batch norm after their convs. Other groups: SGD with
    momentum, Nesterov and weight decay, computed as torch.optim.SGD computes them.
    """

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool, ns_steps: int = 3):
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": 0.0, "muon": False}
        super().__init__(groups, {**defaults, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                step = p.grad
                if group["weight_decay"] and not group["muon"]:
                    step = step.add(p, alpha=group["weight_decay"])
                if momentum:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buffer = state["momentum_buffer"] = step.clone()
                    else:
                        buffer = state["momentum_buffer"].mul_(momentum).add_(step)
                    step = step.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                if group["muon"]:
                    p.mul_(math.sqrt(len(p)) / p.norm().clamp(min=1e-12))
                    step = orthogonalize(step.reshape(len(step), -1), group["ns_steps"]).view_as(p)
                p.add_(step, alpha=-group["lr"])
        return loss


def muon_groups(groups: list[dict], lr: float, muon_lr: float, muon_momentum: float) -> list[dict]:
    """`groups` with their conv filters (4-d weights) moved into Muon groups: at `muon_lr` x the
    group's share of `lr` (a scaled backbone keeps its scale), with Nesterov `muon_momentum` and
    no weight decay (Muon fixes their norm instead)."""
    split = []
    for group in groups:
        filters = [p for p in group["params"] if p.ndim == 4]
        others = [p for p in group["params"] if p.ndim != 4]
        if filters:
            scale = group["lr"] / lr
            extra = {"stop_epoch": group["stop_epoch"]} if "stop_epoch" in group else {}
            split.append(
                {"params": filters, "lr": muon_lr * scale, "momentum": muon_momentum, "nesterov": True, "muon": True}
                | extra
            )
        if others:
            split.append({**group, "params": others})
    return split


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr, momentum, nesterov: torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov),
    "adam": lambda groups, lr, momentum, nesterov: torch.optim.Adam(groups, lr=lr),
    "adamw": lambda groups, lr, momentum, nesterov: torch.optim.AdamW(groups, lr=lr),
    # PyTorch's defaults (alpha 0.99, no momentum); Keras's RMSprop averages with rho 0.9
    "rmsprop": lambda groups, lr, momentum, nesterov: torch.optim.RMSprop(groups, lr=lr),
    "muon": lambda groups, lr, momentum, nesterov: Muon(groups, lr=lr, momentum=momentum, nesterov=nesterov),
}


def check_optimizer(name: str, model: nn.Module, model_name: str | None = None) -> None:
    """Refuse an optimizer that has nothing to step in `model` (called before a run folder exists)."""
    if name == "muon" and not any(p.ndim == 4 for p in model.parameters()):
        raise DeepstepError(
            f"--optimizer muon steps conv filters, and {model_name or type(model).__name__} has none: "
            "use sgd, adam, adamw or rmsprop"
        )


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
    muon_lr: float = 0.24,
    muon_momentum: float = 0.6,
) -> torch.optim.Optimizer:
    """SGD uses momentum/nesterov; Adam, AdamW and RMSprop use PyTorch's defaults; Muon trains the conv
    filters at `muon_lr` with (Nesterov) `muon_momentum`, and the rest as SGD does."""
    if nesterov and (name not in ("sgd", "muon") or momentum <= 0):
        raise DeepstepError("--nesterov needs --optimizer sgd or muon and a --momentum above 0")
    check_optimizer(name, model)
    groups = parameter_groups(model, weight_decay, lr, scaled, lr_scale, norm_lr_scale)
    if name == "muon":
        groups = muon_groups(groups, lr, muon_lr, muon_momentum)
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


def _linear(step: int, total: int, warmup: int, start: float, end: float) -> float:
    """After the warm-up (none by default), linear from the base rate down to `end` x the base
    rate (airbench94's Muon version: from the first step down to 0)."""
    if step < warmup:
        return _warmup(step, warmup, start)
    return end + (1 - end) * max(0.0, (total - step) / max(1, total - warmup))


def _one_cycle(step: int, total: int, warmup: int, start: float, end: float) -> float:
    """Linear up to the peak over the warm-up (a quarter of training by default), linear down to
    `end` x the peak (airbench94: up from 0.2, down to 0.07)."""
    return _linear(step, total, warmup or max(1, total // 4), start, end)


SCHEDULES: dict[str, Callable[[int, int, int, float, float], float]] = {
    "none": _constant,
    "step": _step_decay,
    "cosine": _cosine,
    "onecycle": _one_cycle,
    "linear": _linear,
}


def build_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    start_factor: float = 0.0,
    end_factor: float = 0.0,
    steps_per_epoch: int = 0,
    plateau: Plateau | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: the factor on the base learning rate after each optimizer step. The
    warm-up starts at `start_factor`; cosine and one-cycle end at `end_factor`. A group with a
    "stop_epoch" (`parameter_groups`' hints) instead falls linearly from its rate at the first step
    to 0 at the end of that epoch, as airbench94's whitening bias does, and stays there.
    "plateau": the rate (after any warm-up) times `plateau`'s scale, which the epochs lower."""
    if name == "plateau":
        if plateau is None:
            raise ValueError("the plateau schedule needs its Plateau")

        def factor(step: int, total: int, warmup: int, start: float, end: float) -> float:
            return _constant(step, total, warmup, start, end) * plateau.scale  # lowered between epochs
    else:
        factor = SCHEDULES[name]

    def group_factor(group: dict) -> Callable[[int], float]:
        if "stop_epoch" not in group:
            return lambda step: factor(step, total_steps, warmup_steps, start_factor, end_factor)
        if not steps_per_epoch:
            raise ValueError("a group with a stop_epoch needs the schedule's steps_per_epoch")
        stop = group["stop_epoch"] * steps_per_epoch
        return lambda step: max(0.0, 1 - step / stop) if stop else 0.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [group_factor(g) for g in optimizer.param_groups])


class Plateau:
    """`--schedule plateau`, as Keras's ReduceLROnPlateau: the learning rate times `factor` each
    time the validation metric has gone `patience` epochs in a row without improving (the
    metric and "improving" are the ones that pick the best checkpoint). Kept as a scale that the
    per-step schedule multiplies in, so a warm-up still runs under it, and saved with `last`, so
    that --resume goes on at the lowered rate."""

    def __init__(self, factor: float = 0.1, patience: int = 3):
        self.factor, self.patience = factor, patience
        self.scale, self.stale = 1.0, 0

    def after_epoch(self, improved: bool, optimizer: torch.optim.Optimizer) -> bool:
        """After an epoch's validation; True when it lowered the rate, from the next step on."""
        self.stale = 0 if improved else self.stale + 1
        if self.stale < self.patience:
            return False
        self.scale *= self.factor
        self.stale = 0
        for group in optimizer.param_groups:
            if "stop_epoch" not in group:  # the schedule sets those itself
                group["lr"] *= self.factor
        return True

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "stale": self.stale}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.stale = float(state["scale"]), int(state["stale"])


class Lookahead:
    """airbench94's Lookahead: a slow copy of the weights that training keeps returning to.

    From `start` x the total steps on, every `every` steps the model's floating-point state
    (weights and batch-norm statistics) moves into the slow copy, slow = rho * slow + (1 - rho) *
    fast, and training continues from the slow copy; rho = base**every * (t / total)**power grows
    from almost 0 to 0.77, so the averaging is weak while the learning rate is high and strong at
    the end. An epoch that ends between two such steps ends with one more, so that validation and
    checkpoints see the slow copy and the steps since the last update are averaged in, not lost.
    Measured in bench/RESULTS.md (`--lookahead`).
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


class WeightAverage:
    """--ema DECAY: an exponential moving average of the weights and batch-norm statistics, the copy
    that validation, the checkpoints, evaluate, predict and export use (timm's ModelEma, Keras's
    use_ema). After each optimizer step, average = d x average + (1 - d) x weights, with
    d = min(DECAY, (1 + n) / (10 + n)) after n updates, as timm warms it up, so that the first steps
    do not hold the average near the random initial weights. Kept here rather than in
    torch.optim.swa_utils.AveragedModel, whose update reads its step count from the device (a sync
    every step on a GPU)."""

    def __init__(self, model: nn.Module, decay: float):
        from deepstep.engine.checkpoint import unwrap

        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).requires_grad_(False)
        self.updates = 0
        # (average, weights) pairs of the two state dicts' tensors, which share the modules' storage
        trained = unwrap(model).state_dict()
        self._pairs = [(average, trained[name]) for name, average in self.module.state_dict().items()]

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step of the model it was made from."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, now in self._pairs:
            if average.is_floating_point():
                average.lerp_(now, 1 - d)
            else:  # batch norm's count of batches
                average.copy_(now)
        self.updates += 1

    def state_dict(self) -> dict[str, int]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.updates = int(state["updates"])
