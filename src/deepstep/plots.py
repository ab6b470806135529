"""Figures made from records (metric rows, matrices, images); matplotlib is imported lazily and
used without pyplot, so no GUI backend is ever touched."""

from __future__ import annotations

import logging
import math
import re
import sys
import warnings
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from deepstep.errors import DeepstepError

# Fonts that hold the characters DejaVu Sans lacks (class names in Chinese, Japanese, Korean, ...);
# those installed are added after it, and matplotlib falls back to them glyph by glyph.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Arial Unicode MS", "Microsoft YaHei")
_fonts_checked = False


def _add_fallback_fonts() -> None:
    global _fonts_checked
    if _fonts_checked:
        return
    import matplotlib
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    extra = [name for name in FALLBACK_FONTS if name in installed]
    families = list(matplotlib.rcParams["font.family"])
    if extra and families == ["sans-serif"]:  # the default, untouched by the user
        matplotlib.rcParams["font.family"] = [*families, *extra]
        # a fallback with one weight only (WenQuanYi: 500) is no news worth a line per label
        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    _fonts_checked = True


def _wrap(title: str, width: float) -> str:
    """`title` in lines that fit a figure `width` inches wide at 10 pt (about 13 characters an inch)."""
    import textwrap

    return textwrap.fill(title, width=max(30, int(width * 13)))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    _add_fallback_fonts()
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def picture_path(out: str | Path) -> Path:
    """The file a picture asked for as `out` is written to: .png added to a name without a type
    (as matplotlib would add it, but said); a folder, or a type matplotlib cannot write, refused."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    if out.is_dir():
        raise DeepstepError(f"{out} is a folder: give a picture's file name, e.g. {out / 'picture.png'}")
    kind = out.suffix.lower().lstrip(".")
    if not kind:
        return out.with_name(out.name + ".png")
    if kind not in FigureCanvasBase.get_supported_filetypes():
        raise DeepstepError(
            f"{out}: matplotlib cannot write .{kind} pictures; end the name with .png, .jpg, .svg or .pdf"
        )
    return out


def _save(fig, out: Path) -> Path:
    from deepstep.engine.files import cannot_write

    out = picture_path(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out)
        except OSError as err:
            raise cannot_write(out, err) from None
    missing = []
    for warning in caught:
        glyph = re.match(r"Glyph (\d+)", str(warning.message))
        if glyph:
            missing.append(chr(int(glyph.group(1))))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if missing:  # one line, instead of a Python warning per character
        print(
            f"note: {out}: the plot's fonts lack {''.join(dict.fromkeys(missing))}, drawn as boxes; "
            "install a font that has them (e.g. Noto Sans CJK) to see them",
            file=sys.stderr,
        )
    return out


def plot_curves(rows: Sequence[dict[str, Any]], out: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train beside validation."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(10, 4)
    epochs = [r["epoch"] for r in rows]
    panels = [("loss", "loss", False), ("acc", "accuracy", True)]
    panels = [p for p in panels if any(r.get(f"train_{p[0]}") is not None for r in rows)]
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label, percent) in zip(axes, panels, strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [r.get(f"{split}_{key}") for r in rows]
            points = [(e, v * 100 if percent else v) for e, v in zip(epochs, values, strict=True) if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{label} (%)" if percent else label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_comparison(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], metric: str, x: str, out: Path) -> Path:
    """Several runs' curves on shared axes, a colour each: loss, and accuracy (`metric` "val_acc")
    or mean absolute error (forecasting), validation solid and training dashed, against the
    epoch or the seconds of training so far (`x`)."""
    from itertools import accumulate

    from matplotlib.lines import Line2D

    second = ("acc", "accuracy (%)", 100.0) if metric == "val_acc" else ("mae", "mean absolute error (scaled)", 1.0)
    panels = [("loss", "loss", 1.0), second]
    fig = _figure(11, 4.4)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for colour, (_, rows) in enumerate(runs):
        xs = [r["epoch"] for r in rows] if x == "epoch" else list(accumulate((r.get("seconds") or 0.0) for r in rows))
        for ax, (key, _, scale) in zip(axes, panels, strict=True):
            marker = {"marker": "o", "ms": 3} if len(rows) <= 40 else {}  # dots would hide a long run's line
            for split, style in (("val", {"ls": "-", **marker}), ("train", {"ls": "--", "alpha": 0.6})):
                points = [
                    (a, r[f"{split}_{key}"] * scale)
                    for a, r in zip(xs, rows, strict=True)
                    if r.get(f"{split}_{key}") is not None
                ]
                if points:
                    ax.plot(*zip(*points, strict=True), color=f"C{colour % 10}", lw=1.4, **style)
    from matplotlib.ticker import MaxNLocator

    for ax, (_, label, _) in zip(axes, panels, strict=True):
        ax.set_xlabel("epoch" if x == "epoch" else "seconds of training")
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{i % 10}", lw=2) for i in range(len(runs))]
    handles += [Line2D([], [], color="grey", ls="-", marker="o", ms=3), Line2D([], [], color="grey", ls="--")]
    labels = [name for name, _ in runs] + ["validation", "training"]
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    return _save(fig, out)


def plot_lr_finding(
    lrs: Sequence[float], losses: Sequence[float], suggestion: float | None, out: Path, title: str
) -> Path:
    """The learning-rate range test: smoothed training loss against the learning rate (log scale),
    with the suggested rate marked."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="C0", lw=1.6)
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", ls="--", lw=1.2, label=f"suggested --lr {suggestion:.2g}")
        ax.legend(loc="upper left")
    ax.set_xscale("log")
    if len(losses):  # the blow-up that ends the test would squash the rest
        ax.set_ylim(min(losses) - 0.05 * abs(min(losses)), max(1.5 * losses[0], min(losses) + 1e-6))
    ax.set_xlabel("learning rate (one training step each)")
    ax.set_ylabel("training loss (mean of the steps around)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title)
    return _save(fig, out)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], out: Path, title: str) -> Path:
    """Rows are true classes, columns predicted; each cell shows its count."""
    n = len(classes)
    size = min(4 + 0.45 * n, 24)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    return _save(fig, out)


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, decided: tuple[float, float], out: Path, title: str) -> Path:
    """A ROC curve: the true positive rate against the false positive rate as the threshold on
    the positive class's probability falls, beside the diagonal of a guess; `decided`: the point
    (false, true positive rate) of the model's own decisions, at a probability of 0.5."""
    fig = _figure(5.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="guessing (AUC 0.5)")
    ax.plot(fpr, tpr, linewidth=2, label=f"model (AUC {auc:.3f})")  # tied scores: a straight run
    ax.plot(*decided, "o", color="C3", label="its decisions (probability 0.5)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title(_wrap(title, 4.5))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out)


def _show_image(ax, image: np.ndarray) -> None:
    """image: (C, H, W) or (H, W, C) uint8."""
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if image.ndim == 2 else {}  # not stretched to its own range
    ax.imshow(image, interpolation="nearest", **grey)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_predictions(items: Sequence[tuple[np.ndarray, str, list[dict[str, Any]]]], out: Path) -> Path:
    """One row per image: the image as the model saw it, and its top-k probabilities."""
    rows = len(items)
    fig = _figure(9, 2.6 * rows)
    axes = fig.subplots(rows, 2, squeeze=False, width_ratios=[1, 1.6])
    for (image, name, top_k), (ax_image, ax_bars) in zip(items, axes, strict=True):
        _show_image(ax_image, image)
        ax_image.set_title("/".join(Path(name).parts[-2:]), fontsize=9)  # dog/0012.jpg: its folder may be its class
        labels = [t["label"] for t in top_k][::-1]
        probs = [t["probability"] for t in top_k][::-1]
        bars = ax_bars.barh(labels, probs, color=["#1f77b4"] * (len(probs) - 1) + ["#d62728"])
        ax_bars.set_xlim(0, 1)
        ax_bars.set_xlabel("softmax probability")
        ax_bars.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
        ax_bars.set_title(f"predicted: {top_k[0]['label']} ({top_k[0]['probability']:.1%})", fontsize=10)
    return _save(fig, out)


def plot_gradcam(
    items: Sequence[tuple[np.ndarray, str, dict[str, Any], np.ndarray]],
    out: Path,
    layer: str,
    target: str = "the predicted class",
) -> Path:
    """Each image (uint8) beside itself under its Grad-CAM map (H, W, 0-1) for the class it was
    given (`{"label", "probability"}`, `target` in the title), three pairs a row."""
    from matplotlib import colormaps

    pairs = min(3, len(items))
    rows = math.ceil(len(items) / pairs)
    title = _wrap(f"Grad-CAM at {layer}: where the evidence for {target} lies (red: most)", 2.9 * pairs)
    fig = _figure(2.9 * pairs, 1.75 * rows + 0.3 + 0.2 * (title.count("\n") + 1))
    axes = fig.subplots(rows, 2 * pairs, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    heat = colormaps["jet"]
    for k, (image, name, top, cam) in enumerate(items):
        ax_image, ax_cam = axes[k // pairs, 2 * (k % pairs)], axes[k // pairs, 2 * (k % pairs) + 1]
        for ax in (ax_image, ax_cam):
            _show_image(ax, image)
            ax.axis("on")
        ax_image.set_title("/".join(Path(name).parts[-2:]), fontsize=8)
        ax_cam.imshow(heat(cam)[..., :3], alpha=0.5, interpolation="bilinear")
        ax_cam.set_title(f"{top['label']} {top['probability']:.0%}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def plot_feature_maps(
    image: np.ndarray, layers: Sequence[tuple[str, np.ndarray]], out: Path, title: str, channels: int
) -> Path:
    """The image, then a row per layer: its label and the first `channels` maps of its output
    ((k, h, w) each), each map coloured over its own range (yellow: its highest)."""
    rows, cols = 1 + len(layers), max(1, channels)
    width = 1.0 * cols + 1.2
    title = _wrap(title, width)
    fig = _figure(width, 1.05 * rows + 0.2 + 0.2 * (title.count("\n") + 1))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show_image(axes[0, 0], image)
    axes[0, 0].axis("on")
    axes[0, 0].set_ylabel(f"input\n{'x'.join(map(str, image.shape))}", rotation=0, ha="right", va="center", fontsize=8)
    for row, (label, maps) in enumerate(layers, start=1):
        for col, plane in enumerate(maps[:cols]):
            ax = axes[row, col]
            ax.imshow(plane, cmap="viridis", interpolation="nearest")
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def _grid(n: int, max_cols: int, cell: tuple[float, float], title: str):
    """A figure of about-square rows x cols panels (inches per panel: `cell`), all switched off
    until drawn on; returns (figure, the panels in reading order)."""
    cols = min(max_cols, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    fig = _figure(cell[0] * cols, cell[1] * rows + (0.4 if title else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def plot_image_grid(images: Sequence[np.ndarray], labels: Sequence[str], out: Path, title: str = "") -> Path:
    """A labelled grid of images (each (H, W, C) or (C, H, W) uint8)."""
    fig, panels = _grid(len(images), 8, (1.6, 1.8), title)
    for ax, image, label in zip(panels, images, labels, strict=False):
        _show_image(ax, image)
        ax.axis("on")
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_columns(table, out: Path, title: str, limit: int) -> Path:
    """Each column of a table (a pandas DataFrame) over its index, one panel each, the first
    `limit` of them; gaps (NaN) stay gaps."""
    columns = list(table.columns)[:limit]
    fig = _figure(11, 1.2 + 1.8 * len(columns))
    axes = fig.subplots(len(columns), 1, squeeze=False, sharex=True)[:, 0]
    for ax, column in zip(axes, columns, strict=True):
        ax.plot(table.index, table[column].to_numpy(dtype=float), linewidth=0.8, color="black")
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_sequence_grid(
    sequences: Sequence[np.ndarray],
    labels: Sequence[str],
    out: Path,
    title: str = "",
    feature_names: Sequence[str] | None = None,
) -> Path:
    """A labelled grid of sequences (each (T, F)): one panel each, one line per feature."""
    fig, panels = _grid(len(sequences), 4, (3.2, 2.2), title)
    for ax, seq, label in zip(panels, sequences, labels, strict=False):
        ax.axis("on")
        for f in range(seq.shape[1]):
            ax.plot(seq[:, f], linewidth=0.9, label=feature_names[f] if feature_names else f"feature {f}")
        ax.set_title(f"{label} ({len(seq)} steps)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if sequences and sequences[0].shape[1] <= 6:
        panels[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_forecast(
    times: Sequence[Any],
    values: np.ndarray,
    test_start: int,
    forecasts: dict[str, list[tuple[int, np.ndarray]]],
    out: Path,
    *,
    title: str = "",
    ylabel: str = "",
    history: int | None = None,
) -> Path:
    """The series (history and truth), the test span shaded, and each model's forecasts drawn
    from their origins: `forecasts[name]` is a list of (origin row, values (horizon,)). A test span
    too long to read (hourly data: 8,760 steps) gets a second panel with its first ZOOM steps."""
    n = len(values)
    zoomed = n - test_start > 2 * ZOOM
    fig = _figure(11, 7.5 if zoomed else 4.5)
    ax = fig.add_subplot(2, 1, 1) if zoomed else fig.add_subplot()
    start = max(0, test_start - (history if history is not None else 3 * (n - test_start)))
    _draw_forecast(ax, times, values, test_start, forecasts, start, n)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if zoomed:
        zoom = fig.add_subplot(2, 1, 2)
        _draw_forecast(zoom, times, values, test_start, forecasts, max(0, test_start - ZOOM // 4), test_start + ZOOM)
        zoom.set_ylabel(ylabel)
        zoom.set_title(f"the first {ZOOM} steps of the test span", fontsize=10)
    return _save(fig, out)


ZOOM = 240  # steps in the close-up of a long test span (10 days of hourly data)


def _draw_forecast(ax, times, values, test_start, forecasts, lo: int, hi: int) -> None:
    """Rows lo..hi-1 of the series and of the forecasts, on one axis."""
    ax.plot(times[lo:test_start], values[lo:test_start], color="black", lw=1.2, label="history")
    ax.plot(
        times[test_start - 1 : hi], values[test_start - 1 : hi], color="black", lw=1.2, ls="--", label="truth (test)"
    )
    ax.axvspan(times[test_start], times[hi - 1], color="0.92", zorder=0)
    for i, (name, paths) in enumerate(forecasts.items()):
        if all(len(path) == 1 for _, path in paths):  # one-step forecasts: one line through them all
            paths = [(paths[0][0], np.concatenate([path for _, path in paths]))] if paths else []
        labelled = False
        for origin, path in paths:
            stop = min(origin + len(path), hi)
            if origin >= hi or stop <= lo:
                continue
            first = max(origin, lo)
            label = None if labelled else name
            ax.plot(times[first:stop], path[first - origin : stop - origin], color=f"C{i}", lw=1.2, label=label)
            labelled = True
    if isinstance(times[lo], date):  # pandas Timestamps too; ticks that do not collide at any span
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)


def plot_future(
    times: Sequence[Any],
    values: np.ndarray,
    future_times: Sequence[Any],
    future: np.ndarray,
    out: Path,
    *,
    title: str,
    ylabel: str,
) -> Path:
    """The end of the series and the forecast of the steps after it."""
    fig = _figure(11, 4)
    ax = fig.add_subplot()
    ax.plot(times, values, color="black", lw=1.2, label="history")
    ax.plot([times[-1], *future_times], [values[-1], *future], color="C3", lw=1.8, marker="o", ms=3, label="forecast")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title)
    return _save(fig, out)
