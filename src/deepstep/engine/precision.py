"""Device and numeric precision: autocast that is a no-op in fp32, a grad scaler only for fp16."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from deepstep.errors import DeepstepError

DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(requested: str = "auto") -> torch.device:
    """auto: CUDA if present, else Apple MPS, else the CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeepstepError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu or auto")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeepstepError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise DeepstepError(f"--device {requested!r} is not a device; use auto, cpu, cuda or mps") from None


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX-512-BF16, where oneDNN runs bf16 matrix work natively."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass(frozen=True)
class Precision:
    """What `--precision` resolved to on this device, and why."""

    name: str  # "32", "bf16" or "16"
    device_type: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling guards fp16 gradients from underflow; a no-op for fp32 and bf16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "16")


DEVICE_WORDS = {"cpu": "CPU", "cuda": "GPU", "mps": "Mac's GPU"}


def this_device(kind: str) -> str:
    """'this CPU', 'this GPU': a device type as a sentence names it."""
    return f"this {DEVICE_WORDS.get(kind, kind)}"


def resolve_precision(requested: str, device: torch.device, preset: str = "") -> Precision:
    """`requested` on this device; `preset` names where an explicit value came from, if not a flag."""
    kind = device.type
    if requested == "auto":
        if kind == "cuda":
            if torch.cuda.is_bf16_supported():
                return Precision("bf16", kind, "auto: bf16 autocast, supported by this GPU")
            return Precision("16", kind, "auto: fp16 autocast with loss scaling (this GPU has no bf16)")
        if kind == "cpu" and cpu_has_fast_bf16():
            return Precision("bf16", kind, "auto: bf16 autocast, this CPU has AMX/AVX-512-BF16")
        return Precision("32", kind, f"auto: fp32 (no fast bf16 on {this_device(kind)})")
    if requested == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeepstepError("--precision bf16: this GPU does not support bfloat16; use --precision 16 or auto")
    if requested == "bf16" and kind == "cpu" and not cpu_has_fast_bf16():
        return Precision(
            requested,
            kind,
            "--precision bf16; this CPU has no AMX/AVX-512-BF16, so bf16 is emulated: expect it slower than 32",
        )
    # fp16 autocast on the 2-core AMX Xeon (which has AVX512-FP16; torch 2.14, 29 November 2026) against
    # fp32: a training step of 128 images, lenet 573-698 against 13-18 ms, resnet-cifar 33 s against
    # 94-133 ms (lenet: 98% of it in the convolutions' backward pass); a forward pass of 256 images, lenet
    # 11 against 6-9 ms, resnet-cifar 93 against 79-86 ms (bf16: 30-33 ms).
    if requested == "16" and kind == "cpu":
        return Precision(
            requested,
            kind,
            "--precision 16; on a CPU fp16 is no faster than 32 forward and 30-350x slower in training "
            "(the convolutions' backward pass); bf16 is the CPU's fast half precision",
        )
    return Precision(requested, kind, f"--precision {requested}" + (f", {preset}" if preset else ""))


# What `auto` does not pick on a CPU, though the CPU has fast bf16: measured on a 2-core AMX Xeon
# (torch 2.14, training steps with deepstep's kernel choice for each precision, median of 5
# alternating rounds in one process, 29 November 2026), bf16 step time / fp32 step time:
# - convolutional nets with little work a step: LeNet at 4 / 8 / 16 / 32 / 64 images a step
#   (2.6 / 5.2 / 10 / 21 / 42 M multiply-adds forward) 1.47 / 1.23 / 1.07 / 0.99 / 0.82;
#   resnet-cifar at 4 / 16 images (96 / 385 M) 0.89 / 0.72. Autocast's casts of each layer's
#   weights and inputs are a cost per call that bf16's faster matrix work repays only in bigger steps.
# - GRU (hidden 64, 24 steps) at 64 / 256 / 1,024 windows 1.42 / 1.31 / 1.01, Elman RNN at 256
#   1.40, where the LSTM gains (0.86 / 0.64 / 0.71).
CPU_BF16_MIN_MULT_ADDS = 32_000_000
CPU_SLOWER_IN_BF16 = (torch.nn.GRU, torch.nn.RNN)


def pays_off(precision: Precision, step_mult_adds: int, auto: bool) -> Precision:
    """bf16 that `auto` picked on a CPU, kept only when one forward call of a training step
    (a batch, or its part with --micro-batch) has `CPU_BF16_MIN_MULT_ADDS` multiply-adds to do;
    fp32 otherwise, which is faster there (measurements above)."""
    if not auto or precision.name != "bf16" or precision.device_type != "cpu":
        return precision
    if step_mult_adds >= CPU_BF16_MIN_MULT_ADDS:
        return precision
    return Precision(
        "32",
        "cpu",
        f"auto: fp32; bf16 autocast pays on a CPU from {CPU_BF16_MIN_MULT_ADDS // 1_000_000} M multiply-adds "
        f"a step, and this one has {step_mult_adds / 1e6:.1f} M",
    )


def supported_by(precision: Precision, model: torch.nn.Module, auto: bool) -> Precision:
    """`precision`, checked against the model's recurrent layers, which oneDNN may not run in a
    lower precision (the LSTM in bf16 on a CPU without AVX-512-BF16 / AMX fails at the first
    step) or runs slower in it (GRU and RNN layers in bf16 on a CPU). A precision `auto` picked
    falls back to fp32; an explicit one is refused in one line when it cannot run."""
    if precision.name == "32":
        return precision
    kinds = sorted({type(m) for m in model.modules() if isinstance(m, torch.nn.RNNBase)}, key=str)
    slower = [k for k in kinds if issubclass(k, CPU_SLOWER_IN_BF16)]
    if auto and precision.name == "bf16" and precision.device_type == "cpu" and slower:
        return Precision("32", "cpu", f"auto: fp32; {slower[0].__name__} layers run slower in bf16 on a CPU")
    for kind in kinds:
        error = _recurrent_error(kind, precision.device_type, precision.name)
        if not error:
            continue
        if auto:
            return Precision(
                "32",
                precision.device_type,
                f"auto: fp32 ({this_device(precision.device_type)} cannot run {kind.__name__} in {precision.name})",
            )
        raise DeepstepError(
            f"--precision {precision.name}: {this_device(precision.device_type)} cannot run {kind.__name__} "
            f"in {precision.name} ({error}); use --precision 32"
        )
    return precision


@functools.cache
def _recurrent_error(kind: type, device_type: str, name: str) -> str | None:
    """The first sentence of the error a tiny `kind` layer raises under autocast, or None if it runs."""
    with torch.random.fork_rng(devices=[]):  # the probe's initialisation leaves the seeded stream alone
        layer = kind(1, 1, batch_first=True).to(device_type)
    try:
        with torch.autocast(device_type, dtype=DTYPES[name]):
            layer(torch.zeros(1, 2, 1, device=device_type))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        return first_line.split(". ")[0]  # oneDNN's next sentence only points at ONEDNN_VERBOSE
    return None
