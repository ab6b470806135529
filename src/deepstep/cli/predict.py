"""deepstep predict: class and softmax probabilities for new images (or sequences), with the run's
pre-processing; for a forecasting run, the steps after the end of its data."""

from __future__ import annotations

import argparse
import sys

from deepstep.cli.common import add_model_file, add_tta_options, formatter, print_json, refuse_options, tta_from_flags
from deepstep.config import DEVICES, PRECISIONS

EXAMPLES = """\
examples:
  deepstep predict runs/lenet-cifar10-sample cat.jpg
  deepstep predict runs/lenet-cifar10-sample photos/ --top-k 3 --json
  deepstep predict runs/lenet-cifar10-sample cat.jpg --plot cat-prediction.png
  deepstep predict runs/lenet-cifar10-sample cat.jpg --gradcam cat-cam.png    # where it saw the class
  deepstep predict --model vgg16 --pretrained photo.jpg     # ImageNet's 1000 classes
  deepstep predict runs/lstm-airline-passengers             # forecast: the next --horizon steps, CSV + plot
  deepstep predict runs/lstm-IndoorMovement seq_1.csv       # a sequence CSV: rows = time steps
  deepstep predict runs/lstm-IndoorMovement new-moves/      # every ..._<id>.csv in a folder
  deepstep predict runs/lstm-moves new.npz                  # each sequence of an .npz's X (and lengths)

Grayscale, RGBA and palette images are converted to what the model takes.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify images or sequences with a trained run, or forecast past the data",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument(
        "inputs",
        metavar="[RUN] INPUT",
        nargs="+",
        help="a run folder written by `deepstep train` (not with --model), then image files and/or folders "
        "(sequence CSVs or folders of them for a sequence run; nothing for a forecasting run)",
    )
    parser.add_argument("--model", metavar="M", help="with --pretrained: a torchvision model with ImageNet weights")
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="use --model's ImageNet weights and their pre-processing (`deepstep models --pretrained`)",
    )
    parser.add_argument("--top-k", type=int, metavar="K", help="images: how many classes to list per image (default 5)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    add_model_file(parser, "a run of your own model")
    add_tta_options(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="images: as train's --precision (default 32; bf16 is 2-3x faster for big models on CPUs with AMX)",
    )
    parser.add_argument("--device", choices=DEVICES, help="images: default auto (cuda, then mps, then cpu)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="images: stop at an unreadable image in a folder instead of skipping it with a warning "
        "(an image named is always read or refused)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list: file, label, top_k [{label, probability}]"
    )
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        help="draw each image (the first 12) beside a bar chart of its top-k probabilities (forecast: the plot)",
    )
    parser.add_argument(
        "--gradcam",
        metavar="OUT.png",
        help="images: draw each image (the first 12) under its Grad-CAM map, where the evidence for its "
        "predicted class lies",
    )
    parser.add_argument(
        "--gradcam-layer",
        metavar="NAME",
        help="--gradcam: the layer whose feature maps it weighs, as `deepstep summary` names it "
        "(default: the last whose output has a height and width)",
    )
    parser.add_argument(
        "--data", metavar="PATH", help="forecasting: where the run's series is now, if it moved since training"
    )
    parser.add_argument(
        "--out",
        metavar="FILE.csv",
        help="classifiers: a CSV of each input's class, its probability and every class's; "
        "forecasting: where to write the forecast (default RUN/forecast.csv)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.errors import DeepstepError
    from deepstep.tasks.image_classification import predict_pretrained, predict_run

    if args.pretrained != (args.model is not None):
        raise DeepstepError("--model and --pretrained go together: `deepstep predict --model vgg16 --pretrained PHOTO`")
    if not args.pretrained:
        from deepstep.tasks import run_task

        task = run_task(args.inputs[0])
        images_only = ("top_k", "tta", "tta_translate", "precision", "device", "strict", "gradcam", "gradcam_layer")
        unused = {
            "image-classification": ("data",),
            "forecasting": images_only,
            "sequence-classification": (*images_only, "plot", "data"),
        }
        refuse_options(args, unused[task], args.inputs[0], task)
        if task == "forecasting":
            return _forecast(args)
        if task == "sequence-classification":
            return _sequences(args)
    if args.gradcam_layer and not args.gradcam:
        raise DeepstepError("--gradcam-layer goes with --gradcam OUT.png, the picture it is for")
    from deepstep.plots import picture_path

    # checked, and named as they will be written, before any image is read
    args.plot = str(picture_path(args.plot)) if args.plot else None
    args.gradcam = str(picture_path(args.gradcam)) if args.gradcam else None
    options = {
        "top_k": args.top_k,
        "plot": args.plot,
        "tta": tta_from_flags(args),
        "precision": args.precision,
        "device": args.device,
        "strict": args.strict,
        "gradcam": args.gradcam,
        "gradcam_layer": args.gradcam_layer,
        "out": args.out,
        "log": _stderr if args.json else print,  # --json keeps stdout for the JSON alone
    }
    if args.pretrained:
        results = predict_pretrained(args.model, args.inputs, **options)
    elif len(args.inputs) < 2:
        raise DeepstepError(
            f"give a run folder and at least one image: `deepstep predict RUN IMAGE` (got {args.inputs[0]!r})"
        )
    else:
        results = predict_run(args.inputs[0], args.inputs[1:], checkpoint=args.checkpoint, **options)
    if args.json:
        print_json(results)
    else:
        for r in results:
            ranked = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top_k"])
            print(f"{r['file']}: {r['label']}  ({ranked})")
    if not args.json:
        from deepstep.tasks.image_classification import PLOT_MAX_IMAGES

        more = f" (the first {PLOT_MAX_IMAGES} of {len(results)} images)" if len(results) > PLOT_MAX_IMAGES else ""
        for what, path in (("plot", args.plot), ("grad-cam", args.gradcam)):
            if path:
                print(f"{what}: {path}{more}")
        if args.out:
            print(f"written: {args.out}")
    return 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _forecast(args: argparse.Namespace) -> int:
    from deepstep.errors import DeepstepError
    from deepstep.tasks.forecasting import predict_run

    if len(args.inputs) > 1:
        raise DeepstepError("a forecasting run predicts the steps after its own data: give only the run folder")
    result = predict_run(args.inputs[0], checkpoint=args.checkpoint, out=args.out, plot=args.plot, data=args.data)
    if args.json:
        print_json(result)
        return 0
    for note in result["notes"]:
        print(f"note: {note}")
    for row in result["forecast"]:
        print(f"{row['time']}  {result['target']} {row['value']:.6g}")
    print(f"written: {result['files']['csv']}, {result['files']['plot']}")
    return 0


def _sequences(args: argparse.Namespace) -> int:
    from deepstep.errors import DeepstepError
    from deepstep.tasks.sequence_classification import predict_run

    if len(args.inputs) < 2:
        raise DeepstepError("give the run folder and at least one sequence CSV or .npz: `deepstep predict RUN seq.csv`")
    results = predict_run(args.inputs[0], args.inputs[1:], checkpoint=args.checkpoint, out=args.out)
    if args.json:
        print_json(results)
        return 0
    for r in results:
        probs = ", ".join(f"{c} {p:.1%}" for c, p in r["probabilities"].items())
        where = f"{r['file']} sequence {r['sequence']}" if "sequence" in r else r["file"]
        print(f"{where}: {r['label']}  ({probs})")
    if args.out:
        print(f"written: {args.out}")
    return 0
