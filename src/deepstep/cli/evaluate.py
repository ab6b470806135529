"""deepstep evaluate: measure a trained run on its test part (once) or its validation part, or a
classifier on all of other labelled data."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from deepstep.cli.common import (
    add_model_file,
    add_tta_options,
    formatter,
    print_json,
    progress_enabled,
    refuse_options,
    tta_from_flags,
)
from deepstep.config import DEVICES, PRECISIONS

EXAMPLES = """\
examples:
  deepstep evaluate runs/lenet-cifar10-sample            # test part, once per run
  deepstep evaluate runs/lenet-cifar10-sample --split val --json
  deepstep evaluate runs/lenet-cifar10-sample --split all --data new-photos/   # every image of other data

  deepstep evaluate runs/lstm-airline-passengers --baselines --json   # forecasting, beside naive / SARIMA
  deepstep evaluate runs/lstm-airline-passengers --backtest             # a forecast from every test step

Writes RUN/test.json (or val.json, all.json) and plots: the confusion matrix (classification) and, for
images, the 16 mistakes with the highest loss (mistakes_test.png), or the forecasts over the test span
(forecasting). Every test evaluation is recorded in RUN/evaluations.json; a second one needs --force.
"""


def _order(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected three whole numbers p,d,q such as 1,1,1, got {text!r}")
    return values


def _baselines(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_forecast_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """The options of the classical baselines, shared with `deepstep baseline`."""
    parser.add_argument(
        "--baselines",
        nargs="?",
        type=_baselines,
        const=True,
        default=default,
        metavar="NAME,NAME",
        help="forecasting: naive, seasonal_naive and sarima on the same origins (default all of them when given)",
    )
    parser.add_argument(
        "--backtest", action="store_true", help="forecasting: forecast from every step of the span (rolling origin)"
    )
    parser.add_argument(
        "--order", type=_order, metavar="p,d,q", help="forecasting: the ARIMA order (default: lowest AIC over a grid)"
    )
    parser.add_argument(
        "--seasonal-order",
        type=_order,
        metavar="P,D,Q",
        help="forecasting: the SARIMA seasonal order (period: --season)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure a run on its test part (once) or val: accuracy and confusion matrix, or forecast errors",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run folder written by `deepstep train`")
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "all"),
        help="default test; all: every example of other labelled data given with --data (classifiers)",
    )
    parser.add_argument(
        "--checkpoint", default="best", choices=("best", "last"), help="default best (by the run's --monitor)"
    )
    add_tta_options(parser)
    parser.add_argument("--force", action="store_true", help="evaluate the test part again (recorded)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="images: as train's --precision (default 32; bf16 is about 3x faster on CPUs with AMX)",
    )
    parser.add_argument("--device", choices=DEVICES, help="images: default auto (cuda, then mps, then cpu)")
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="where the run's data is now, if it moved since training (its content is checked); "
        "with --split all, the other data to score",
    )
    parser.add_argument(
        "--labels",
        metavar="FILE.csv",
        help="images: the CSV naming each image's class (as train's --labels), for --data in another place",
    )
    parser.add_argument("--data-dir", metavar="DIR", help="data cache, if not the one used in training")
    parser.add_argument(
        "--gradcam",
        action="store_true",
        help="images: also draw the mistakes under their Grad-CAM maps for the class said "
        "(mistakes_gradcam_SPLIT.png): where the evidence that misled the model lies",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_file(parser, "a run of your own model")
    add_forecast_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.tasks import run_task

    task = run_task(args.run_dir)
    images = ("tta", "tta_translate", "precision", "device", "gradcam", "labels")
    forecast = ("baselines", "backtest", "order", "seasonal_order")
    unused = {"image-classification": forecast, "forecasting": images, "sequence-classification": images + forecast}
    refuse_options(args, unused[task], args.run_dir, task)
    if task == "forecasting":
        return _run_forecast(args)
    if task == "sequence-classification":
        return _run_sequences(args)
    from deepstep.tasks.image_classification import evaluate_run

    quiet = args.json
    result = evaluate_run(
        args.run_dir,
        args.split,
        force=args.force,
        checkpoint=args.checkpoint,
        tta=tta_from_flags(args),
        data_dir=args.data_dir,
        data=args.data,
        precision=args.precision,
        device=args.device,
        log=(lambda m: None) if quiet else print,
        progress=progress_enabled(args) and not quiet,
        gradcam=args.gradcam,
        labels=args.labels,
    )
    if args.json:
        print_json(result)
        return 0
    print(
        f"{args.split}: accuracy {result['accuracy']:.2%}  {_f1_summary(result)}  loss {result['loss']:.4f}  "
        f"({result['images']} images, {result['checkpoint']} checkpoint, epoch {result['epoch']}, "
        f"precision {result['device']['precision']})"
    )
    _print_per_class(result["per_class"], "images")
    print(f"written: {', '.join(result['files'].values())}")
    return 0


def _f1_summary(result: dict) -> str:
    """'macro F1 0.873', or for two classes the positive class's F1 and the ROC AUC."""
    if "positive_class" in result:
        auc = f"  ROC AUC {result['roc_auc']:.3f}" if result.get("roc_auc") is not None else ""
        return f"F1 {result['f1']:.3f} ({result['positive_class']} as positive){auc}"
    top5 = f"  top-5 accuracy {result['top5_accuracy']:.2%}" if "top5_accuracy" in result else ""
    return f"macro F1 {result['macro_f1']:.3f}{top5}"


def _print_per_class(per_class: dict[str, dict], unit: str) -> None:
    """Each class's accuracy (its recall: the share of its examples called it), precision (the
    share of the examples called it that are it), F1 and number of examples."""
    width = max(len("class"), *(len(c) for c in per_class))
    print(f"  {'class':<{width}}  accuracy (recall)  precision     F1  {unit}")
    for name, s in per_class.items():
        if not s["support"]:
            print(f"  {name:<{width}}  (no {unit})")
            continue
        print(
            f"  {name:<{width}}  {s['recall']:>17.2%}  {s['precision']:>9.3f}  {s['f1']:.3f}  {s['support']:>{len(unit)}}"
        )


def _run_forecast(args: argparse.Namespace) -> int:
    from deepstep.tasks.forecasting import evaluate_run

    result = evaluate_run(
        args.run_dir,
        args.split,
        force=args.force,
        checkpoint=args.checkpoint,
        baselines=False if args.baselines is None else args.baselines,  # [] (--baselines ""): refused by name
        backtest=args.backtest,
        order=args.order,
        seasonal_order=args.seasonal_order,
        data=args.data,
        log=(lambda m: None) if args.json else print,
    )
    if args.json:
        print_json(result)
        return 0
    print(
        f"{args.split}: {result['origins']} forecast(s) of {result['horizon']} step(s) of {result['target']} from "
        f"{result['first_origin']}" + (" (rolling origin)" if result["backtest"] else "")
    )
    print_forecast_table(
        {"model": result["model"], **result.get("baselines", {})},
        result.get("baseline_notes", {}),
        result["metric_notes"],
    )
    print(f"written: {result['files']['json']}, {result['files']['plot']}")
    return 0


def print_forecast_table(rows: dict, notes: dict, metric_notes: Sequence[str] = ()) -> None:
    """The metrics of each forecast, one row each; a metric that is not defined reads n/a, and
    `metric_notes` say why."""

    def cell(value: float, spec: str, width: int) -> str:
        return f"{value:>{width}{spec}}" if math.isfinite(value) else f"{'n/a':>{width}}"

    print(f"  {'':<16}{'MAE':>10}{'RMSE':>10}{'MAPE %':>9}{'sMAPE %':>9}{'MASE':>7}")
    for name, m in rows.items():
        print(
            f"  {name:<16}{m['mae']:>#10.4g}{m['rmse']:>#10.4g}"
            + cell(m["mape"], ".2f", 9)
            + cell(m["smape"], ".2f", 9)
            + cell(m["mase"], ".3f", 7)
        )
    for line in metric_notes:
        print(f"  {line}")
    for name, note in notes.items():
        if isinstance(note, dict):
            tried = note["orders_tried"]
            note = f"{note['model']} (AIC {note['aic']:.1f}, {tried} order{'s' if tried > 1 else ''} tried)"
        print(f"  {name}: {note}")


def _run_sequences(args: argparse.Namespace) -> int:
    from deepstep.tasks.sequence_classification import evaluate_run

    result = evaluate_run(
        args.run_dir,
        args.split,
        force=args.force,
        checkpoint=args.checkpoint,
        data_dir=args.data_dir,
        data=args.data,
        log=(lambda m: None) if args.json else print,
    )
    if args.json:
        print_json(result)
        return 0
    auc = f"  ROC AUC {result['roc_auc']:.3f}" if result.get("roc_auc") is not None else ""
    print(
        f"{args.split}: accuracy {result['accuracy']:.2%}  precision {result['precision']:.3f}  recall {result['recall']:.3f}  "
        f"F1 {result['f1']:.3f}{auc}  loss {result['loss']:.4f}  ({result['sequences']} sequences)"
    )
    _print_per_class(result["per_class"], "sequences")
    print(f"written: {', '.join(result['files'].values())}")
    return 0
