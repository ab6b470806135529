"""Sequence classification: a recurrent net reads a whole variable-length sequence (packed, so
padding is never read) and its final states give the class: one logit with a sigmoid for two
classes, a softmax over the classes otherwise.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepstep.config import TrainConfig
from deepstep.data.batches import TensorBatches
from deepstep.data.sequences import SequenceSet, load_sequences, pad, split_sequences
from deepstep.data.sources import data_cache_dir
from deepstep.engine import distributed
from deepstep.engine.fit import Monitor
from deepstep.engine.loop import evaluate
from deepstep.engine.precision import resolve_precision
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError, kind_of
from deepstep.tasks.metrics import classification_metrics, save_confusion, save_roc
from deepstep.tasks.runs import (
    RECURRENT_MUST_MATCH,
    Job,
    check_split,
    class_numbers,
    class_weights,
    describe_class_weights,
    load_model,
    now,
    prediction_table_path,
    record_test_evaluation,
    run_config,
    same_data_for_all,
    sequence_model_args,
    test_evaluations,
    train_run,
    weighted_mean,
    write_predictions,
)

TASK = "sequence-classification"
Log = Callable[[str], None]

RESUME_MUST_MATCH = (
    *RECURRENT_MUST_MATCH,
    "test_size",
    "val_size",
    "group_file",
    "test_groups",
)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) binary logits or (B, C) logits -> (B, C) class probabilities."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits.float())
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits.float(), dim=1)


def sequence_step(
    model: nn.Module, batch: tuple[torch.Tensor, ...], weights: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Binary cross-entropy on one logit for two classes, cross-entropy otherwise (each example's
    weighted by its class's `weights`, if given); and accuracy."""
    x, lengths, y = batch  # (B, T, F), (B,), (B,)
    logits = model(x[:, : int(lengths.max())], lengths)  # (B, 1) or (B, C)
    if logits.shape[1] == 1:
        losses = F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction="none")
        pred = (logits[:, 0] > 0).long()
    else:
        losses = F.cross_entropy(logits, y, reduction="none")
        pred = logits.argmax(dim=1)
    loss = weighted_mean(losses, y, weights)
    return {"loss": loss, "acc": (pred == y).float().mean(), "output": probabilities(logits), "target": y}


def standardise(data: SequenceSet, mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
    return [((s - mean) / std).astype(np.float32) for s in data.sequences]


def _batches(sequences: list[np.ndarray], labels: np.ndarray, batch_size: int, train: bool, seed: int) -> TensorBatches:
    x, lengths = pad(sequences)
    return TensorBatches(
        torch.from_numpy(x),
        torch.from_numpy(lengths),
        torch.from_numpy(labels),
        batch_size=batch_size if train else 1024,
        shuffle=train,
        seed=seed,
    )


def prepare(config: TrainConfig, data_dir: str | None = None):
    data = load_sequences(config.data, data_cache_dir(data_dir, config.data_dir), group_file=config.group_file)
    splits = split_sequences(
        data, test_size=config.test_size, val_size=config.val_size, seed=config.seed, test_groups=config.test_groups
    )
    steps = np.concatenate(splits.train.sequences)  # every time step of the train part
    std = steps.std(axis=0)
    return data, splits, steps.mean(axis=0), np.where(std > 0, std, 1.0)


def train(config: TrainConfig, log: Log = print, progress: bool = True) -> Path:
    """Fit on the train part, validate on the validation part; the test part is not read."""
    config.validate()
    log = distributed.quiet_unless_main(log)
    data, splits, mean, std = prepare(config)
    lengths = [len(s) for s in data.sequences]
    r = splits.report
    named = f" ({', '.join(data.feature_names)})" if data.feature_names else ""
    log(
        f"data: {data.name}: {len(data.sequences)} sequences of {data.features} feature{'s' if data.features != 1 else ''}{named}, lengths {min(lengths)}-{max(lengths)}, "
        f"classes {', '.join(data.classes)}; {r['train']['count']} train / {r['val']['count']} val / "
        f"{r['test']['count']} test ({r['test']['origin']}; not used in training)"
    )
    binary = len(data.classes) == 2
    weights = class_weights(config, splits.train.labels, data.classes)
    if weights is not None:
        log(describe_class_weights(weights, data.classes))
    model_args = sequence_model_args(config, 1 if binary else len(data.classes), data.features)
    val = splits.val
    job = Job(
        task=TASK,
        source_name=data.name,
        model_args=model_args,
        train_batches=_batches(
            standardise(splits.train, mean, std),
            splits.train.labels,
            distributed.global_batch(config.batch_size),
            True,
            config.seed,
        ),
        val_batches=None
        if val is None
        else _batches(standardise(val, mean, std), val.labels, config.batch_size, False, 0),
        train_step=sequence_step,
        eval_step=sequence_step,
        monitor=Monitor.named(config.monitor),
        meta={
            "classes": data.classes,
            "features": data.features,
            "normalization": {"mean": mean.tolist(), "std": std.tolist()},
        },
        data_report={
            "name": data.name,
            "root": str(data.root) if data.root else None,
            "fingerprint": data.fingerprint,
            "classes": data.classes,
            "sequences": len(data.sequences),
            "lengths": {"min": min(lengths), "max": max(lengths)},
            **r,
            "normalization": {"mean": mean.tolist(), "std": std.tolist(), "origin": "every step of the train part"},
        },
        unit="sequences",
        class_weights=weights,
    )
    return train_run(config, job, RESUME_MUST_MATCH, log, progress)


def evaluate_run(
    run_path: str | Path,
    split: str = "test",
    *,
    force: bool = False,
    checkpoint: str = "best",
    data_dir: str | None = None,
    data: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Accuracy, precision / recall / F1, ROC AUC (two classes) and the confusion matrix of
    `split`: test, val, or "all", every sequence of other data given as `data` (not recorded as a
    test evaluation); otherwise `data` is where the run's data is now, if it moved since training."""
    run = RunDir.open(run_path)
    check_split(split, data)
    history = test_evaluations(run, split, force, lambda e: f"accuracy {e['accuracy']:.2%}")
    config = run_config(run, data)
    info = run.read_json("run.json")
    if split == "all":
        data = part = load_sequences(config.data, data_cache_dir(data_dir, config.data_dir))
        if data.fingerprint == info["data"]["fingerprint"]:
            raise DeepstepError(same_data_for_all(config.data))
    else:
        data, splits, _, _ = prepare(config, data_dir)
        if data.fingerprint != info["data"]["fingerprint"]:
            log(f"warning: the data at {config.data} changed since this run was trained")
        part = splits.test if split == "test" else splits.val
    if part is None:
        raise DeepstepError("this run was trained with --val-size 0: it has no validation part to evaluate")
    model, record = load_model(run, checkpoint)
    classes = record["classes"]
    labels = class_numbers(config.data, data.classes, classes)[part.labels]  # by name
    norm = record["normalization"]
    batches = _batches(standardise(part, np.asarray(norm["mean"]), np.asarray(norm["std"])), labels, 1024, False, 0)
    means, kept = evaluate(
        model, sequence_step, batches, resolve_precision("32", torch.device("cpu")), keep=("output", "target")
    )
    report = classification_metrics(kept["output"].numpy(), kept["target"].numpy(), classes)
    result = {
        "split": split,
        **({"data": str(config.data)} if split == "all" else {}),
        "checkpoint": checkpoint,
        "epoch": record["epoch"],
        "sequences": len(part.labels),
        "loss": means["loss"],
        **report,
        "time": now(),
    }
    title = f"{split}: accuracy {report['accuracy']:.2%}, F1 {report['f1']:.3f}"
    result["files"] = save_confusion(run.path, split, np.asarray(report["confusion_matrix"]), classes, title)
    result["files"].update(
        save_roc(run.path, split, kept["output"].numpy(), kept["target"].numpy(), classes, report.get("roc_auc"))
    )
    run.write_json(f"{split}.json", result)
    if split == "test":
        record_test_evaluation(
            run, history, {key: result[key] for key in ("time", "checkpoint", "epoch", "accuracy", "f1", "loss")}
        )
    return result


def sequence_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The CSV files given, and the sequence CSVs in the folders (or .zip / .tar.gz archives) given
    and their subfolders: as in training, those named ..._<id>.csv (so a labels or groups file
    beside them is left out), in natural order (seq_2.csv before seq_10.csv)."""
    from deepstep.data.folders import in_natural_order, is_archive, unpack_archive
    from deepstep.data.sequences import LABEL_FILE, TRAILING_ID

    files: list[Path] = []
    for given in map(Path, inputs):
        folder = unpack_archive(given, data_cache_dir()) if given.is_file() and is_archive(given) else given
        if folder.is_dir():
            found = in_natural_order(
                [f for f in folder.rglob("*.csv") if TRAILING_ID.search(f.stem) and not LABEL_FILE.search(f.stem)]
            )
            if not found:
                raise DeepstepError(f"{given} holds no sequence CSV files (named ..._<id>.csv)")
            files.extend(found)
        elif given.is_file():
            files.append(given)
        else:
            raise DeepstepError(
                f"{given} does not exist; give sequence CSV files (one row per time step) or folders of them"
            )
    return files


def sequence_inputs(inputs: Sequence[Any], features: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Each sequence to predict with where it came from ({"file": ...}, or {"file": None,
    "sequence": its place among the inputs} for an array given in Python), as (steps, features).
    An array of sequences x steps x features (an .npz's X) is as many inputs, one a sequence."""
    from deepstep.data.sequences import read_npz, read_numbers

    inputs = [part for item in inputs for part in (item if getattr(item, "ndim", None) == 3 else [item])]
    given: list[tuple[dict[str, Any], np.ndarray]] = []
    for index, item in enumerate(inputs):
        if isinstance(item, str | os.PathLike) and Path(item).suffix.lower() == ".npz" and Path(item).is_file():
            sequences, _ = read_npz(Path(item), labelled=False)
            given += [({"file": str(item), "sequence": i}, s) for i, s in enumerate(sequences)]
        elif isinstance(item, str | os.PathLike):
            given += [({"file": str(f)}, read_numbers(f)) for f in sequence_files([item])]
        elif hasattr(item, "__array__"):  # a numpy array or a tensor
            values = np.asarray(item, dtype=np.float32)
            given.append(({"file": None, "sequence": index}, values[:, None] if values.ndim == 1 else values))
        else:
            raise DeepstepError(
                "predict takes sequence CSV files, folders of them, .npz files or arrays (steps x features, or "
                "sequences x steps x features); "
                f"input {index} is {kind_of(item)}"
            )
    for where, s in given:
        name = where["file"] or f"sequence {where['sequence']}"
        if len(s) == 0:
            raise DeepstepError(f"{name} holds no rows of numbers: a sequence is one row per time step")
        if s.ndim != 2 or s.shape[1] != features:
            raise DeepstepError(f"{name}: the model takes sequences of {features} columns, got shape {s.shape}")
        if not np.isfinite(s).all():
            raise DeepstepError(f"{name}: row {np.argwhere(~np.isfinite(s))[0][0] + 1} holds inf or nan")
    return given


def predict_run(
    run_path: str | Path, inputs: Sequence[Any], *, checkpoint: str = "best", out: str | Path | None = None
) -> list[dict[str, Any]]:
    """The class and class probabilities of each sequence CSV (rows = time steps, columns =
    features), or array of that shape; `out`: also a CSV of them (write_predictions)."""
    out = prediction_table_path(out) if out is not None else None
    run = RunDir.open(run_path)
    model, record = load_model(run, checkpoint)
    given = sequence_inputs(inputs, record["features"])
    sequences = [s for _, s in given]
    norm = record["normalization"]
    scaled = [((s - np.asarray(norm["mean"])) / np.asarray(norm["std"])).astype(np.float32) for s in sequences]
    x, lengths = pad(scaled)
    with torch.inference_mode():
        probs = probabilities(model(torch.from_numpy(x), torch.from_numpy(lengths))).numpy()
    classes = record["classes"]
    results = [
        {
            **where,
            "label": classes[int(p.argmax())],
            "probabilities": {c: float(q) for c, q in zip(classes, p, strict=True)},
        }
        for (where, _), p in zip(given, probs, strict=True)
    ]
    if out is not None:
        write_predictions(results, classes, out)
    return results


# ---- show --------------------------------------------------------------------------------------


def show_sequences(
    data: str, *, n: int = 16, out: str | Path = "sequences.png", data_dir: str | None = None, seed: int = 0
) -> Path:
    """A labelled grid of `n` sequences drawn at random (seeded), each class in turn (`deepstep show`)."""
    from deepstep.plots import plot_sequence_grid

    if n < 1:
        raise DeepstepError(f"--n must be at least 1, got {n}")
    sequences = load_sequences(data, data_cache_dir(data_dir))
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(sequences.labels == c)) for c in range(len(sequences.classes))]
    turns = itertools.chain.from_iterable(itertools.zip_longest(*by_class))  # the classes take turns
    picks = [int(i) for i in turns if i is not None][:n]
    title = f"{sequences.name}: {len(picks)} of {len(sequences.sequences)} sequences, {sequences.features} features"
    return plot_sequence_grid(
        [sequences.sequences[i] for i in picks],
        [f"{sequences.classes[int(sequences.labels[i])]} #{sequences.ids[i]}" for i in picks],
        Path(out),
        title=title,
        feature_names=sequences.feature_names,
    )
