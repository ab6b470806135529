"""Follow a tensor through a model, layer by layer, and say where an input stops fitting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepstep.errors import DeepstepError


@dataclass
class LayerShape:
    """One leaf layer's call: its qualified name, the module, and the shapes in and out."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


class InputMismatch(Exception):
    """Raised by trace_shapes: the layer where the input stopped fitting, and why."""

    def __init__(
        self,
        layer: str,
        module: nn.Module | None,
        input_shape: tuple[int, ...] | None,
        reason: str,
        done: list[LayerShape],
    ):
        super().__init__(reason)
        self.layer = layer
        self.module = module
        self.input_shape = input_shape
        self.reason = reason
        self.done = done


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
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((batch, *input_size), device=device))
    except (RuntimeError, ValueError, IndexError) as err:
        reason = str(err).splitlines()[0]
        if current:
            name, module, shape = current[-1]
            raise InputMismatch(name, module, shape, reason, done) from None
        after_name = done[-1].name if done else "the input"
        raise InputMismatch(
            f"(between layers, after {after_name})", None, done[-1].output_shape if done else None, reason, done
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return done


def format_size(size: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in size)


def check_input(
    model: nn.Module, model_name: str, input_size: tuple[int, ...], declared: tuple[int, ...]
) -> list[LayerShape]:
    """trace_shapes, turning a mismatch into a one-line DeepstepError that names the layer."""
    try:
        return trace_shapes(model, input_size)
    except InputMismatch as err:
        got = f" got {tuple(err.input_shape)}" if err.input_shape is not None else ""
        module = f" ({err.module})" if err.module is not None else ""
        raise DeepstepError(
            f"{model_name} cannot take input {format_size(input_size)}: layer {err.layer}{module}{got}: "
            f"{err.reason}. Its declared input is {format_size(declared)} (--image-size)"
        ) from None
