"""Forecasting: a recurrent net reads `lookback` steps of the series (and its covariates) and
predicts the target's next `horizon` steps at once (direct multi-step).

Train, validation and test are consecutive spans of time; the scaler is fitted on the train
span only; the test span is forecast once, from origins that step through it, and every number
is reported in the series' own units beside the classical baselines on the same origins.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepstep.config import TrainConfig
from deepstep.data.batches import TensorBatches
from deepstep.data.series import (
    Scaler,
    Series,
    Spans,
    describe_row,
    evaluation_origins,
    future_note,
    future_times,
    load_series,
    origins,
    season_of,
    split_spans,
    time_labels,
    windows,
)
from deepstep.engine import distributed
from deepstep.engine.fit import Monitor
from deepstep.engine.loop import Step
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError
from deepstep.tasks.baselines import NAMES as BASELINES
from deepstep.tasks.baselines import run_baselines
from deepstep.tasks.metrics import forecast_metrics, mase_lag, mase_scale, metric_notes
from deepstep.tasks.runs import (
    RECURRENT_MUST_MATCH,
    Job,
    load_model,
    now,
    record_test_evaluation,
    run_config,
    sequence_model_args,
    test_evaluations,
    train_run,
)

TASK = "forecasting"
Log = Callable[[str], None]

RESUME_MUST_MATCH = (
    *RECURRENT_MUST_MATCH,
    "target",
    "features",
    "time",
    "fill",
    "lookback",
    "horizon",
    "stride",
    "test_size",
    "val_size",
    "relative",
)


def predict_scaled(model: nn.Module, x: torch.Tensor, relative: bool) -> torch.Tensor:
    """(B, lookback, F) scaled inputs -> (B, horizon) scaled targets. Relative: the net predicts each
    step's change from the last observed target value, which lets it follow a trend past the
    range it was trained on."""
    out = model(x)  # (B, horizon)
    return out + x[:, -1:, 0] if relative else out


def forecast_step(relative: bool) -> Step:
    """Mean squared error on the scaled targets; also the mean absolute error."""

    def step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch  # (B, lookback, F), (B, horizon)
        pred = predict_scaled(model, x, relative)
        return {"loss": F.mse_loss(pred, y), "mae": (pred - y).abs().mean(), "output": pred, "target": y}

    return step


@dataclass
class ForecastData:
    series: Series
    spans: Spans
    scaler: Scaler
    scaled: np.ndarray  # (T, F) float32, standardised with the train span's statistics
    season: int

    @property
    def target(self) -> np.ndarray:
        return self.series.values[:, 0]


def prepare(config: TrainConfig) -> ForecastData:
    series = load_series(
        config.data, target=config.target, features=config.features, time=config.time, fill=config.fill
    )
    spans = split_spans(
        len(series),
        test_size=config.test_size,
        val_size=config.val_size,
        lookback=config.lookback,
        horizon=config.horizon,
    )
    scaler = Scaler.fit(series.values[: spans.val_start], series.columns)  # the train span only
    season = config.season if config.season is not None else season_of(series.freq)
    scaled = scaler.transform(series.values).astype(np.float32)
    return ForecastData(series, spans, scaler, scaled, season)


def _batches(data: ForecastData, starts: np.ndarray, config: TrainConfig, train: bool) -> TensorBatches:
    x, y = windows(data.scaled, starts, lookback=config.lookback, horizon=config.horizon)
    return TensorBatches(
        torch.from_numpy(x),
        torch.from_numpy(y),
        batch_size=distributed.global_batch(config.batch_size) if train else 1024,
        shuffle=train,
        seed=config.seed,
    )


def train(config: TrainConfig, log: Log = print, progress: bool = True) -> Path:
    """Fit on the train span's windows, validate on the validation span's; the test span is not read."""
    config.validate()
    log = distributed.quiet_unless_main(log)
    data = prepare(config)
    L, H, spans = config.lookback, config.horizon, data.spans
    train_starts = origins(0, spans.val_start, lookback=L, horizon=H, stride=config.stride)
    val_starts = origins(spans.val_start, spans.test_start, lookback=L, horizon=H, stride=1)
    describe = describe_row(data.series)
    r = data.series.report
    log(
        f"data: {data.series.name}: target {r['target']}"
        + (f" with {len(r['inputs'])} input column(s)" if r["inputs"] else "")
        + f", {len(data.series)} steps ({data.series.freq or 'no regular frequency'}); "
        f"train {spans.val_start} / val {spans.test_start - spans.val_start} / test {spans.n - spans.test_start} steps "
        f"(test from {describe(spans.test_start)}; not used in training)"
    )
    for line in data_notes(r):
        log(line)
    log(
        f"windows: {len(train_starts)} train / {len(val_starts)} val, lookback {L}, horizon {H}, stride {config.stride}"
    )
    model_args = sequence_model_args(config, H, data.scaled.shape[1])
    job = Job(
        task=TASK,
        source_name=data.series.name,
        model_args=model_args,
        train_batches=_batches(data, train_starts, config, train=True),
        val_batches=_batches(data, val_starts, config, train=False) if len(val_starts) else None,
        train_step=forecast_step(config.relative),
        eval_step=forecast_step(config.relative),
        monitor=Monitor.named(config.monitor),  # val_loss: the only one a forecast has
        meta={
            "columns": data.series.columns,
            "lookback": L,
            "horizon": H,
            "relative": config.relative,
            "scaler": data.scaler.to_dict(),
            "season": data.season,
        },
        data_report={
            **r,
            "name": data.series.name,
            "fingerprint": data.series.fingerprint,
            "spans": spans.to_dict(),
            "test_from": describe(spans.test_start),
            "season": data.season,
            "windows": {"train": len(train_starts), "val": len(val_starts)},
            "scaler": {"fitted_on": f"rows 0-{spans.val_start - 1} (the train span)", **data.scaler.to_dict()},
        },
        unit="windows",
    )
    return train_run(config, job, RESUME_MUST_MATCH, log, progress)


# ---- evaluate ----------------------------------------------------------------------------------


def model_forecasts(model: nn.Module, record: dict[str, Any], data: ForecastData, starts: np.ndarray) -> np.ndarray:
    """(N, horizon) forecasts in the series' units from each origin."""
    L, H = record["lookback"], record["horizon"]
    scaler = Scaler.from_dict(record["scaler"])
    scaled = scaler.transform(data.series.values).astype(np.float32)
    x, _ = windows(scaled, starts, lookback=L, horizon=H)
    with torch.inference_mode():
        pred = predict_scaled(model, torch.from_numpy(x), record.get("relative", False)).double().numpy()
    return scaler.inverse_target(pred)


def check_columns(data: ForecastData, record: dict[str, Any], run: RunDir) -> None:
    """Refuse data whose columns are not the ones the model was trained on (another CSV given
    with --data: its own only column becomes the target, and the model reads it as the old one)."""
    if data.series.columns != record["columns"]:
        raise DeepstepError(
            f"{data.series.report.get('source', data.series.name)} gives the columns "
            f"{', '.join(data.series.columns)}, but {run.path} was trained on {', '.join(record['columns'])}: "
            "give --data the series it was trained on"
        )


def span_origins(spans, split: str, lookback: int, horizon: int, backtest: bool) -> tuple[np.ndarray, int]:
    """The forecast origins on the `split` span (every step with `backtest`, else one per
    horizon) and the row where ARIMA's fit ends: the span's start, so it sees none of it."""
    if split == "test":
        starts = evaluation_origins(spans, lookback=lookback, horizon=horizon, backtest=backtest)
        fit_end = spans.test_start
    else:
        step = 1 if backtest else horizon
        starts = origins(spans.val_start, spans.test_start, lookback=lookback, horizon=horizon, stride=step)
        fit_end = spans.val_start
    if len(starts) == 0:  # a test span shorter than the horizon is refused when the spans are split
        raise DeepstepError(
            f"the validation span ({spans.test_start - spans.val_start} steps) is shorter than --horizon "
            f"{horizon}: nothing to forecast; raise --val-size, or measure on --split test"
        )
    return starts, fit_end


def evaluate_run(
    run_path: str | Path,
    split: str = "test",
    *,
    force: bool = False,
    checkpoint: str = "best",
    baselines: bool | Sequence[str] = False,
    backtest: bool = False,
    order: tuple[int, int, int] | None = None,
    seasonal_order: tuple[int, int, int] | None = None,
    data: str | None = None,
    log: Log = print,
    progress: bool = True,
) -> dict[str, Any]:
    """MAE, RMSE, MAPE (%), sMAPE (%) and MASE of the run's forecasts on the test (once) or
    validation span, in the series' units, with the baselines on the same origins if asked
    (True: all of them; or their names, e.g. ["naive", "seasonal_naive"])."""
    run = RunDir.open(run_path)
    if split not in ("test", "val"):
        also = " ('all' is for classifiers: a series has one test span)" if split == "all" else ""
        raise DeepstepError(f"--split {split!r}: a forecast is measured on 'test' or 'val'{also}")
    names = baseline_names(baselines, order, seasonal_order)
    history = test_evaluations(run, split, force, lambda e: f"MAE {e['model']['mae']:.4g}")
    config = run_config(run, data)
    info = run.read_json("run.json")
    data = prepare(config)
    model, record = load_model(run, checkpoint)
    check_columns(data, record, run)
    if data.series.fingerprint != info["data"]["fingerprint"]:
        log(f"warning: the data at {config.data} changed since this run was trained")
    L, H, spans = record["lookback"], record["horizon"], data.spans
    starts, fit_end = span_origins(spans, split, L, H, backtest)
    y = data.target
    truth = y[starts[:, None] + np.arange(H)[None, :]]
    scale = mase_scale(y[: spans.val_start], data.season)
    forecasts = {"model": model_forecasts(model, record, data, starts)}
    notes: dict[str, Any] = {}
    if baselines:
        extra, notes = run_baselines(
            y,
            fit_end,
            starts,
            H,
            data.season,
            names=names,
            order=order,
            seasonal_order=seasonal_order,
            progress=progress,
        )
        forecasts.update(extra)
    metrics = {name: forecast_metrics(truth, f, scale) for name, f in forecasts.items()}
    describe = describe_row(data.series)
    result: dict[str, Any] = {
        "split": split,
        "checkpoint": checkpoint,
        "epoch": record["epoch"],
        "target": data.series.target,
        "horizon": H,
        "origins": len(starts),
        "first_origin": describe(int(starts[0])),
        "backtest": backtest,
        "season": data.season,
        "model": metrics.pop("model"),
        "per_step_mae": np.abs(forecasts["model"] - truth).mean(axis=0).tolist(),
        "metric_notes": metric_notes(truth, scale, mase_lag(spans.val_start, data.season)),
    }
    if baselines:
        result["baselines"] = metrics
        result["baseline_notes"] = notes
    result["time"] = now()
    from deepstep.plots import plot_forecast

    # The plot shows the forecasts that tile the span (one per block of `horizon` steps).
    step = H if backtest else 1  # a backtest has an origin at every step; every H-th tiles the span
    shown = {name: [(int(starts[i]), f[i]) for i in range(0, len(starts), step)] for name, f in forecasts.items()}
    span_start = spans.test_start if split == "test" else spans.val_start
    span_stop = spans.n if split == "test" else spans.test_start
    png = plot_forecast(
        list(data.series.index[:span_stop]),
        y[:span_stop],
        span_start,
        shown,
        run.file(f"forecast_{split}.png"),
        title=f"{data.series.name}: {split} span, horizon {H}; MAE "
        + ", ".join(f"{k} {v['mae']:.3g}" for k, v in [("model", result["model"]), *metrics.items()]),
        ylabel=data.series.target,
    )
    result["files"] = {"json": str(run.file(f"{split}.json")), "plot": str(png)}
    run.write_json(f"{split}.json", result)
    if split == "test":
        record_test_evaluation(
            run,
            history,
            {"time": result["time"], "checkpoint": checkpoint, "epoch": result["epoch"], "model": result["model"]},
        )
    return result


def baseline_names(chosen: bool | Sequence[str], order=None, seasonal_order=None) -> tuple[str, ...]:
    """True -> every baseline, False -> none; else the names given, checked. Orders given for a
    SARIMA that is not among them are refused rather than ignored."""
    orders = [name for name, value in (("--order", order), ("--seasonal-order", seasonal_order)) if value]
    if orders and (not chosen or (chosen is not True and "sarima" not in chosen)):
        which = (
            "no baselines are asked for: add --baselines"
            if not chosen
            else f"--baselines {','.join(chosen)} leaves sarima out: add it, --baselines {','.join(chosen)},sarima"
        )
        raise DeepstepError(f"{', '.join(orders)} set the SARIMA baseline's orders, but {which}")
    if chosen is True or chosen is False:
        return BASELINES if chosen else ()
    unknown = [n for n in chosen if n not in BASELINES]
    if not chosen:
        raise DeepstepError(f"--baselines names none; choose from {', '.join(BASELINES)}, or leave it out for all")
    if unknown:
        raise DeepstepError(f"unknown baseline {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return tuple(chosen)


def data_notes(report: dict[str, Any]) -> list[str]:
    """What reading the series did that the user did not spell out, one line each."""
    notes = []
    if report.get("read_as"):
        notes.append(f"{report['source']}: read as {report['read_as']}")
    if report.get("numeric_header"):
        notes.append(
            f"{report['source']}: its first row ({', '.join(report['numeric_header'])}) is all numbers, and a "
            "CSV's first row is read as the column names; if it is data, add a header row naming the columns"
        )
    if report.get("date_format"):
        shown = report["date_format"].replace("%d", "DD").replace("%m", "MM").replace("%Y", "YYYY")
        notes.append(f"dates read day first: {shown}")
    if report.get("sorted"):
        notes.append("the rows were not in time order: put in time order")
    if report.get("uneven"):
        notes.append(f"{report['uneven']}; so no season is assumed (give --season N to set one)")
    if report.get("not_dates"):
        notes.append(f"{report['not_dates']} holds numbers, not dates: the rows are taken in file order, one step each")
    for column, why in report.get("left_out", {}).items():
        notes.append(f"--features all leaves out {column}: it {why}")
    if report.get("fill"):
        fill = report["fill"]
        notes.append(
            f"missing values {report['missing']} filled by {fill['method']} ({fill['rows_before']} -> {fill['rows_after']} rows)"
        )
    return notes


def baseline_report(
    config: TrainConfig,
    *,
    split: str = "test",
    backtest: bool = False,
    baselines: bool | Sequence[str] = True,
    order=None,
    seasonal_order=None,
    progress: bool = True,
) -> dict[str, Any]:
    """The baselines alone, on the spans and origins a run with `config` would be measured on."""
    names = baseline_names(baselines, order, seasonal_order)
    data = prepare(config)
    L, H, spans = config.lookback, config.horizon, data.spans
    starts, fit_end = span_origins(spans, split, L, H, backtest)
    y = data.target
    truth = y[starts[:, None] + np.arange(H)[None, :]]
    forecasts, notes = run_baselines(
        y,
        fit_end,
        starts,
        H,
        data.season,
        names=names,
        order=order,
        seasonal_order=seasonal_order,
        progress=progress,
    )
    scale = mase_scale(y[: spans.val_start], data.season)
    return {
        "split": split,
        "target": data.series.target,
        "horizon": H,
        "origins": len(starts),
        "first_origin": describe_row(data.series)(int(starts[0])),
        "backtest": backtest,
        "season": data.season,
        "baselines": {name: forecast_metrics(truth, f, scale) for name, f in forecasts.items()},
        "baseline_notes": notes,
        "metric_notes": metric_notes(truth, scale, mase_lag(spans.val_start, data.season)),
        "data_notes": data_notes(data.series.report),
    }


# ---- predict -----------------------------------------------------------------------------------


def predict_run(
    run_path: str | Path,
    *,
    checkpoint: str = "best",
    out: str | Path | None = None,
    plot: str | Path | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """The `horizon` steps after the end of the data, from its last `lookback` steps: a CSV and a plot.
    `data`: where the series is now, if it moved since training."""
    run = RunDir.open(run_path)
    config = run_config(run, data)
    data = prepare(config)
    model, record = load_model(run, checkpoint)
    check_columns(data, record, run)
    n = len(data.series)
    L, H = record["lookback"], record["horizon"]
    scaler = Scaler.from_dict(record["scaler"])
    x = torch.from_numpy(scaler.transform(data.series.values[n - L :]).astype(np.float32))[None]  # (1, L, F)
    with torch.inference_mode():
        forecast = scaler.inverse_target(predict_scaled(model, x, record.get("relative", False)).double().numpy()[0])
    x_future = future_times(data.series, H)
    times = time_labels(x_future)
    from deepstep.engine.files import write_text

    csv_path = Path(out) if out else run.file("forecast.csv")
    target = data.series.target
    write_text(csv_path, f"time,{target}\n" + "".join(f"{t},{v:.6g}\n" for t, v in zip(times, forecast, strict=True)))
    from deepstep.plots import plot_future

    shown = min(n, max(4 * H, 3 * L))
    png = plot_future(
        list(data.series.index[n - shown :]),
        data.target[n - shown :],
        x_future,
        forecast,
        Path(plot) if plot else run.file("forecast.png"),
        title=f"{data.series.name}: the next {H} steps of {target} after {describe_row(data.series)(n - 1)}",
        ylabel=target,
    )
    return {
        "target": target,
        "forecast": [{"time": t, "value": float(v)} for t, v in zip(times, forecast, strict=True)],
        "notes": [note] if (note := future_note(data.series)) else [],
        "files": {"csv": str(csv_path), "plot": str(png)},
    }


# ---- show --------------------------------------------------------------------------------------


SHOW_COLUMNS = 8  # panels in one `deepstep show` picture of a series


def show_series(data: str, *, out: str | Path = "series.png", time: str | None = None) -> Path:
    """The series as it is: each numeric column over time, gaps as gaps (`deepstep show`)."""
    from deepstep.data.series import read_columns, time_label
    from deepstep.plots import plot_columns

    name, table, text = read_columns(data, time)
    if text:  # not drawn: say so, rather than leave the reader to count the panels
        verb = "holds" if len(text) == 1 else "hold"
        print(
            f"note: {', '.join(text)} {verb} text, not drawn (train reads it one-hot with --features)", file=sys.stderr
        )
    span = f"{time_label(table.index[0])} to {time_label(table.index[-1])}"
    missing = int(table.isna().sum().sum())
    title = f"{name}: {len(table):,} rows, {span}" + (f", {missing:,} missing value(s)" if missing else "")
    if len(table.columns) > SHOW_COLUMNS:
        title += f" (the first {SHOW_COLUMNS} of {len(table.columns)} columns)"
    return plot_columns(table, Path(out), title=title, limit=SHOW_COLUMNS)
