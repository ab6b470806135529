"""deepstep show: look at the data before training: a labelled grid of images from a split, the
columns of a series over time, or a grid of labelled sequences."""

from __future__ import annotations

import argparse

from deepstep.cli.common import formatter, refuse_options

EXAMPLES = """\
examples:
  deepstep show cifar10-sample --n 16 --out grid.png
  deepstep show ../shared/data/cifar10-jpeg.tar.gz --split test --n 32 --out test-grid.png
  deepstep show airline-passengers.csv --out series.png       # each numeric column over time
  deepstep show IndoorMovement.zip --n 8 --out moves.png       # sequences, the classes taking turns
  deepstep show runs/lenet-cifar10-sample                      # the data a run trained on
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="save a picture of a dataset: an image grid, a series' columns, or labelled sequences",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="built-in dataset, image folder or archive, series CSV, or labelled sequences; or a run folder, "
        "for the data it trained on",
    )
    parser.add_argument("--data", dest="data_flag", metavar="D", help="DATA given as train takes it")
    parser.add_argument("--split", help="images: train, test (or val when the folder has one); default train")
    parser.add_argument("--n", type=int, default=16, help="number of images or sequences (default 16)")
    parser.add_argument("--out", default="grid.png", metavar="OUT.png", help="default grid.png")
    parser.add_argument("--time", metavar="COL[,COL]", help="series: the time column(s), if not inferred")
    parser.add_argument(
        "--labels", metavar="FILE.csv", help="images: the CSV naming each image's class, as train's --labels"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="cache for downloads and unpacked archives")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.errors import DeepstepError
    from deepstep.tasks import infer_task, show, trained_on

    if args.data is not None and args.data_flag is not None:
        raise DeepstepError(f"give the data once: {args.data} or --data {args.data_flag}")
    args.data = args.data if args.data is not None else args.data_flag
    if args.data is None:
        raise DeepstepError("give the data to show: `deepstep show cifar10-sample` (`deepstep datasets` lists more)")
    from deepstep.engine.run_dir import RunDir

    if RunDir(args.data).exists():  # the data it trained on, as deepstep.show(run) shows it
        saved = trained_on(args.data)
        args.data, args.data_dir = saved["data"], args.data_dir or saved["data_dir"]
        args.time, args.labels = args.time or saved["time"], args.labels or saved["labels"]
    task = infer_task(args.data)
    unused = {
        "image-classification": ("time",),
        "forecasting": ("split", "labels"),
        "sequence-classification": ("split", "time", "labels"),
    }
    refuse_options(args, unused[task], args.data, task)
    split = args.split or "train"
    out = show(
        args.data,
        split=split,
        n=args.n,
        out=args.out,
        data_dir=args.data_dir,
        time=args.time,
        task=task,
        labels=args.labels,
    )
    what = {"forecasting": "series", "sequence-classification": "sequences"}.get(task, "grid")
    print(f"{what}: {out}")
    return 0
