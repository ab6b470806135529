"""The model registry: `@register_model` on a builder, `create_model(name, **args)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from deepstep.errors import DeepstepError
from deepstep.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what input it declares (channels, height, width)."""

    name: str
    build: Callable[..., nn.Module]
    input_size: tuple[int, ...]
    description: str

    def arg_names(self) -> list[str]:
        return list(inspect.signature(self.build).parameters)

    def defaults(self) -> dict[str, Any]:
        return {
            name: p.default
            for name, p in inspect.signature(self.build).parameters.items()
            if p.default is not inspect.Parameter.empty
        }


MODELS: Registry[ModelSpec] = Registry("model", "deepstep models")


def register_model(name: str, *, input_size: tuple[int, ...], description: str):
    """Decorator for a builder `fn(num_classes=..., **args) -> nn.Module`."""
    return MODELS.register(name, lambda fn: ModelSpec(name, fn, tuple(input_size), description))


def get_model_spec(name: str) -> ModelSpec:
    _load_builtin_models()
    return MODELS.get(name)


def list_models(pattern: str = "*") -> list[str]:
    _load_builtin_models()
    return MODELS.names(pattern)


def create_model(name: str, **args: Any) -> nn.Module:
    """Build a registered model; unknown arguments are a one-line error listing the known ones."""
    spec = get_model_spec(name)
    unknown = sorted(set(args) - set(spec.arg_names()))
    if unknown:
        raise DeepstepError(
            f"model {name!r} has no argument {', '.join(unknown)}; it takes {', '.join(spec.arg_names())}"
        )
    for key, value in args.items():
        _check_type(name, key, value, spec.defaults().get(key))
    try:
        return spec.build(**args)
    except (TypeError, ValueError) as err:
        raise DeepstepError(f"model {name!r} cannot be built with {args}: {err}") from None


def _load_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from deepstep.models import airbench, cifar, resnet_cifar, rnn, torchvision_models  # noqa: F401


def _check_type(model: str, key: str, value: Any, default: Any) -> None:
    """A number or switch of the kind the argument's default is (an integer is a number too)."""
    kinds = {bool: (bool,), int: (int,), float: (int, float)}
    expected = kinds.get(type(default))
    if expected and (not isinstance(value, expected) or (isinstance(value, bool) and type(default) is not bool)):
        what = {bool: "true or false", int: "a whole number", float: "a number"}[type(default)]
        raise DeepstepError(f"model {model!r}: {key} must be {what} (default {default}), got {value!r}")
