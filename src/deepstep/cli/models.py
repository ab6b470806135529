"""deepstep models: every registered model, its parameters and the input it declares."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepstep.cli.common import add_model_file, formatter, print_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the models",
        description=__doc__,
        epilog="""examples:
  deepstep models                  # every model, its parameters and declared input
  deepstep models 'resnet*'
  deepstep models --pretrained     # torchvision models with ImageNet weights and their top-1 accuracy
""",
        formatter_class=formatter,
    )
    parser.add_argument("pattern", nargs="?", default="*", help="glob on model names, e.g. 'vgg*'")
    parser.add_argument("--pretrained", action="store_true", help="list the torchvision models with ImageNet weights")
    parser.add_argument("--json", action="store_true")
    add_model_file(parser, "list your own models too")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.api import list_models, list_pretrained

    rows = list_pretrained(args.pattern) if args.pretrained else list_models(args.pattern)
    if not rows and not args.json:  # an empty table reads as a broken listing
        from deepstep.errors import DeepstepError

        listing = "deepstep models" + (" --pretrained" if args.pretrained else "")
        raise DeepstepError(f"no model matches {args.pattern!r}; `{listing}` lists them all")
    if args.pretrained:
        return _print_pretrained(rows, args.json)
    if args.json:
        print_json(rows)
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'model':<{width}}  {'parameters':>12}  {'input':<10}  description")
    for r in rows:
        size = "x".join(str(s) for s in r["input_size"])
        source = f" ({Path(r['file']).name})" if r.get("file") else ""  # one of the user's, from this file
        print(f"{r['name']:<{width}}  {r['parameters']:>12,}  {size:<10}  {r['description']}{source}")
    print("\nparameters are counted at each model's default number of classes; training sizes the head to the data.")
    return 0


def _print_pretrained(rows: list[dict], as_json: bool) -> int:
    if as_json:
        print_json(rows)
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'model':<{width}}  {'parameters':>12}  {'acc@1':>6}  {'input':<9}  weights")
    for r in rows:
        acc = f"{r['imagenet_acc1']:.1f}" if r["imagenet_acc1"] is not None else "-"
        size = "x".join(str(s) for s in r["input_size"])
        print(f"{r['name']:<{width}}  {r['parameters']:>12,}  {acc:>6}  {size:<9}  {r['weights']}")
    print(
        "\nacc@1: ImageNet-1K top-1 accuracy from the weights' metadata. Classify photos with "
        "`deepstep predict --model NAME --pretrained PHOTO`; fine-tune with `deepstep train --model NAME --pretrained`"
        " (the models also listed by `deepstep models`)."
    )
    return 0
