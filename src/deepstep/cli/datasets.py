"""deepstep datasets: the built-in datasets (any image folder or archive, CSV or sequence folder works too)."""

from __future__ import annotations

import argparse

from deepstep.cli.common import formatter, print_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="list the built-in datasets",
        description=__doc__,
        epilog="""examples:
  deepstep datasets
  deepstep datasets --json        # name, task and description of each
""",
        formatter_class=formatter,
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.api import list_datasets
    from deepstep.data.sources import data_cache_dir

    rows = list_datasets()
    if args.json:
        print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['description']}")
    print(
        f"\nAlso: --data FOLDER (train/<class>/*, test/<class>/*, or <class>/* with a carved test part),"
        f" or a .tar.gz/.zip of such a folder, or a folder of MNIST-format files (train-images-idx3-ubyte.gz"
        f" and the other three). Cache: {data_cache_dir()} (--data-dir, $DEEPSTEP_DATA)."
        "\nSequences: --data FILE.csv --target COL (forecasting), or a folder/.zip of one CSV per sequence"
        " with a labels CSV, or an .npz with X and y (sequence classification)."
    )
    return 0
