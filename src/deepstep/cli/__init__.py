"""The `deepstep` command: one small module per subcommand, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from deepstep import __version__

COMMANDS = (
    "quickstart",
    "train",
    "evaluate",
    "predict",
    "baseline",
    "show",
    "summary",
    "export",
    "datasets",
    "models",
)

DESCRIPTION = """\
The deep-learning workflow from one command:
  data -> pre-processing -> model -> train + validate -> test once -> predict, with plots

  deepstep quickstart                                   # the whole workflow offline, ~1 minute
  deepstep train --data cifar10-sample --model lenet    # -> runs/lenet-cifar10-sample
  deepstep evaluate runs/lenet-cifar10-sample           # the test part, measured once
  deepstep predict runs/lenet-cifar10-sample cat.jpg --plot cat.png
  deepstep train --data airline.csv --target Passengers --lookback 24 --horizon 12   # an LSTM forecast
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepstep", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"deepstep {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"deepstep.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a deepstep command; user errors print one line and return 2."""
    from deepstep.errors import DeepstepError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except DeepstepError as err:
        print(f"deepstep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `deepstep ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(
            f"deepstep {args.command}: interrupted; finished checkpoints are kept (train --resume continues)",
            file=sys.stderr,
        )
        return 130
