"""The Python API: the same names as the command line's flags.

run = deepstep.train(data="cifar10-sample", model="lenet", epochs=5, batch_size=32)
run.evaluate()              # the test part, once
run.predict(["photo.jpg"])

run = deepstep.train(data="airline-passengers.csv", target="Passengers", lookback=24, horizon=12, test_size=24)
run.evaluate(baselines=True)["model"]["mape"]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepstep.config import check_values, read_config_file, resolve_config
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError

if TYPE_CHECKING:
    from torch import nn


class Run:
    """A run folder: its config, metrics and checkpoints, and what can be done with them."""

    def __init__(self, path: str | Path):
        self._dir = RunDir.open(path)

    @property
    def path(self) -> Path:
        return self._dir.path

    @property
    def info(self) -> dict[str, Any]:
        """run.json: data, model, normalisation, device and results."""
        return self._dir.read_json("run.json")

    @property
    def config(self) -> dict[str, Any]:
        return self._dir.read_config()

    @property
    def metrics(self) -> list[dict[str, float]]:
        """One dict per epoch, as in metrics.csv."""
        return self._dir.read_metrics()

    @property
    def task(self) -> str:
        """image-classification, forecasting or sequence-classification."""
        from deepstep.tasks import run_task

        return run_task(self.path)

    def evaluate(
        self,
        split: str = "test",
        *,
        force: bool = False,
        checkpoint: str = "best",
        tta: bool | str | None = None,
        baselines: bool | list[str] = False,
        backtest: bool = False,
        data: str | None = None,
        precision: str | None = None,
        device: str | None = None,
        gradcam: bool | None = None,
        labels: str | None = None,
        verbose: bool = True,
    ) -> dict[str, Any]:
        """The run's metrics on `split`: "test" (once per run), "val", or, for a classifier, "all" of
        other labelled data given as `data` (e.g. new photos in class folders, or named by the CSV
        `labels`). Images: accuracy, loss, each
        class's accuracy, precision, recall and F1, macro F1 (ROC AUC for two classes), confusion matrix (`tta`: "flip" or "flip-translate" averaging; `precision`: None or
        "32" for fp32, "bf16", "16" or "auto", as training's; `device`: as train's, auto when None).
        Forecasting: MAE, RMSE, MAPE, sMAPE, MASE (`baselines`, `backtest`). Sequences: accuracy,
        precision, recall, F1, ROC AUC. `data`, for test and val: where the run's data is now, if it moved
        since training. `gradcam` (images): also draw the mistakes under their Grad-CAM maps."""
        task = self.task
        _images_only(task, self.path, precision=precision, device=device, gradcam=gradcam, labels=labels)
        if task == "forecasting":
            from deepstep.tasks.forecasting import evaluate_run as evaluate_forecast

            return evaluate_forecast(
                self.path,
                split,
                force=force,
                checkpoint=checkpoint,
                baselines=baselines,
                backtest=backtest,
                data=data,
                log=_log(verbose),
            )
        if task == "sequence-classification":
            from deepstep.tasks.sequence_classification import evaluate_run as evaluate_sequences

            return evaluate_sequences(
                self.path, split, force=force, checkpoint=checkpoint, data=data, log=_log(verbose)
            )
        from deepstep.tasks.image_classification import evaluate_run

        return evaluate_run(
            self.path,
            split,
            force=force,
            checkpoint=checkpoint,
            tta=tta,
            data=data,
            precision=precision,
            device=device,
            log=_log(verbose),
            progress=verbose,
            gradcam=bool(gradcam),
            labels=labels,
        )

    def predict(
        self,
        images: str | Path | list[str | Path] | None = None,
        *,
        top_k: int | None = None,
        plot: str | Path | None = None,
        checkpoint: str = "best",
        tta: bool | str | None = None,
        data: str | None = None,
        precision: str | None = None,
        device: str | None = None,
        strict: bool = False,
        gradcam: str | Path | None = None,
        gradcam_layer: str | None = None,
        out: str | Path | None = None,
        verbose: bool = True,
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Top-k classes with softmax probabilities for each image file (or folder of images, or
        PIL image: its result has "file" None and "image", its place among the inputs); the
        class of each sequence CSV or array (steps x features, or a batch of them as sequences x
        steps x features; "sequence": its place); or, for a
        forecasting run (no inputs), the steps after its data (`data`: where the series is now, if
        it moved since training). Images only: `precision`, as evaluate's; `device`, as train's
        (auto when None); `strict`: an unreadable image in a folder is an error instead of being
        left out with a warning; `top_k`: how many classes per image (default 5); `gradcam`: a
        picture of the first 12 images under their Grad-CAM maps for the class predicted, taken at
        `gradcam_layer` (default: the last layer whose output has a height and width). `out`: a
        classifier's CSV of each input's class and every class's probability ("probabilities" in
        each result then holds them too), or where a forecast's CSV goes."""
        task = self.task
        _images_only(
            task,
            self.path,
            top_k=top_k,
            precision=precision,
            device=device,
            strict=strict or None,
            gradcam=gradcam,
            gradcam_layer=gradcam_layer,
        )
        if task == "forecasting":
            from deepstep.tasks.forecasting import predict_run as forecast

            if images is not None:
                raise DeepstepError("a forecasting run predicts the steps after its own data: call run.predict()")
            return forecast(self.path, checkpoint=checkpoint, plot=plot, data=data, out=out)
        if data is not None:
            raise DeepstepError(f"data= is for a forecasting run; {self.path} is {task}: leave it out")
        if images is None:
            raise DeepstepError("give the files to predict: run.predict(['a.jpg'])")
        inputs = _inputs(images)
        if task == "sequence-classification":
            from deepstep.tasks.sequence_classification import predict_run as classify

            return classify(self.path, inputs, checkpoint=checkpoint, out=out)
        from deepstep.tasks.image_classification import predict_run

        return predict_run(
            self.path,
            inputs,
            top_k=top_k,
            plot=plot,
            checkpoint=checkpoint,
            tta=tta,
            precision=precision,
            device=device,
            log=_log(verbose),
            strict=strict,
            gradcam=gradcam,
            gradcam_layer=gradcam_layer,
            out=out,
        )

    def load_model(self, checkpoint: str = "best") -> nn.Module:
        """The trained model as a plain nn.Module on the CPU in eval mode, weights from the `best` (by
        validation) or `last` checkpoint, to look into or call yourself. It takes inputs as `predict`
        prepares them: images normalised with the run's `info["data"]["normalization"]`, sequences scaled."""
        from deepstep.tasks.runs import load_model

        if checkpoint not in ("best", "last"):
            raise DeepstepError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        return load_model(self._dir, checkpoint)[0]

    def feature_maps(
        self, image: Any, out: str | Path = "feature-maps.png", *, channels: int = 8, checkpoint: str = "best"
    ) -> Path:
        """Draw what each convolution and pooling layer of an image run's model makes of one image
        (a file or PIL image, prepared as predict prepares it): its first `channels` feature maps."""
        from deepstep.tasks.image_classification import draw_feature_maps

        return draw_feature_maps(self.path, image, out, channels=channels, checkpoint=checkpoint)

    def export(
        self, format: str | None = None, out: str | Path | None = None, *, checkpoint: str = "best"
    ) -> dict[str, Any]:
        """Write the model as ONNX or TorchScript (None: as `out`'s ending says, .pt or .pth for
        TorchScript, else ONNX), checked against PyTorch; returns the export record."""
        from deepstep.export import export_run

        return export_run(self.path, format, out, checkpoint)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def _images_only(task: str, path: Path, **options: Any) -> None:
    """A one-line error for options that only image runs take, given for another task's run."""
    given = [name for name, value in options.items() if value is not None]
    if given and task != "image-classification":
        raise DeepstepError(f"{given[0]}= is for image runs; {path} is {task}: leave it out")


def _inputs(given: Any) -> list[Any]:
    """What predict was given, as a list: one path or image, or an iterable of them."""
    from PIL import Image

    if isinstance(given, str | os.PathLike | Image.Image):
        return [given]
    if hasattr(given, "__array__") or not isinstance(given, Iterable):  # an array or tensor: refused whole, by name
        return [given]
    return list(given)


def _log(verbose: bool):
    return print if verbose else (lambda message: None)


def train(
    data: str | None = None,
    model: str | None = None,
    *,
    config: str | Path | None = None,
    verbose: bool = True,
    **options: Any,
) -> Run:
    """Train and validate a model; options are the `deepstep train` flags with underscores.

    Values resolve as on the command line: defaults < recipe < `config` file < arguments.
    """
    from deepstep.tasks import resolve_train_config
    from deepstep.tasks import train as train_task

    given = {k: v for k, v in {"data": data, "model": model, **options}.items() if v is not None}
    flags = check_values(given, source="deepstep.train()")
    resolved = resolve_train_config(read_config_file(config) if config else {}, flags)
    return Run(train_task(resolved, log=_log(verbose), progress=verbose))


def find_lr(
    data: str | None = None, model: str | None = None, *, steps: int = 100, verbose: bool = True, **options: Any
) -> dict[str, Any]:
    """The learning-rate range test (`deepstep train --find-lr`) with the `train` options given:
    `steps` steps with the rate growing from 1e-7 to 10, nothing trained or saved. Returns the
    suggested rate (None when the loss did not fall enough to read), why the test stopped, the
    rates and the loss curve, and the plot's and numbers' paths."""
    import json

    from deepstep.tasks import resolve_train_config
    from deepstep.tasks import train as train_task

    config_file = options.pop("config", None)
    given = {k: v for k, v in {"data": data, "model": model, **options}.items() if v is not None}
    flags = check_values({**given, "find_lr": steps}, source="deepstep.find_lr()")
    config = resolve_train_config(read_config_file(config_file) if config_file else {}, flags)
    png = Path(train_task(config, log=_log(verbose), progress=verbose))
    numbers = png.with_suffix(".json")
    return {**json.loads(numbers.read_text()), "plot": str(png), "json": str(numbers)}


def baseline(data: str, **options: Any) -> dict[str, Any]:
    """Naive, seasonal naive and (S)ARIMA forecasts on a series' test span, as `deepstep baseline`;
    options are its flags with underscores (target, horizon, test_size, season, backtest, order, ...)."""
    from deepstep.tasks.forecasting import baseline_report

    report_options = {
        k: options.pop(k) for k in ("split", "backtest", "baselines", "order", "seasonal_order") if k in options
    }
    flags = check_values({"data": data, **options}, source="deepstep.baseline()")
    return baseline_report(resolve_config({}, flags, task="forecasting"), **report_options)


def load_run(path: str | Path) -> Run:
    """Open a run folder written by `train`."""
    return Run(path)


def show(
    data: str | Run,
    *,
    split: str = "train",
    n: int = 16,
    out: str | Path = "grid.png",
    data_dir: str | None = None,
    time: str | None = None,
    labels: str | None = None,
) -> Path:
    """Save a picture of a dataset: a labelled grid of `n` images of a split (`labels`: the CSV
    naming each image's class, as train's --labels), a series' columns over time, or `n` labelled
    sequences; returns the PNG's path. A `Run` shows the data it trained on."""
    from deepstep.tasks import show as show_data
    from deepstep.tasks import trained_on

    if isinstance(data, Run):
        saved = trained_on(data.path)
        data, data_dir, time = saved["data"], data_dir or saved["data_dir"], time or saved["time"]
        labels = labels or saved["labels"]
    return show_data(data, split=split, n=n, out=out, data_dir=data_dir, time=time, labels=labels)


def compare(
    runs: Sequence[str | Path | Run], out: str | Path | None = "compare.png", *, x: str = "epoch"
) -> dict[str, Any]:
    """Runs of one task side by side, as `deepstep compare`: a row each (best validation, test if
    measured, the options that differ) and their curves drawn to `out` (None: not drawn) against
    `x`, "epoch" or "seconds" of training."""
    from deepstep.tasks.compare import compare_runs

    return compare_runs([r.path if isinstance(r, Run) else r for r in runs], out, x)


def summary(model: str | Path, input_size: str | tuple[int, ...] | None = None, **model_args: Any):
    """Layer-by-layer output shapes, parameters and size formulas of a registered model, or of a
    trained run's model (give the run folder), on one example of `input_size` (e.g. "3x32x32")."""
    import torch

    from deepstep.models import create_model, get_model_spec
    from deepstep.models.shapes import format_size, parse_input_size, summarize

    if Path(model).is_dir():
        from deepstep.engine.checkpoint import read_checkpoint
        from deepstep.tasks.runs import check_user_model

        run = RunDir.open(model)
        record = read_checkpoint(run.checkpoints, "best")
        check_user_model(run, record["model"])
        name, args = record["model"]["name"], {**record["model"]["args"], **model_args}
        declared = _run_input_size(record)
    else:
        name, args = str(model), model_args
        declared = get_model_spec(name).input_size
    size = parse_input_size(input_size) if isinstance(input_size, str) else tuple(input_size or declared)
    if "input_features" in get_model_spec(name).arg_names() and "input_features" not in model_args:
        args = {**args, "input_features": size[-1]}  # a recurrent net is built for the input's features
    if len(size) != len(declared):
        raise DeepstepError(
            f"--input {format_size(size)} has {len(size)} dimensions but {name} takes {len(declared)}, "
            f"such as its declared {format_size(declared)}"
        )
    with torch.device("cpu" if get_model_spec(name).user else "meta"):  # shapes only: no memory for the weights
        built = create_model(name, **args)  # (but a model of the user's may branch on values: on the CPU)
    return summarize(built, name, size, declared)


def _run_input_size(record: dict[str, Any]) -> tuple[int, ...]:
    """The input a run's model was trained on: an image run's (C, H, W); a forecasting run's
    (lookback, features); a sequence classifier's features over its model's declared steps (its
    sequences vary in length)."""
    from deepstep.models import get_model_spec

    if "input_size" in record:
        return tuple(record["input_size"])
    features = record["model"]["args"]["input_features"]
    steps = record.get("lookback") or get_model_spec(record["model"]["name"]).input_size[0]
    return (steps, features)


class Pretrained:
    """A torchvision model with its ImageNet weights: `deepstep.pretrained("vgg16").predict(paths)`."""

    def __init__(self, name: str):
        from deepstep.models.pretrained import get_pretrained_spec

        self.name = name
        self.spec = get_pretrained_spec(name)

    @property
    def categories(self) -> list[str]:
        return self.spec.categories

    def predict(
        self,
        images: str | Path | list[str | Path],
        *,
        top_k: int | None = None,
        plot: str | Path | None = None,
        tta: bool | str | None = None,
        precision: str | None = None,
        device: str | None = None,
        strict: bool = False,
        gradcam: str | Path | None = None,
        gradcam_layer: str | None = None,
        out: str | Path | None = None,
        verbose: bool = True,
    ) -> list[dict[str, Any]]:
        """Top-k ImageNet label names with softmax probabilities for each image file, folder or
        PIL image (as `Run.predict`'s); `precision`: None or "32" for fp32, "bf16", "16" or
        "auto", as training's; `device`: as train's (auto when None); `strict`, `gradcam`,
        `gradcam_layer`, `out`: as `Run.predict`'s."""
        from deepstep.tasks.image_classification import predict_pretrained

        paths = _inputs(images)
        return predict_pretrained(
            self.name,
            paths,
            top_k=top_k,
            plot=plot,
            tta=tta,
            precision=precision,
            device=device,
            log=_log(verbose),
            strict=strict,
            gradcam=gradcam,
            gradcam_layer=gradcam_layer,
            out=out,
        )


def pretrained(name: str) -> Pretrained:
    """A torchvision ImageNet model by name; its weights load (or download) on first predict."""
    return Pretrained(name)


def list_pretrained(pattern: str = "*") -> list[dict[str, Any]]:
    """The torchvision models with ImageNet weights, their parameters, input and top-1 accuracy."""
    import fnmatch

    from deepstep.models.pretrained import get_pretrained_spec, pretrained_names

    rows = []
    for name in pretrained_names():
        if not fnmatch.fnmatch(name, pattern):
            continue
        spec = get_pretrained_spec(name)
        rows.append(
            {
                "name": name,
                "parameters": spec.parameters,
                "input_size": [3, *spec.preprocessing["crop"]],
                "imagenet_acc1": spec.accuracy,
                "weights": str(spec.weights),
                "file": str(spec.file),
            }
        )
    return rows


def list_datasets() -> list[dict[str, str]]:
    """The built-in datasets: images (for classification), then series (for forecasting)."""
    from deepstep.data.series import BUILTIN_SERIES
    from deepstep.data.sources import DATASETS

    images = [
        {"name": name, "task": "image-classification", "description": d.description} for name, d in DATASETS.items()
    ]
    series = [
        {"name": name, "task": "forecasting", "description": f"{description}; target {target}"}
        for name, (description, target) in BUILTIN_SERIES.items()
    ]
    return images + series


def list_models(pattern: str = "*") -> list[dict[str, Any]]:
    """Every registered model with its parameter count (at its default classes) and declared input."""
    import torch

    from deepstep.models import create_model, get_model_spec
    from deepstep.models import list_models as names

    rows = []
    for name in names(pattern):
        spec = get_model_spec(name)
        with torch.device("meta"):
            params = sum(p.numel() for p in create_model(name).parameters())
        rows.append(
            {
                "name": name,
                "parameters": params,
                "input_size": list(spec.input_size),
                "description": spec.description,
                "defaults": spec.defaults(),
                **({"file": spec.file} if spec.user else {}),
            }
        )
    return rows
