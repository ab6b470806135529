"""Metrics on records: forecast errors in the series' own units, and classification scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def mase_lag(n: int, season: int) -> int:
    """How far back MASE's naive forecast looks on a train span of `n` steps: a season, or one step."""
    return season if season and season > 1 and n > season else 1


def mase_scale(train_target: np.ndarray, season: int) -> float:
    """Mean absolute error of the (seasonal) naive one-step forecast on the train span: MASE's unit."""
    m = mase_lag(len(train_target), season)
    diffs = np.abs(train_target[m:] - train_target[:-m])
    return float(diffs.mean()) if len(diffs) else float("nan")


def metric_notes(truth: np.ndarray, scale: float, lag: int) -> list[str]:
    """Why MAPE or MASE is not defined, or is taken over fewer steps, on these true values: one line
    each. `scale` and `lag`: MASE's unit (`mase_scale`) and how far back its naive forecast looks (`mase_lag`)."""
    notes = []
    zeros = int((np.asarray(truth) == 0).sum())
    if zeros == np.size(truth):
        notes.append("MAPE n/a: every true value is 0 (it divides by them); see sMAPE")
    elif zeros:
        notes.append(f"MAPE leaves out the {zeros} step(s) whose true value is 0 (it divides by them)")
    if not np.isfinite(scale):
        notes.append("MASE n/a: the span before validation is too short to scale it")
    elif scale == 0:
        naive = f"the value {lag} steps back" if lag > 1 else "the last value"
        notes.append(
            f"MASE n/a: {naive} forecasts the span before validation exactly, so MASE's unit (that forecast's error) is 0"
        )
    return notes


def forecast_metrics(truth: np.ndarray, pred: np.ndarray, scale: float) -> dict[str, float]:
    """MAE, RMSE, MAPE (%), sMAPE (%) and MASE over every forecast step (arrays of the same shape)."""
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    error = pred - truth
    nonzero = truth != 0
    mape = 100 * np.mean(np.abs(error[nonzero] / truth[nonzero])) if nonzero.any() else float("nan")
    denominator = np.abs(truth) + np.abs(pred)
    smape_terms = np.where(denominator > 0, 2 * np.abs(error) / np.where(denominator > 0, denominator, 1), 0.0)
    mae = float(np.mean(np.abs(error)))
    return {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mape": float(mape),
        "smape": float(100 * np.mean(smape_terms)),
        "mase": mae / scale if scale and np.isfinite(scale) else float("nan"),
    }


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney U), ties averaged; None with one class only."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve's points (false positive rate, true positive rate), from (0, 0) to (1, 1), one
    per distinct score taken as the threshold (the examples scoring at least it said positive)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    last_of_ties = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # a threshold per distinct score
    tp = np.cumsum(positive)[last_of_ties]
    fp = np.cumsum(~positive)[last_of_ties]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def save_roc(
    folder: Path, split: str, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], auc: float | None
) -> dict[str, str]:
    """roc_SPLIT.png in `folder` for two classes (the second taken as the positive one, as
    classification_metrics takes it) when both are present, `auc` being classification_metrics'
    "roc_auc" (None or absent otherwise); returns its path by role, else {}."""
    if auc is None:
        return {}
    from deepstep.plots import plot_roc

    positive = np.asarray(labels) == 1
    fpr, tpr = roc_curve(np.asarray(probs)[:, 1], positive)
    said = np.asarray(probs).argmax(axis=1) == 1  # the model's own decisions: the more probable class
    decided = (float((said & ~positive).sum() / (~positive).sum()), float((said & positive).sum() / positive.sum()))
    title = (
        f"{split}: ROC curve, {classes[1]} ({int(positive.sum())}) as the positive class "
        f"against {classes[0]} ({int((~positive).sum())})"
    )
    return {"roc_png": str(plot_roc(fpr, tpr, auc, decided, folder / f"roc_{split}.png", title))}


TOP_K = 5  # top-5 accuracy, as timm and Keras's TopKCategoricalAccuracy report it, for more classes than that


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision / recall / F1 (macro averages; for two classes also the second
    class's, taken as the positive one), ROC AUC for two classes, top-5 accuracy for more than 5
    classes (the label among the 5 most probable), and the confusion matrix."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    n = len(classes)
    preds = probs.argmax(axis=1)
    matrix = np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(n), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    result: dict[str, Any] = {
        "accuracy": float((preds == labels).mean()) if len(labels) else float("nan"),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, c in enumerate(classes)
        },
        "macro_f1": float(f1.mean()),
        "classes": list(classes),
        "confusion_matrix": matrix.tolist(),
    }
    if n > TOP_K and len(labels):
        top = np.argpartition(-probs, TOP_K - 1, axis=1)[:, :TOP_K]
        result[f"top{TOP_K}_accuracy"] = float((top == labels[:, None]).any(axis=1).mean())
    if n == 2:
        result.update(
            positive_class=classes[1],
            precision=float(precision[1]),
            recall=float(recall[1]),
            f1=float(f1[1]),
            roc_auc=roc_auc(probs[:, 1], labels == 1),
        )
    else:
        result.update(precision=float(precision.mean()), recall=float(recall.mean()), f1=float(f1.mean()))
    return result


def write_confusion_csv(path: Path, matrix: np.ndarray, classes: Sequence[str]) -> None:
    from deepstep.engine.files import write_text

    lines = ["true\\predicted," + ",".join(classes)]
    lines += [f"{c}," + ",".join(str(int(v)) for v in row) for c, row in zip(classes, matrix, strict=True)]
    write_text(path, "\n".join(lines) + "\n")


def save_confusion(folder: Path, split: str, matrix: np.ndarray, classes: Sequence[str], title: str) -> dict[str, str]:
    """confusion_SPLIT.png and .csv in `folder`; returns their paths by role, with SPLIT.json's."""
    from deepstep.plots import plot_confusion

    png = plot_confusion(matrix, classes, folder / f"confusion_{split}.png", title=title)
    write_confusion_csv(folder / f"confusion_{split}.csv", matrix, classes)
    return {
        "json": str(folder / f"{split}.json"),
        "confusion_png": str(png),
        "confusion_csv": str(folder / f"confusion_{split}.csv"),
    }
