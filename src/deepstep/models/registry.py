"""The model registry: `@register_model` on a builder, `create_model(name, **args)`.

Your own models register the same way, in a Python file given to the commands as --model-file
(or imported in your own code before `deepstep.train`):

    import deepstep
    from torch import nn

    @deepstep.register_model("my-net", input_size=(3, 32, 32), description="the tutorial's Net")
    def my_net(num_classes: int = 10) -> nn.Module:
        return Net(num_classes)
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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
    user: bool = False  # registered by the user's code, not deepstep's
    file: str | None = None  # the user's file that registered it, when it is a file

    def arg_names(self) -> list[str]:
        kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return [n for n, p in inspect.signature(self.build).parameters.items() if p.kind not in kinds]

    def takes(self, arg: str) -> bool:
        """Whether the builder takes argument `arg` (by name, or through **kwargs)."""
        parameters = inspect.signature(self.build).parameters.values()
        return arg in self.arg_names() or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)

    def defaults(self) -> dict[str, Any]:
        return {
            name: p.default
            for name, p in inspect.signature(self.build).parameters.items()
            if p.default is not inspect.Parameter.empty
        }


MODELS: Registry[ModelSpec] = Registry(
    "model", "deepstep models", " (one of your own: give its file with --model-file)"
)


def register_model(name: str, *, input_size: tuple[int, ...], description: str = ""):
    """Decorator for a builder `fn(num_classes=10, **args) -> nn.Module` whose model takes inputs of
    `input_size`: (channels, height, width) for images, (steps, features) for sequences.

    A model of your own may be registered again under its name (a notebook cell run twice, a file
    imported anew), but not under the name of one of deepstep's."""

    def make_entry(fn: Callable) -> ModelSpec:
        if fn.__module__.split(".")[0] == "deepstep":
            return ModelSpec(name, fn, tuple(input_size), description)
        return _user_spec(name, fn, input_size, description)

    if not isinstance(input_size, tuple | list) or len(input_size) not in (2, 3):
        raise DeepstepError(
            f"register_model({name!r}): input_size must be (channels, height, width) for images, such as "
            f"(3, 32, 32), or (steps, features) for sequences; got {input_size!r}"
        )
    return MODELS.register(name, make_entry)


def _user_spec(name: str, fn: Callable, input_size: Any, description: str) -> ModelSpec:
    """A model of the user's: checked as far as can be before it is built, and allowed to replace
    an earlier registration of its own name."""
    _load_builtin_models()
    if name in MODELS:
        if not MODELS.get(name).user:
            raise DeepstepError(
                f"register_model: {name!r} is one of deepstep's models; register yours under another name"
            )
        MODELS.remove(name)
    default = inspect.signature(fn).parameters.get("num_classes")
    if default is None or default.default is inspect.Parameter.empty:
        raise DeepstepError(
            f"register_model({name!r}): {fn.__name__} must take num_classes with a default, "
            f"e.g. def {fn.__name__}(num_classes: int = 10), and size its last layer by it"
        )
    file = inspect.getsourcefile(fn)
    file = os.path.abspath(file) if file and os.path.isfile(file) else None  # None: typed in an interpreter
    return ModelSpec(
        name, fn, tuple(input_size), description or f"{fn.__name__} from {file or 'your code'}", True, file
    )


def get_model_spec(name: str) -> ModelSpec:
    _load_builtin_models()
    return MODELS.get(name)


def list_models(pattern: str = "*") -> list[str]:
    _load_builtin_models()
    return MODELS.names(pattern)


def create_model(name: str, **args: Any) -> nn.Module:
    """Build a registered model; unknown arguments are a one-line error listing the known ones."""
    spec = get_model_spec(name)
    unknown = sorted(a for a in args if not spec.takes(a))
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
    except Exception as err:
        if not spec.user:
            raise
        raise DeepstepError(f"model {name!r} cannot be built: {in_user_code(err, spec.file)}") from None


def in_user_code(err: BaseException, file: str | None) -> str:
    """An exception raised in the user's code, in one line: where in their file, and what."""
    frames = traceback.extract_tb(err.__traceback__)
    lines = [f.lineno for f in frames if file and os.path.abspath(f.filename) == file]
    if isinstance(err, SyntaxError) and err.lineno:
        lines.append(err.lineno)
    where = f"{file}, line {lines[-1]}: " if lines else f"{file}: " if file else ""
    message = err.msg if isinstance(err, SyntaxError) else str(err).splitlines()[0] if str(err) else ""
    return f"{where}{type(err).__name__}" + (f": {message}" if message else "")


_FILES: dict[str, list[str]] = {}  # a file imported with load_model_file -> the models it registered


def load_model_file(path: str | os.PathLike) -> list[str]:
    """Import a Python file of the user's that registers models (--model-file), once; returns the
    names it registered. deepstep runs no code but what it is given this way: a run folder only
    records which file its model came from."""
    path = Path(path)
    if path.suffix != ".py":
        raise DeepstepError(
            f"--model-file {path}: give a Python file (.py) that registers models with @deepstep.register_model"
        )
    if not path.is_file():
        raise DeepstepError(f"--model-file {path}: no such file")
    key = os.path.abspath(path)
    if key in _FILES:
        return _FILES[key]
    _load_builtin_models()
    before = dict(MODELS.items())
    module_name = f"deepstep_model_file_{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    loader_spec = importlib.util.spec_from_file_location(module_name, key)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    if os.path.dirname(key) not in sys.path:  # as `python file.py` does: its neighbours can be imported
        sys.path.append(os.path.dirname(key))
    try:
        loader_spec.loader.exec_module(module)
    except DeepstepError as err:
        del sys.modules[module_name]
        raise DeepstepError(f"--model-file {path}: {err}") from None
    except Exception as err:
        del sys.modules[module_name]
        raise DeepstepError(f"--model-file {path} cannot be imported: {in_user_code(err, key)}") from None
    names = [name for name, spec in MODELS.items() if before.get(name) is not spec]  # its own, or a module's it imports
    if not names:
        raise DeepstepError(
            f'--model-file {path} registers no model: put @deepstep.register_model("my-net", input_size=(3, 32, 32)) '
            "on a function that takes num_classes and returns your nn.Module"
        )
    _FILES[key] = names
    return names


def file_record(name: str) -> dict[str, str]:
    """What a run records of a user's model: the file it came from and that file's sha256 ({} for deepstep's own)."""
    spec = get_model_spec(name)
    if spec.file is None:  # deepstep's own, or typed in an interpreter: nothing to point to
        return {}
    return {"file": spec.file, "sha256": hashlib.sha256(Path(spec.file).read_bytes()).hexdigest()}


def is_registered(name: str) -> bool:
    _load_builtin_models()
    return name in MODELS


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
