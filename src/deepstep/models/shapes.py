"""Follow a tensor through a model, layer by layer, and say where an input stops fitting."""

from __future__ import annotations

import math
import os
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from deepstep.errors import DeepstepError, reason_of


@dataclass
class LayerShape:
    """One leaf layer's call: its qualified name, the module, and the shapes in and out."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


class InputMismatch(Exception):
    """Raised by trace_shapes: the layer where the input stopped fitting, and why; for an error
    in the forward's code between layers, `module` is None and `layer` says what it came after."""

    def __init__(
        self,
        layer: str,
        module: nn.Module | None,
        input_shape: tuple[int, ...] | None,
        reason: str,
        done: list[LayerShape],
        about_shapes: bool = True,
    ):
        super().__init__(reason)
        self.layer = layer
        self.module = module
        self.input_shape = input_shape
        self.reason = reason
        self.done = done
        self.about_shapes = about_shapes  # what torch raises for a shape it cannot take, not a NameError


@contextmanager
def looked_into(model: nn.Module, handles: list[RemovableHandle]) -> Iterator[nn.Module]:
    """`model` in eval mode for a pass watched by the hooks `handles`, which are removed after it;
    its mode is put back. In train mode the pass would move batch norm's running statistics."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def trace_shapes(model: nn.Module, input_size: tuple[int, ...], batch: int = 1) -> list[LayerShape]:
    """Run a zero input of `(batch, *input_size)` through `model`, recording every leaf layer.

    Works on the meta device too, so a model built there costs no memory.
    Raises InputMismatch naming the first layer that cannot take what it is given.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children()) and name]
    done: list[LayerShape] = []
    current: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def before(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
            current.append((name, module, shape))

        return hook

    def after(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            _, _, shape_in = current.pop()
            shape_out = tuple(output.shape) if isinstance(output, torch.Tensor) else tuple(output[0].shape)
            done.append(LayerShape(name, module, shape_in, shape_out))

        return hook

    handles = []
    for name, module in leaves:
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after(name)))
    with looked_into(model, handles):
        try:
            with torch.no_grad():
                model(torch.zeros((batch, *input_size), device=device))
        except Exception as err:  # a model of the user's may raise anything
            reason = reason_of(err)
            if current:
                name, module, shape = current[-1]
                raise InputMismatch(name, module, shape, reason, done) from None
            after = f"layer {done[-1].name}" if done else "the input"  # between layers: in the forward's own code
            reason = f"{type(err).__name__}: {reason} ({_raised_at(err)})"
            shaped = isinstance(err, RuntimeError | ValueError | IndexError)
            raise InputMismatch(after, None, done[-1].output_shape if done else None, reason, done, shaped) from None
    return done


def feature_maps(model: nn.Module, image: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """What each convolution and pooling layer makes of one `image` (C, H, W), normalised as the
    model takes it: (name, layer, its output (C', H', W')) for each call, in the order of the
    forward pass (a layer used twice, such as lenet's pool, gives two)."""
    maps: list[tuple[str, nn.Module, torch.Tensor]] = []
    kinds = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
    kinds += (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)

    def keep(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                # a copy: an in-place ReLU after a conv (VGG's) would change the output kept
                maps.append((name, module, output[0].detach().to("cpu", torch.float32, copy=True)))

        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in model.named_modules() if isinstance(m, kinds)]
    with looked_into(model, handles), torch.no_grad():
        model(image.unsqueeze(0))
    return maps


def _raised_at(err: BaseException) -> str:
    """Where the model's own code raised `err` (or called the torch function that did): the last
    frame of its traceback outside torch."""
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(torch_dir)]
    return f"{frames[-1].filename}, line {frames[-1].lineno}" if frames else "inside torch"


def format_size(size: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in size)


def size_parts(text: str) -> list[str]:
    """'3x32x32', '3,32,32' and '(3, 32, 32)' (as Keras and PyTorch print shapes) -> ['3', '32', '32']."""
    return re.split(r"\s*[x,]\s*", str(text).lower().strip().strip("()[]").strip().rstrip(","))


def parse_input_size(text: str) -> tuple[int, ...]:
    """'3x32x32' -> (3, 32, 32); '30x4' -> (30, 4) for a sequence of 30 steps of 4 features;
    commas do as well as x."""
    try:
        sizes = tuple(int(part) for part in size_parts(text))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) <= 0:
        raise DeepstepError(
            f"--input {text!r} is not a size: use CxHxW such as 3x32x32, or STEPSxFEATURES such as 30x4"
        )
    return sizes


def check_input(
    model: nn.Module, model_name: str, input_size: tuple[int, ...], declared: tuple[int, ...]
) -> list[LayerShape]:
    """trace_shapes, turning a mismatch into a one-line DeepstepError that names the layer."""
    try:
        return trace_shapes(model, input_size)
    except InputMismatch as err:
        hint = f". Its declared input is {format_size(declared)} (--image-size)" if err.about_shapes else ""
        raise DeepstepError(f"{describe_mismatch(model, model_name, input_size, err, declared)}{hint}") from None


# ---- the layer-by-layer summary ----------------------------------------------------------------

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


def _per_dim(value: int | tuple[int, ...] | str, dims: int) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * dims


def size_formula(module: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The output-size formula (H + 2P - FH)/S + 1 filled in with the layer's own numbers, e.g.
    `(32 + 2*0 - 5)/1 + 1 = 28`; one per spatial dimension when they differ; "" for other layers."""
    if isinstance(module, _CONV + _POOL):
        dims = 3 if "3d" in type(module).__name__ else 2 if "2d" in type(module).__name__ else 1
        spatial = input_shape[-dims:]
        kernel = _per_dim(module.kernel_size, dims)
        stride = _per_dim(module.stride if module.stride is not None else module.kernel_size, dims)
        padding = _per_dim(module.padding, dims)
        dilation = _per_dim(getattr(module, "dilation", 1), dims)
        ceil = getattr(module, "ceil_mode", False)
        if isinstance(module.padding, str):  # 'same' / 'valid' convolutions
            return f"padding={module.padding!r}"
        parts = []
        for size, k, s, p, d in zip(spatial, kernel, stride, padding, dilation, strict=True):
            span = str(k) if d == 1 else f"{d}*({k}-1)+1"
            effective = d * (k - 1) + 1
            numerator = size + 2 * p - effective
            out = (-(-numerator // s) if ceil else numerator // s) + 1
            exact = numerator % s == 0
            core = f"({size} + 2*{p} - {span})/{s}"
            if not exact:
                core = f"{'ceil' if ceil else 'floor'}({core})"
            parts.append(f"{core} + 1 = {out}")
        return parts[0] if len(set(parts)) == 1 else "; ".join(parts)
    if isinstance(module, nn.Linear):
        return f"{module.in_features} -> {module.out_features} features"
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d | nn.AdaptiveAvgPool1d | nn.AdaptiveMaxPool1d):
        return f"adaptive: any size -> {module.output_size}"
    return ""


def activation_bytes(layer: LayerShape) -> int:
    """Bytes of one example's output of `layer`, in fp32."""
    return math.prod(layer.output_shape[1:]) * 4


def multiply_adds(module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one call for one example (the first dimension is the batch)."""
    out_elements = math.prod(output_shape[1:])
    if isinstance(module, _CONV):
        return out_elements * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return out_elements * module.in_features
    if isinstance(module, nn.RNNBase):
        gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
        steps = input_shape[1] if module.batch_first else input_shape[0]
        directions = 2 if module.bidirectional else 1
        total, width = 0, module.input_size
        for _ in range(module.num_layers):
            total += steps * directions * gates * module.hidden_size * (width + module.hidden_size)
            width = module.hidden_size * directions
        return total
    return 0


@dataclass
class SummaryRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int
    formula: str
    mult_adds: int


@dataclass
class Summary:
    """Every layer call in order with its output shape, and the model's totals for one example."""

    model: str
    input_size: tuple[int, ...]
    rows: list[SummaryRow]
    parameters: int
    trainable_parameters: int
    mult_adds: int
    activation_bytes: int

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "layers": [
                {
                    "name": r.name,
                    "type": r.kind,
                    "output_shape": list(r.output_shape),
                    "parameters": r.parameters,
                    "formula": r.formula,
                    "mult_adds": r.mult_adds,
                }
                for r in self.rows
            ],
            "parameters": self.parameters,
            "trainable_parameters": self.trainable_parameters,
            "mult_adds": self.mult_adds,
            "activation_bytes": self.activation_bytes,
        }


def summarize(
    model: nn.Module, model_name: str, input_size: tuple[int, ...], declared: tuple[int, ...] | None = None
) -> Summary:
    """The summary of `model` on one example of `input_size`; a one-line DeepstepError naming the
    first layer that cannot take it (with the input size that would fit) when it does not fit."""
    try:
        layers = trace_shapes(model, input_size)
    except InputMismatch as err:
        raise DeepstepError(describe_mismatch(model, model_name, input_size, err, declared)) from None
    rows, seen, activations = [], set(), 0
    for layer in layers:
        params = 0 if layer.name in seen else sum(p.numel() for p in layer.module.parameters(recurse=False))
        seen.add(layer.name)
        rows.append(
            SummaryRow(
                layer.name,
                type(layer.module).__name__,
                layer.output_shape[1:],
                params,
                size_formula(layer.module, layer.input_shape),
                multiply_adds(layer.module, layer.input_shape, layer.output_shape),
            )
        )
        activations += activation_bytes(layer)
    return Summary(
        model_name,
        tuple(input_size),
        rows,
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(r.mult_adds for r in rows),
        activations,
    )


def describe_mismatch(
    model: nn.Module,
    model_name: str,
    input_size: tuple[int, ...],
    err: InputMismatch,
    declared: tuple[int, ...] | None = None,
) -> str:
    """Which layer stops fitting, what it expects and gets, and the input that would make them match."""
    module, got = err.module, err.input_shape
    if module is None:
        return (
            f"{model_name} fails on a {format_size(input_size)} input in its forward, after {err.layer}: {err.reason}"
        )
    where = f"{model_name} cannot take input {format_size(input_size)}: layer {err.layer}"
    if got is None:
        return f"{where}: {err.reason}"
    kind = type(module).__name__
    if isinstance(module, nn.Linear) and got[-1] != module.in_features:
        before = err.done[-1] if err.done else None
        source = f" (the flattened {format_size(before.output_shape[1:])} from {before.name})" if before else ""
        fit = fitting_input(model, input_size, declared)
        hint = f"; input {format_size(fit)} makes them match" if fit else ""
        return f"{where} ({kind}) expects {module.in_features} input features but gets {got[-1]}{source}{hint}"
    if isinstance(module, _CONV) and got[1] != module.in_channels:
        return (
            f"{where} ({kind}) expects {module.in_channels} input channels but gets {got[1]} "
            f"(input shape {format_size(got[1:])}); give {module.in_channels}-channel input"
        )
    if isinstance(module, _CONV + _POOL):
        formula = size_formula(module, got)
        fit = fitting_input(model, input_size, declared)
        hint = f"; input {format_size(fit)} makes it fit" if fit else ""
        return f"{where} ({kind}) gets {format_size(got[1:])}, too small for its window: {formula}{hint}"
    return f"{where} ({kind}) gets {format_size(got[1:])}: {err.reason}"


def fitting_input(
    model: nn.Module, input_size: tuple[int, ...], declared: tuple[int, ...] | None = None, limit: int = 512
) -> tuple | None:
    """The model's `declared` input when it passes, else the input size nearest to `input_size`
    (same channels, same aspect) that passes; None when none within `limit` pixels does."""
    channels, spatial = input_size[0], input_size[1:]
    if not spatial:
        return None

    def sized(scale: int) -> tuple[int, ...]:
        return (channels, *(max(1, round(s * scale / spatial[0])) for s in spatial))

    def passes(size: tuple[int, ...]) -> bool:
        try:
            trace_shapes(model, size)
        except InputMismatch:
            return False
        return True

    if declared is not None and declared[0] == channels and passes(declared):
        return declared
    for distance in range(limit):
        for scale in (spatial[0] - distance, spatial[0] + distance):
            if 1 <= scale <= 4 * limit and passes(sized(scale)):
                return sized(scale)
    return None
