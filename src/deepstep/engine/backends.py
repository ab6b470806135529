"""Runtime settings that change speed, not results: CPU threads, how freed memory is kept, the
CPU convolution kernels (oneDNN or PyTorch's own im2col + GEMM) and the memory format.

The rule in `choose_cpu_kernels` comes from measurements on a 2-core AVX-512 CPU (torch 2.14,
separate processes, LeNet on 32x32 images; the machine's own noise is about +-30%, so each
figure is the quiet-machine range over several runs):
- fp32, batch 4: PyTorch's kernels 1.0-1.2 ms per training step, oneDNN 1.25-1.35 ms (oneDNN
  costs about 1.2 ms per step whatever the batch); from batch 8 on oneDNN is faster
  (batch 8: 210 vs 320 us per image; batch 16: 140-180 vs 370-400 us per image).
- channels_last with oneDNN: fp32 batch 128 8.5-10 ms vs 11-12 ms per step; bf16 batch 128
  8.4 vs 15 ms; resnet-cifar bf16 batch 512 300-330 vs 410-465 ms.
A timing-based tuner (like cudnn.benchmark) was tried and dropped: on this machine the noise
is larger than the differences it has to see, and it made runs with the same seed pick
different kernels.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from deepstep.engine.precision import Precision
from deepstep.hardware import available_cores

NATIVE_KERNELS_MAX_BATCH = 4
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def set_cpu_threads(threads: int | None = None) -> int:
    """One intra-op thread per available core (or `threads`), shared out among the processes that
    torchrun started on this machine (LOCAL_WORLD_SIZE)."""
    threads = threads or max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MiB for the next training step instead of handing
    them back to the OS; True where that was done (Linux with glibc).

    By default glibc maps blocks of 128 KiB and more straight from the OS, raising that bar only
    after each free, and hands the heap's free top back once it passes twice the bar; every step
    then page-faults on fresh pages. airbench at 250 images a step took 33,000-58,000 minor faults
    and 0.09-0.19 s of system time a step that way, and 0-230 faults with this (separate
    processes); one epoch of `--recipe cifar-airbench-muon --micro-batch 256` took 97-101 s
    against 109-121 s (three alternating pairs, 29 November 2026), for 3-12% more peak memory.
    32 MiB is the largest bar glibc accepts: blocks above it are still mapped and unmapped (a
    smaller `--micro-batch` brings a step's tensors under it).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def prepare_cpu(device: torch.device) -> int | None:
    """For training on `device`: on a CPU, one thread per core and freed memory kept; returns the
    thread count, None on other devices."""
    if device.type != "cpu":
        return None
    keep_freed_memory()
    return set_cpu_threads()


@dataclass(frozen=True)
class KernelChoice:
    onednn: bool
    channels_last: bool

    def describe(self) -> str:
        kernels = "oneDNN" if self.onednn else "PyTorch's native"
        return f"{kernels} convolutions, {'channels_last' if self.channels_last else 'contiguous'}"


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def choose_cpu_kernels(model: nn.Module, batch_size: int, precision: Precision) -> KernelChoice:
    """oneDNN + channels_last for convolutional nets, except tiny fp32 batches (see module doc)."""
    if not _has_conv(model):
        return KernelChoice(onednn=True, channels_last=False)
    if precision.name == "32" and batch_size <= NATIVE_KERNELS_MAX_BATCH:
        return KernelChoice(onednn=False, channels_last=False)
    return KernelChoice(onednn=True, channels_last=True)


def apply_kernels(model: nn.Module, choice: KernelChoice) -> None:
    """Set the process-wide oneDNN switch and the model's memory format."""
    torch.backends.mkldnn.enabled = choice.onednn
    model.to(memory_format=torch.channels_last if choice.channels_last else torch.contiguous_format)
