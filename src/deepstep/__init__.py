"""deepstep: the whole deep-learning workflow, from one command line and one Python API.

    data -> pre-processing -> model -> train + validate -> test once -> predict, with plots

    >>> import deepstep
    >>> run = deepstep.train(data="cifar10-sample", model="lenet", epochs=2)
    >>> run.evaluate()["accuracy"]
    >>> run.predict(["cat.jpg"])

Names are imported on first use, so `import deepstep` and `deepstep --help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "deepstep.api",
    "find_lr": "deepstep.api",
    "load_run": "deepstep.api",
    "Run": "deepstep.api",
    "show": "deepstep.api",
    "baseline": "deepstep.api",
    "list_datasets": "deepstep.api",
    "list_models": "deepstep.api",
    "list_pretrained": "deepstep.api",
    "pretrained": "deepstep.api",
    "summary": "deepstep.api",
    "compare": "deepstep.api",
    "create_model": "deepstep.models",
    "register_model": "deepstep.models",
    "load_model_file": "deepstep.models",
    "TrainConfig": "deepstep.config",
    "DeepstepError": "deepstep.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deepstep' has no attribute {name!r}")
