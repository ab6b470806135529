"""deepstep show: a labelled grid of images from a dataset split."""

from __future__ import annotations

import argparse

from deepstep.cli.common import formatter

EXAMPLES = """\
examples:
  deepstep show cifar10-sample --n 16 --out grid.png
  deepstep show ../shared/data/cifar10-jpeg.tar.gz --split test --n 32 --out test-grid.png
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="save a labelled grid of images from a dataset",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("data", metavar="DATA", help="built-in dataset, image folder or archive")
    parser.add_argument("--split", default="train", help="train, test (or val when the folder has one); default train")
    parser.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--out", default="grid.png", metavar="OUT.png", help="default grid.png")
    parser.add_argument("--data-dir", metavar="DIR", help="cache for downloads and unpacked archives")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.tasks.image_classification import show_images

    out = show_images(args.data, split=args.split, n=args.n, out=args.out, data_dir=args.data_dir)
    print(f"grid: {out}")
    return 0
