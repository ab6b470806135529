"""Runtime settings that change speed, not results: CPU threads, how freed memory is kept, the
CPU convolution kernels (oneDNN or PyTorch's own im2col + GEMM), the memory format, and how
small convolutions' weight gradients are computed in bf16 (which rounds differently, with the
same error against fp32).

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

oneDNN's bf16 weight gradient is slow where a conv's output is small: 1.3-14x the time of im2col
+ one matrix product at 2x2-4x4 outputs and 1.0-1.7x at 7x7 (3x3 convs, 64-512 channels, 250-256
images, channels_last, 29 November 2026; same error against fp32, 0.002 of the largest gradient;
the ratio is higher on the machine's slow hours), while at 8x8 and above oneDNN is as fast or
faster (0.15-1.04x), as it is with fewer than 64 input channels (0.31-0.89x at 16 and 32), and
in fp32 the matrix product wins only at 3x3 outputs with 256+ channels. So `MatmulGradConv2d`
takes over those weight gradients in bf16, for outputs of up to 7x7 from 64 or more input
channels.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepstep.engine.precision import Precision, cpu_has_fast_bf16
from deepstep.hardware import available_cores

NATIVE_KERNELS_MAX_BATCH = 4
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MATMUL_WEIGHT_GRAD_MAX_POSITIONS = 7 * 7  # a conv output's H x W up to which bf16 weight gradients use a matmul
MATMUL_WEIGHT_GRAD_MIN_CHANNELS = 64  # ... for convs with at least this many input channels


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


class Columns:
    """One buffer, reused, for the im2col columns of every `MatmulGradConv2d` in a model: the backward
    pass runs one layer at a time, and a fresh block for each (54 MiB for a 256-channel 7x7 layer at
    250 images) would be mapped from the OS and page-faulted every step (see `keep_freed_memory`)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0)

    def fill(self, x: torch.Tensor, kernel: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
        """The (N * H' * W', kh * kw * C) patches of `x` (N, C, H, W) that a stride-1 conv multiplies,
        in a channels_last weight's (kh, kw, C) order."""
        n, c, h, w = x.shape
        (kh, kw), (ph, pw) = kernel, padding
        out_h, out_w = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
        size = n * out_h * out_w * kh * kw * c
        if self.buffer.numel() < size or self.buffer.dtype != x.dtype:
            self.buffer = torch.empty(size, dtype=x.dtype)
        columns = self.buffer[:size].view(n, out_h, out_w, kh * kw, c)
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # (N, H + 2ph, W + 2pw, C)
        for i in range(kh):
            for j in range(kw):
                columns[:, :, :, i * kw + j].copy_(padded[:, i : i + out_h, j : j + out_w])
        return columns.view(n * out_h * out_w, kh * kw * c)


class _MatmulWeightGrad(torch.autograd.Function):
    """A stride-1 conv2d whose backward pass takes the input gradient from PyTorch's convolution
    backward and the weight gradient from one matrix product: output gradient (O, N*H'*W') @
    input columns (N*H'*W', kh*kw*C)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, columns):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.columns, ctx.has_bias = padding, columns, bias is not None
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            out_channels, in_channels, kh, kw = weight.shape
            rows = grad.permute(0, 2, 3, 1).reshape(-1, out_channels)  # (N * H' * W', O)
            columns = ctx.columns.fill(x, (kh, kw), ctx.padding)  # (N * H' * W', kh * kw * C)
            grad_weight = (rows.T @ columns).view(out_channels, kh, kw, in_channels).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


class MatmulGradConv2d(nn.Conv2d):
    """nn.Conv2d (stride 1, no dilation or groups, 64+ input channels) whose weight gradient, when it
    trains in bf16 on a CPU with outputs of at most `MATMUL_WEIGHT_GRAD_MAX_POSITIONS`, comes from
    im2col + one matrix product (see module doc); everywhere else, inference included, it is
    nn.Conv2d itself."""

    columns: Columns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        positions = (x.shape[-2] + 2 * ph - kh + 1) * (x.shape[-1] + 2 * pw - kw + 1)
        if not (
            torch.is_grad_enabled()
            and self.weight.requires_grad
            and x.device.type == "cpu"
            and x.dim() == 4
            and dtype == torch.bfloat16
            and positions <= MATMUL_WEIGHT_GRAD_MAX_POSITIONS
        ):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return _MatmulWeightGrad.apply(x.to(dtype), self.weight.to(dtype), bias, self.padding, self.columns)


def _takes_matmul_weight_grad(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.in_channels >= MATMUL_WEIGHT_GRAD_MIN_CHANNELS
    )


def use_matmul_weight_grad(model: nn.Module) -> int:
    """Make the model's stride-1 nn.Conv2d layers with 64 or more input channels `MatmulGradConv2d`s
    sharing one `Columns`; returns how many. Only their class changes: each keeps its object,
    parameters and state_dict keys, so optimizers, hooks and checkpoints see the same module."""
    columns, count = Columns(), 0
    for module in model.modules():
        if _takes_matmul_weight_grad(module):
            module.__class__ = MatmulGradConv2d
            module.columns = columns
            count += 1
    return count


@dataclass(frozen=True)
class KernelChoice:
    onednn: bool
    channels_last: bool
    matmul_weight_grad: bool = False  # bf16 weight gradients of small conv outputs by MatmulGradConv2d

    def describe(self) -> str:
        kernels = "oneDNN" if self.onednn else "PyTorch's native"
        text = f"{kernels} convolutions, {'channels_last' if self.channels_last else 'contiguous'}"
        if self.matmul_weight_grad:
            side = math.isqrt(MATMUL_WEIGHT_GRAD_MAX_POSITIONS)
            text += (
                f"; bf16 weight gradients of conv outputs up to {side}x{side} by im2col + matmul "
                f"({MATMUL_WEIGHT_GRAD_MIN_CHANNELS}+ input channels)"
            )
        return text


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def choose_cpu_kernels(model: nn.Module, batch_size: int, precision: Precision) -> KernelChoice:
    """oneDNN + channels_last for convolutional nets, except tiny fp32 batches, and in bf16 on a CPU
    with fast bf16 the matmul weight gradient for small conv outputs (see module doc)."""
    if not _has_conv(model):
        return KernelChoice(onednn=True, channels_last=False)
    if precision.name == "32" and batch_size <= NATIVE_KERNELS_MAX_BATCH:
        return KernelChoice(onednn=False, channels_last=False)
    matmul = precision.name == "bf16" and precision.device_type == "cpu" and cpu_has_fast_bf16()
    return KernelChoice(onednn=True, channels_last=True, matmul_weight_grad=matmul)


def apply_kernels(model: nn.Module, choice: KernelChoice) -> None:
    """Set the process-wide oneDNN switch and the model's memory format, and hand small convs'
    bf16 weight gradients to `MatmulGradConv2d` when the choice says so."""
    torch.backends.mkldnn.enabled = choice.onednn
    model.to(memory_format=torch.channels_last if choice.channels_last else torch.contiguous_format)
    if choice.matmul_weight_grad:
        use_matmul_weight_grad(model)
