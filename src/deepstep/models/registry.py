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
    try:
        return spec.build(**args)
    except (TypeError, ValueError) as err:
        raise DeepstepError(f"model {name!r} cannot be built with {args}: {err}") from None


def _load_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from deepstep.models import airbench, cifar, resnet_cifar, rnn, torchvision_models  # noqa: F401
