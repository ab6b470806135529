"""Runs side by side: what each was trained with where they differ, their best validation, their
test result where it was measured, and their validation curves on one picture. Reads the run
folders' records only; nothing is trained or evaluated."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepstep.config import with_defaults
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError

# Options that say where things go or how much is printed, not how a model is trained.
NOT_HYPER_PARAMETERS = frozenset({"out", "resume", "quiet", "data-dir", "checkpoint-every", "workers", "model-file"})


def run_record(path: str | Path) -> dict[str, Any]:
    """What compare needs of one run folder: its task, config, epochs and results."""
    import yaml

    run = RunDir.open(path)
    info = run.read_json("run.json")
    try:
        config = run.read_config() if run.file("config.yaml").is_file() else {}
    except yaml.YAMLError:
        raise DeepstepError(f"{run.file('config.yaml')} is not valid YAML; the run folder is damaged") from None
    task = info.get("task", "image-classification")
    return {
        "run": str(path),
        "task": task,
        "model": info.get("model", {}).get("name"),
        "config": with_defaults(config if isinstance(config, dict) else {}, task),
        "metrics": run.read_metrics(),
        "data": info.get("data") or {},
        "result": info.get("result") or {},
        "test": run.read_json("test.json"),
    }


def different_options(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every run, in the config's order (each
    config filled with `with_defaults`)."""
    keys: list[str] = []
    for config in configs:
        keys.extend(k for k in config if k not in keys and k not in NOT_HYPER_PARAMETERS)
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def validation_part(task: str, data: dict[str, Any]) -> tuple[str, str] | None:
    """What a run was validated on: a key, the same for runs that measured their validation numbers
    on the same examples (the data's content and which part of it), and its description. None for
    a run without a validation part, or one whose run.json does not say."""
    if not data.get("fingerprint"):
        return None
    if task == "forecasting":
        spans, windows = data.get("spans") or {}, (data.get("windows") or {}).get("val")
        if not spans.get("val") or not windows:
            return None
        part = {"spans": spans, "windows": windows}
        said = f"{spans['val']} steps from row {spans['val_start']} ({windows} windows)"
    else:
        val = data.get("val") or {}
        if not val.get("count"):
            return None
        part = {"val": val, "test": data.get("test")}  # the validation part is drawn from what the test part leaves
        items = "images" if task == "image-classification" else "sequences"
        said = f"{val['count']} {items}, {val.get('origin', 'origin not recorded')}"
        if task == "sequence-classification":  # a folder's test part is in its fingerprint, a sequence set's is not
            said += f", beside a test part of {(data.get('test') or {}).get('origin', 'unrecorded origin')}"
    key = json.dumps([data["fingerprint"], part], sort_keys=True)
    return key, f"{said}, of data {data['fingerprint'][:8]}"


def name_validation_parts(parts: Sequence[tuple[str, str] | None]) -> tuple[list[str | None], dict[str, str]]:
    """A letter for each run's validation part (A for the first run's, B for the next other one...)
    and what each letter stands for."""
    letters: dict[str, str] = {}
    described: dict[str, str] = {}
    for part in parts:
        if part is not None and part[0] not in letters:
            letters[part[0]] = chr(ord("A") + len(letters)) if len(letters) < 26 else str(len(letters) + 1)
            described[letters[part[0]]] = part[1]
    return [None if part is None else letters[part[0]] for part in parts], described


def at_best_epoch(metrics: Sequence[dict[str, Any]], result: dict[str, Any], key: str) -> float | None:
    """`key` ("best_val_acc") of the best checkpoint: the value recorded for what --monitor chose, or,
    when the run was chosen by another metric (--monitor val_loss), the epoch's own val_acc."""
    if result.get(key) is not None:
        return result[key]
    row = next((m for m in metrics if m.get("epoch") == result.get("best_epoch")), {})
    return row.get(key.removeprefix("best_"))


def test_result(task: str, test: dict[str, Any] | None) -> dict[str, float] | None:
    """The test part's headline numbers, if the run was evaluated on it."""
    if not test:
        return None
    if task == "forecasting":
        model = test.get("model") or {}
        return {k: model[k] for k in ("mae", "mape") if model.get(k) is not None}
    return {k: test[k] for k in ("accuracy", "top5_accuracy") if test.get(k) is not None}


def legend_label(row: dict[str, Any], most: int = 3) -> str:
    """The run's folder, and what it was trained with where the runs differ (up to `most` options)."""
    if not row["options"] or len(row["options"]) > most:
        return row["run"]
    given = " ".join(f"--{k} {value}" for k, value in row["options"].items() if value is not None)
    return f"{row['run']}: {given}" if given else row["run"]


def compare_runs(
    paths: Sequence[str | Path], out: str | Path | None = "compare.png", x: str = "epoch"
) -> dict[str, Any]:
    """The runs at `paths` side by side (one task): a row each, with the options that differ
    between them, and their validation (and training) curves against `x` ("epoch" or "seconds"
    of training) drawn to `out` (None: no picture). Paths that exist but are not run folders (a
    picture a glob took in) are left out and listed in "skipped"; a missing path is an error.
    "val_parts" names, by letter, the validation parts the runs were measured on (each row's
    "val_part"): more than one means their validation numbers are not on the same examples."""
    from deepstep.plots import picture_path

    if not paths:
        raise DeepstepError("give the run folders to compare: `deepstep compare runs/a runs/b`")
    if x not in ("epoch", "seconds"):
        raise DeepstepError(f"--x must be epoch or seconds, got {x!r}")
    out = picture_path(out) if out is not None else None
    skipped = [str(p) for p in paths if Path(p).exists() and not RunDir(p).exists()]  # `runs/*` takes in compare.png
    records = [run_record(p) for p in paths if str(p) not in skipped]
    if not records:
        raise DeepstepError(
            f"none of {', '.join(map(str, paths))} is a run folder (with run.json) written by `deepstep train`"
        )
    tasks = {r["task"] for r in records}
    if len(tasks) > 1:
        first, other = records[0], next(r for r in records if r["task"] != records[0]["task"])
        raise DeepstepError(
            f"{first['run']} is {first['task']} and {other['run']} {other['task']}: compare runs of one task"
        )
    task = records[0]["task"]
    differing = different_options([r["config"] for r in records])
    metric = "val_loss" if task == "forecasting" else "val_acc"
    letters, val_parts = name_validation_parts([validation_part(task, r["data"]) for r in records])
    rows = []
    for r, letter in zip(records, letters, strict=True):
        result = r["result"]
        best_key = "best_val_loss" if task == "forecasting" else "best_val_acc"
        rows.append(
            {
                "run": r["run"],
                "model": r["model"],
                "epochs": len(r["metrics"]),
                "best_epoch": result.get("best_epoch"),
                best_key: at_best_epoch(r["metrics"], result, best_key),
                "train_seconds": result.get("train_seconds"),
                "test": test_result(task, r["test"]),
                "options": {k: r["config"].get(k) for k in differing},
                "val_part": letter,
            }
        )
    picture = None
    if out is not None:
        from deepstep.plots import plot_comparison

        drawn = [(legend_label(row), r["metrics"]) for row, r in zip(rows, records, strict=True) if r["metrics"]]
        if drawn:
            picture = str(plot_comparison(drawn, metric, x, out))
    return {
        "task": task,
        "differing": differing,
        "runs": rows,
        "val_parts": val_parts,
        "picture": picture,
        "skipped": skipped,
    }
