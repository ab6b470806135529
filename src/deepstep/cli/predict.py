"""deepstep predict: class and softmax probabilities for new images, with the run's pre-processing."""

from __future__ import annotations

import argparse

from deepstep.cli.common import formatter, print_json

EXAMPLES = """\
examples:
  deepstep predict runs/lenet-cifar10-sample cat.jpg
  deepstep predict runs/lenet-cifar10-sample photos/ --top-k 3 --json
  deepstep predict runs/lenet-cifar10-sample cat.jpg --plot cat-prediction.png
  deepstep predict --model vgg16 --pretrained photo.jpg     # ImageNet's 1000 classes

Grayscale, RGBA and palette images are converted to what the model takes.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify images with a trained run",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument(
        "inputs",
        metavar="[RUN] IMAGE_OR_FOLDER",
        nargs="+",
        help="a run folder written by `deepstep train` (not with --model), then image files and/or folders",
    )
    parser.add_argument("--model", metavar="M", help="with --pretrained: a torchvision model with ImageNet weights")
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="use --model's ImageNet weights and their pre-processing (`deepstep models --pretrained`)",
    )
    parser.add_argument(
        "--top-k", type=int, default=5, metavar="K", help="how many classes to list per image (default 5)"
    )
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--tta", action="store_true", help="average each image's logits with its mirror image's")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list: file, label, top_k [{label, probability}]"
    )
    parser.add_argument(
        "--plot", metavar="OUT.png", help="draw each image beside a bar chart of its top-k probabilities"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.errors import DeepstepError
    from deepstep.tasks.image_classification import predict_pretrained, predict_run

    if args.pretrained != (args.model is not None):
        raise DeepstepError("--model and --pretrained go together: `deepstep predict --model vgg16 --pretrained PHOTO`")
    if args.pretrained:
        results = predict_pretrained(args.model, args.inputs, top_k=args.top_k, plot=args.plot, tta=args.tta)
    elif len(args.inputs) < 2:
        raise DeepstepError(
            f"give a run folder and at least one image: `deepstep predict RUN IMAGE` (got {args.inputs[0]!r})"
        )
    else:
        results = predict_run(
            args.inputs[0], args.inputs[1:], top_k=args.top_k, checkpoint=args.checkpoint, plot=args.plot, tta=args.tta
        )
    if args.json:
        print_json(results)
    else:
        for r in results:
            ranked = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top_k"])
            print(f"{r['file']}: {r['label']}  ({ranked})")
    if args.plot and not args.json:
        print(f"plot: {args.plot}")
    return 0
