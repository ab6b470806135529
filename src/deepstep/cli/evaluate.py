"""deepstep evaluate: measure a trained run on its test part (once) or its validation part."""

from __future__ import annotations

import argparse

from deepstep.cli.common import formatter, print_json, progress_enabled

EXAMPLES = """\
examples:
  deepstep evaluate runs/lenet-cifar10-sample            # test part, once per run
  deepstep evaluate runs/lenet-cifar10-sample --split val --json

Writes RUN/test.json (or val.json), RUN/confusion_test.png and RUN/confusion_test.csv.
Every test evaluation is recorded in RUN/evaluations.json; a second one needs --force.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="loss, accuracy, per-class accuracy, confusion matrix on test (once) or val",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run folder written by `deepstep train`")
    parser.add_argument("--split", default="test", choices=("test", "val"), help="default test")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="default best (by val accuracy)")
    parser.add_argument("--tta", action="store_true", help="average each image's logits with its mirror image's")
    parser.add_argument("--force", action="store_true", help="evaluate the test part again (recorded)")
    parser.add_argument("--data-dir", metavar="DIR", help="data cache, if not the one used in training")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.tasks.image_classification import evaluate_run

    quiet = args.json
    result = evaluate_run(
        args.run_dir,
        args.split,
        force=args.force,
        checkpoint=args.checkpoint,
        tta=args.tta,
        data_dir=args.data_dir,
        log=(lambda m: None) if quiet else print,
        progress=progress_enabled(args) and not quiet,
    )
    if args.json:
        print_json(result)
        return 0
    print(
        f"{args.split}: accuracy {result['accuracy']:.2%}  loss {result['loss']:.4f}  ({result['images']} images, {result['checkpoint']} checkpoint, epoch {result['epoch']})"
    )
    width = max(len(c) for c in result["classes"])
    for name, acc in result["per_class_accuracy"].items():
        print(f"  {name:<{width}}  {acc:.2%}" if acc is not None else f"  {name:<{width}}  (no images)")
    print(f"written: {result['files']['json']}, {result['files']['confusion_png']}, {result['files']['confusion_csv']}")
    return 0
