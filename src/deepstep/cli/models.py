"""deepstep models: every registered model, its parameters and the input it declares."""

from __future__ import annotations

import argparse

from deepstep.cli.common import formatter, print_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the models", description=__doc__, formatter_class=formatter)
    parser.add_argument("pattern", nargs="?", default="*", help="glob on model names, e.g. 'vgg*'")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.api import list_models

    rows = list_models(args.pattern)
    if args.json:
        print_json(rows)
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'model':<{width}}  {'parameters':>12}  {'input':<10}  description")
    for r in rows:
        size = "x".join(str(s) for s in r["input_size"])
        print(f"{r['name']:<{width}}  {r['parameters']:>12,}  {size:<10}  {r['description']}")
    print("\nparameters are counted at each model's default number of classes; training sizes the head to the data.")
    return 0
