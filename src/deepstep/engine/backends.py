"""Runtime settings that change speed, not results: CPU threads, the CPU convolution
kernels (oneDNN or PyTorch's own) and the memory format (channels_last or not).

Like cudnn.benchmark, `tune_cpu_kernels` times a few forward + backward passes of the real
model on a batch of the real shape with each candidate and keeps the fastest. Measured on a
2-core AVX-512 CPU: at batch 4, LeNet's fp32 step takes ~1.1 ms with PyTorch's im2col
kernels and ~1.6 ms with oneDNN; at batch 128 oneDNN is twice as fast.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from deepstep.engine.loop import Step
from deepstep.engine.precision import Precision
from deepstep.hardware import available_cores


def set_cpu_threads(threads: int | None = None) -> int:
    """One intra-op thread per available core (or `threads`)."""
    threads = threads or available_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class KernelChoice:
    onednn: bool
    channels_last: bool

    def describe(self) -> str:
        return f"{'oneDNN' if self.onednn else 'native'} convolutions, {'channels_last' if self.channels_last else 'contiguous'}"


def apply_kernels(model: nn.Module, choice: KernelChoice) -> None:
    torch.backends.mkldnn.enabled = choice.onednn
    model.to(memory_format=torch.channels_last if choice.channels_last else torch.contiguous_format)


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _time_steps(model: nn.Module, step: Step, batch, precision: Precision, budget_s: float) -> float:
    def once() -> None:
        with precision.autocast():
            loss = step(model, batch)["loss"]
        loss.backward()

    for _ in range(2):
        once()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 2 or (len(times) < 7 and time.perf_counter() < deadline):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tune_cpu_kernels(
    model: nn.Module, step: Step, batch, precision: Precision, budget_s: float = 0.5
) -> tuple[KernelChoice, dict[str, float]]:
    """Pick the fastest kernels and memory format for this model and batch shape on the CPU.

    The model's weights, gradients and batch-norm statistics are left as they were found.
    A candidate must be 10% faster than oneDNN + contiguous (PyTorch's default) to be kept,
    so that close calls do not flip between runs.
    """
    default = KernelChoice(onednn=True, channels_last=False)
    if not _has_conv(model):
        return default, {}
    candidates = [default, KernelChoice(True, True)]
    if precision.name == "32":
        candidates.append(KernelChoice(False, False))  # PyTorch's own kernels have no fast bf16
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    timings = {}
    try:
        for choice in candidates:
            apply_kernels(model, choice)
            if choice.channels_last:
                x, *rest = batch
                candidate_batch = (x.contiguous(memory_format=torch.channels_last), *rest)
            else:
                candidate_batch = batch
            timings[choice] = _time_steps(model, step, candidate_batch, precision, budget_s)
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.train(was_training)
    best = min(timings, key=timings.get)
    if timings[best] > 0.9 * timings[default]:
        best = default
    apply_kernels(model, best)
    return best, {c.describe(): round(t * 1e3, 3) for c, t in timings.items()}
