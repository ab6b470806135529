"""Models: a registry of named builders, each declaring the input it takes."""

from deepstep.models.registry import ModelSpec, create_model, get_model_spec, list_models, register_model
from deepstep.models.shapes import check_input, trace_shapes

__all__ = [
    "ModelSpec",
    "check_input",
    "create_model",
    "get_model_spec",
    "list_models",
    "register_model",
    "trace_shapes",
]
