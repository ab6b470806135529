"""Export a trained run's model to ONNX or TorchScript, checked by running the exported file.

Beside the file goes FILE.json: the classes, the input's name and shape, and the pre-processing
(resize, crop, mean, std), so that a consumer needs nothing else of deepstep.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepstep.engine.files import write_json
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # fp32: the exported model's outputs may differ from PyTorch's by at most this


def export_run(
    run_path: str | Path, fmt: str = "onnx", out: str | Path | None = None, checkpoint: str = "best"
) -> dict[str, Any]:
    """Write the run's model as `fmt`, run it on a batch and compare with PyTorch; returns the
    record also written to OUT.json (with `max_abs_diff`)."""
    from deepstep.tasks.image_classification import load_trained

    if fmt not in FORMATS:
        raise DeepstepError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    run = RunDir.open(run_path)
    trained = load_trained(run, checkpoint)
    model = trained.model.float().eval()
    prep = trained.prep
    out = Path(out) if out else run.path / "export" / f"model{FORMATS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    input_shape = (prep.channels, *prep.size)
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    check = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(check).numpy()
    temporary = out.with_name(out.name + ".partial")
    try:
        got = EXPORTERS[fmt](model, example, temporary, check)
    except DeepstepError:
        temporary.unlink(missing_ok=True)
        raise
    difference = float(np.abs(got - expected).max())
    if not difference < TOLERANCE:
        temporary.unlink(missing_ok=True)
        raise DeepstepError(
            f"the exported {fmt} model differs from PyTorch by {difference:.3g} (limit {TOLERANCE}); nothing was written"
        )
    temporary.replace(out)
    record = {
        "format": fmt,
        "file": out.name,
        "run": str(run.path),
        "checkpoint": checkpoint,
        "model": trained.record["model"],
        "classes": trained.classes,
        "input": {"name": "input", "shape": ["batch", *input_shape], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", len(trained.classes)], "probabilities": "softmax over dim 1"},
        "preprocessing": {
            "steps": [
                "convert to RGB" if prep.channels == 3 else "convert to grayscale",
                f"scale the short side to {prep.resize}" if prep.resize else "scale the short side to cover the crop",
                f"center-crop to {prep.size[0]}x{prep.size[1]}",
                "to float in [0, 1], channels first",
                "subtract mean, divide by std (per channel)",
            ],
            "resize": prep.resize,
            "crop": list(prep.size),
            "mean": prep.mean,
            "std": prep.std,
        },
        "check": {"batch": len(check), "max_abs_diff": difference, "tolerance": TOLERANCE},
    }
    write_json(out.with_name(out.name + ".json"), record)
    return {**record, "path": str(out)}


def _onnx(model: nn.Module, example: torch.Tensor, path: Path, check: torch.Tensor) -> np.ndarray:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise DeepstepError("ONNX export needs onnx and onnxruntime: pip install 'deepstep[export]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on tracing and deprecations
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript-based exporter: no onnxscript needed, works on torch >= 2.5
        )
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": check.numpy()})[0]


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path, check: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation note
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return loaded(check).numpy()


EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript}
