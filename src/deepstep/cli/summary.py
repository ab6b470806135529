"""deepstep summary: how every layer changes the tensor, with the output-size formula
(H + 2P - FH)/S + 1 filled in for each convolution and pooling, and the model's totals."""

from __future__ import annotations

import argparse

from deepstep.cli.common import add_model_file, formatter, key_value, print_json
from deepstep.errors import DeepstepError

EXAMPLES = """\
examples:
  deepstep summary lenet                       # its declared input, 3x32x32
  deepstep summary simple-cnn --input 1x20x20
  deepstep summary simple-cnn 1x20x20          # the same
  deepstep summary lenet --input 3x64x64       # names the first layer that does not fit
  deepstep summary runs/lenet-cifar10-sample   # a trained run's model and input
  deepstep summary vgg16 --json
  deepstep summary airbench --model-arg width=24       # a model argument, as train takes it
  deepstep summary runs/lenet-cifar10-sample --image cat.jpg --plot maps.png   # what each layer makes of it
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "summary",
        help="layer-by-layer shapes, parameters and size formulas",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("model", metavar="MODEL_OR_RUN", help="a registered model name or a run folder")
    parser.add_argument("size", metavar="SIZE", nargs="?", help="the same as --input SIZE")
    parser.add_argument(
        "--input", metavar="SIZE", help="one example's size, e.g. 3x32x32 (default: the declared input)"
    )
    parser.add_argument(
        "--model-arg",
        dest="model_args",
        metavar="KEY=VALUE",
        type=key_value,
        action="append",
        default=[],
        help="a model argument, as for train, e.g. width=32 (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--image",
        metavar="FILE",
        help="a run folder's model: also draw what each convolution and pooling layer makes of this image",
    )
    parser.add_argument("--plot", metavar="OUT.png", help="--image: where to draw it (default feature-maps.png)")
    parser.add_argument(
        "--channels", type=int, metavar="N", help="--image: how many feature maps of each layer to draw (default 8)"
    )
    add_model_file(parser, "a model of your own (or a run of one)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.api import summary
    from deepstep.models.shapes import format_size

    if args.size and args.input and args.size != args.input:
        raise DeepstepError(f"two input sizes, {args.size} and --input {args.input}: give one")
    if args.image is None and (args.plot or args.channels is not None):
        raise DeepstepError(f"{'--plot' if args.plot else '--channels'} goes with --image FILE, the image to draw")
    if args.image is not None:
        from pathlib import Path

        from deepstep.plots import picture_path

        if not Path(args.model).is_dir():
            raise DeepstepError(f"--image draws a trained model's feature maps: give a run folder, not {args.model!r}")
        if args.input or args.size or args.model_args:
            raise DeepstepError("--image uses the run's own input size and model: leave out --input and --model-arg")
        args.plot = picture_path(args.plot or "feature-maps.png")  # checked before the model is loaded
    result = summary(args.model, args.input or args.size, **dict(args.model_args))
    if args.image is not None:
        from deepstep.tasks.image_classification import draw_feature_maps

        drawn = draw_feature_maps(
            args.model, args.image, args.plot, channels=8 if args.channels is None else args.channels
        )
    if args.json:
        print_json({**result.to_dict(), **({"feature_maps": str(drawn)} if args.image is not None else {})})
        return 0
    table = [("layer", "type", "output shape", "parameters", "output size")]
    for r in result.rows:
        table.append((r.name, r.kind, format_size(r.output_shape), f"{r.parameters:,}", r.formula))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    print(f"{result.model} on {format_size(result.input_size)} (one example; the batch dimension is left out)")
    for i, row in enumerate(table):
        print(
            "  ".join(
                [
                    row[0].ljust(widths[0]),
                    row[1].ljust(widths[1]),
                    row[2].ljust(widths[2]),
                    row[3].rjust(widths[3]),
                    row[4],
                ]
            ).rstrip()
        )
        if i == 0:
            print("-" * (sum(widths) + 6 + max(len(r[4]) for r in table)))
    print(f"\nparameters:           {result.parameters:,}")
    print(f"trainable parameters: {result.trainable_parameters:,}")
    print(f"multiply-adds:        {result.mult_adds:,} ({result.mult_adds / 1e6:.2f} M)")
    print(f"activation memory:    {result.activation_bytes / 2**20:.2f} MiB (fp32 layer outputs, one example)")
    if args.image is not None:
        print(f"feature maps of {args.image}: {drawn}")
    return 0
