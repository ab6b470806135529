"""Export a trained run's model to ONNX or TorchScript, checked by running the exported file.

Beside the file goes FILE.json: the classes (or the forecast target), the input's name, shape and
meaning, and the pre-processing, so that a consumer needs nothing else of deepstep. Image models
take normalised images (FILE.json says how to make them); sequence models take raw values, their
standardisation being part of the exported model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepstep.engine.files import cannot_write, write_json
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError
from deepstep.tasks.forecasting import predict_scaled

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
ENDINGS = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript"}  # a file name's ending -> its format
# fp32: the exported model's outputs may differ from PyTorch's by at most this, times the size of
# the largest output when that is above 1 (a forecast of millions differs in its last float digits)
TOLERANCE = 1e-4


def export_format(fmt: str | None, out: str | Path | None) -> str:
    """The format asked for, or the one `out`'s ending names; a file named for one format is not
    written in the other (a TorchScript file called model.onnx fails in every ONNX runtime)."""
    named = ENDINGS.get(Path(out).suffix.lower()) if out else None
    if fmt is None:
        return named or "onnx"
    if fmt not in FORMATS:
        raise DeepstepError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if named not in (None, fmt):
        better = Path(out).with_suffix(FORMATS[fmt]).name
        raise DeepstepError(
            f"--out {out} ends in {Path(out).suffix}, {'an ONNX' if named == 'onnx' else 'a TorchScript'} file, "
            f"but --format is {fmt}: "
            f"call it {better}, or leave out --format"
        )
    return fmt


@dataclass
class Exportable:
    """What one task hands to the exporter: the module to write, the batches it is traced with and
    checked on, which input axes may vary, and what FILE.json says about its input and output."""

    model: nn.Module  # fp32, eval mode
    example: torch.Tensor  # traced with
    check: torch.Tensor  # compared with PyTorch on (another batch size; for sequences another length)
    axes: dict[int, str]  # the input's variable axes: {0: "batch"}, and {1: "time"} for sequences
    output: str  # the output's name in the file
    record: dict[str, Any]  # model, classes or target, input, output and pre-processing, for FILE.json


def export_run(
    run_path: str | Path, fmt: str | None = None, out: str | Path | None = None, checkpoint: str = "best"
) -> dict[str, Any]:
    """Write the run's model as `fmt` (None: as `out`'s ending says, .pt or .pth for TorchScript,
    else ONNX), run it on a batch and compare with PyTorch; returns the record also written to
    OUT.json (with `max_abs_diff`)."""
    fmt = export_format(fmt, out)
    run = RunDir.open(run_path)
    task = run.read_json("run.json", {}).get("task", "image-classification")
    if task not in TASKS:
        raise DeepstepError(f"{run.path} is a {task} run, which export does not know; it exports {', '.join(TASKS)}")
    exportable = TASKS[task](run, checkpoint)
    out = Path(out) if out else run.path / "export" / f"model{FORMATS[fmt]}"
    if out.is_dir():
        raise DeepstepError(f"--out {out} is a folder: give the file's name, e.g. {out / ('model' + FORMATS[fmt])}")
    temporary = out.with_name(out.name + ".partial")
    try:  # before exporting: torch.jit.save reports a place it cannot write as a C++ RuntimeError
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary.touch()
    except OSError as err:
        raise cannot_write(out, err, "--out") from None
    try:
        with torch.inference_mode():
            expected = exportable.model(exportable.check).numpy()
        got = EXPORTERS[fmt](exportable, temporary)
        difference = float(np.abs(got - expected).max())
        tolerance = TOLERANCE * max(1.0, float(np.abs(expected).max()))
        if not difference < tolerance:
            raise DeepstepError(
                f"the exported {fmt} model differs from PyTorch by {difference:.3g} (limit {tolerance:.3g}); "
                "nothing was written"
            )
        temporary.replace(out)
    except BaseException:  # no half-written file left beside the run, whatever stopped the export
        temporary.unlink(missing_ok=True)
        raise
    check = {"batch": len(exportable.check), "max_abs_diff": difference, "tolerance": tolerance}
    record = {
        "format": fmt,
        "file": out.name,
        "run": str(run.path),
        "checkpoint": checkpoint,
        "task": task,
        **exportable.record,
        "check": check,
    }
    write_json(out.with_name(out.name + ".json"), record)
    return {**record, "path": str(out)}


def _images(run: RunDir, checkpoint: str) -> Exportable:
    """The classifier as trained: normalised images in, logits out; the pre-processing is written down."""
    from deepstep.tasks.image_classification import load_trained

    trained = load_trained(run, checkpoint)
    prep = trained.prep
    input_shape = (prep.channels, *prep.size)
    scale = f"scale the short side to {prep.resize}" if prep.resize else "scale the short side to cover the crop"
    return Exportable(
        model=trained.model.float().eval(),
        example=torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)),
        check=torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(1)),
        axes={0: "batch"},
        output="logits",
        record={
            "model": trained.record["model"],
            "classes": trained.classes,
            "input": {"name": "input", "shape": ["batch", *input_shape], "dtype": "float32"},
            "output": {
                "name": "logits",
                "shape": ["batch", len(trained.classes)],
                "probabilities": "softmax over dim 1",
            },
            "preprocessing": {
                "steps": [
                    "convert to RGB" if prep.channels == 3 else "convert to grayscale",
                    scale,
                    f"center-crop to {prep.size[0]}x{prep.size[1]}",
                    "to float in [0, 1], channels first",
                    "subtract mean, divide by std (per channel)",
                ],
                "resize": prep.resize,
                "crop": list(prep.size),
                "mean": prep.mean,
                "std": prep.std,
            },
        },
    )


class Standardised(nn.Module):
    """A sequence model with its standardisation inside: raw values in, (x - mean) / std to the
    net; for forecasts, the net's scaled forecast (`predict_scaled`, relative or not) back in the
    target's units."""

    def __init__(self, net: nn.Module, mean, std, forecast: bool = False, relative: bool = False):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.forecast, self.relative = forecast, relative

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) in the data's own units
        scaled = (x - self.mean) / self.std
        if not self.forecast:
            return self.net(scaled)  # (B, outputs)
        return predict_scaled(self.net, scaled, self.relative) * self.std[0] + self.mean[0]  # (B, horizon)

    def raw_inputs(self, batch: int, steps: int, seed: int) -> torch.Tensor:
        """Random (batch, steps, F) inputs at the data's scale, to trace and check with."""
        z = torch.randn(batch, steps, len(self.mean), generator=torch.Generator().manual_seed(seed))
        return z * self.std + self.mean


def _forecasting(run: RunDir, checkpoint: str) -> Exportable:
    """The forecaster with its scaling inside: the last `lookback` rows in, the next `horizon` values out."""
    from deepstep.tasks.runs import load_model

    net, record = load_model(run, checkpoint)
    scaler, columns = record["scaler"], record["columns"]
    lookback, horizon, features = record["lookback"], record["horizon"], len(columns)
    relative = record.get("relative", False)
    model = Standardised(net.float(), scaler["mean"], scaler["std"], forecast=True, relative=relative)
    return Exportable(
        model=model.eval(),
        example=model.raw_inputs(2, lookback, seed=0),
        check=model.raw_inputs(8, lookback, seed=1),
        axes={0: "batch"},
        output="forecast",
        record={
            "model": record["model"],
            "target": columns[0],
            "input": {
                "name": "input",
                "shape": ["batch", lookback, features],
                "dtype": "float32",
                "columns": columns,
                "meaning": f"the last {lookback} rows of these columns, oldest first, in the data's own units",
            },
            "output": {
                "name": "forecast",
                "shape": ["batch", horizon],
                "meaning": f"the next {horizon} values of {columns[0]}, in its own units",
            },
            "preprocessing": {
                "steps": ["none: the standardisation fitted on the train span is part of the model"],
                "mean": scaler["mean"],
                "std": scaler["std"],
            },
        },
    )


def _sequence_classification(run: RunDir, checkpoint: str) -> Exportable:
    """The classifier with its standardisation inside: one sequence per batch row, any length."""
    from deepstep.tasks.runs import load_model

    net, record = load_model(run, checkpoint)
    norm, classes, features = record["normalization"], record["classes"], record["features"]
    model = Standardised(net.float(), norm["mean"], norm["std"])
    binary = record["model"]["args"].get("num_classes") == 1  # one logit for two classes
    return Exportable(
        model=model.eval(),
        example=model.raw_inputs(2, 12, seed=0),
        check=model.raw_inputs(8, 21, seed=1),  # another length: the time axis is variable
        axes={0: "batch", 1: "time"},
        output="logits",
        record={
            "model": record["model"],
            "classes": classes,
            "input": {
                "name": "input",
                "shape": ["batch", "time", features],
                "dtype": "float32",
                "meaning": "sequences in the data's own units; sequences of different lengths go in separate calls",
            },
            "output": {
                "name": "logits",
                "shape": ["batch", 1 if binary else len(classes)],
                "probabilities": f"sigmoid: the probability of {classes[1]!r}" if binary else "softmax over dim 1",
            },
            "preprocessing": {
                "steps": ["none: the standardisation fitted on the train part is part of the model"],
                "mean": norm["mean"],
                "std": norm["std"],
            },
        },
    )


TASKS: dict[str, Callable[[RunDir, str], Exportable]] = {
    "image-classification": _images,
    "forecasting": _forecasting,
    "sequence-classification": _sequence_classification,
}


def _onnx(exportable: Exportable, path: Path) -> np.ndarray:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise DeepstepError("ONNX export needs onnx and onnxruntime: pip install 'deepstep[export]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on tracing and deprecations
        torch.onnx.export(
            exportable.model,
            (exportable.example,),
            str(path),
            input_names=["input"],
            output_names=[exportable.output],
            dynamic_axes={"input": exportable.axes, exportable.output: {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript-based exporter: no onnxscript needed, works on torch >= 2.5
        )
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([exportable.output], {"input": exportable.check.numpy()})[0]


def _torchscript(exportable: Exportable, path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation note
        traced = torch.jit.trace(exportable.model, exportable.example)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return loaded(exportable.check).numpy()


EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript}
