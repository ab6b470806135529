"""deepstep compare: runs side by side: the options they were trained with where these differ,
their best validation epoch, their test result where it was measured, and their validation
(solid) and training (dashed) curves on one picture. Choose between runs by validation: the
test part is measured once, for the run chosen."""

from __future__ import annotations

import argparse
import sys

from deepstep.cli.common import formatter, print_json

EXAMPLES = """\
examples:
  deepstep compare runs/lr-0.1 runs/lr-0.01                    # -> compare.png
  deepstep compare runs/* --out sweep.png --x seconds          # curves against seconds of training
  deepstep compare runs/a runs/b --json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="runs side by side: differing options, best validation, test, curves on one picture",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("runs", metavar="RUN", nargs="+", help="run folders written by `deepstep train` (one task)")
    parser.add_argument("--out", metavar="OUT.png", default="compare.png", help="the picture (default compare.png)")
    parser.add_argument(
        "--x", choices=("epoch", "seconds"), default="epoch", help="the curves' x axis: epoch or seconds of training"
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(run=run)


# What makes two runs' validation parts the same, by task.
SAME_PART = {
    "image-classification": "the same data, --val-split and --seed",
    "sequence-classification": "the same data, --test-size, --val-size and --seed",
    "forecasting": "the same data, --val-size, --test-size and --horizon",
}


def _number(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if percent else f"{value:.4g}"


def run(args: argparse.Namespace) -> int:
    from deepstep.tasks.compare import compare_runs

    result = compare_runs(args.runs, args.out, args.x)
    for path in result["skipped"]:
        print(f"note: left out {path}: not a run folder (no run.json)", file=sys.stderr)
    if args.json:
        print_json(result)
        return 0
    forecasting = result["task"] == "forecasting"
    best = "best val loss" if forecasting else "best val acc"
    parts = result["val_parts"] if len(result["val_parts"]) > 1 else {}
    table = [("run", "model", "epochs", best, *(["val part"] if parts else []), "train s", "test")]
    options = [k for k in result["differing"] if k != "model"]  # the model has its column
    table[0] += tuple(f"--{k}" for k in options)
    for r in result["runs"]:
        value = r["best_val_loss"] if forecasting else r["best_val_acc"]
        at = f" @ {r['best_epoch']}" if value is not None and r["best_epoch"] is not None else ""
        test = r["test"]
        if test is None:
            shown = "not measured"
        elif forecasting:
            mape = test.get("mape")
            shown = f"MAE {_number(test.get('mae'))}" + (f", MAPE {mape:.2f}%" if mape is not None else "")
        else:
            shown = _number(test.get("accuracy"), percent=True)
        table.append(
            (
                r["run"],
                str(r["model"]),
                str(r["epochs"]),
                _number(value, percent=not forecasting) + at,
                *([r["val_part"] or "-"] if parts else []),
                _number(r["train_seconds"]),
                shown,
                *("-" if r["options"][k] is None else str(r["options"][k]) for k in options),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    if not result["differing"] and len(result["runs"]) > 1:
        print("(the runs' options are the same)")
    if parts:
        print(
            f"the runs were validated on {len(parts)} different parts, so their validation numbers differ by the "
            f"examples as well as by the training (runs share a part with {SAME_PART[result['task']]}):"
        )
        for letter, part in parts.items():
            print(f"  {letter}  {part}")
    if result["picture"]:
        print(f"curves: {result['picture']}")
    return 0
