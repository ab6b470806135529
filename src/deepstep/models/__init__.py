"""Models: a registry of named builders, each declaring the input it takes."""

from deepstep.models.registry import (
    ModelSpec,
    create_model,
    file_record,
    get_model_spec,
    is_registered,
    list_models,
    load_model_file,
    register_model,
)
from deepstep.models.shapes import check_input, trace_shapes

__all__ = [
    "ModelSpec",
    "check_input",
    "create_model",
    "file_record",
    "get_model_spec",
    "is_registered",
    "list_models",
    "load_model_file",
    "register_model",
    "trace_shapes",
]
