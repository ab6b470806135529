"""The `deepstep` command: one small module per subcommand, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from deepstep import __version__

COMMANDS = (
    "quickstart",
    "train",
    "evaluate",
    "predict",
    "baseline",
    "show",
    "summary",
    "compare",
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


# OSErrors that are the machine's state (a full disk, a read-only or forbidden place), reported in
# one line; any other OSError is a defect and keeps its traceback.
MACHINE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, the problem and where the help is,
    instead of the whole usage (30 lines for train) above it. Subcommands inherit the class.

    Options are not matched by their beginnings: `evaluate --data X` must not quietly mean
    `--data-dir X`, and a new option must not change what an old abbreviation meant."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        from deepstep.errors import did_you_mean

        if choice := re.match(r"(argument .*: invalid choice: '(.*)') \(choose from (.*)\)$", message):
            head, given, listed = choice.groups()  # Python 3.12.8+ lists the choices without quotes
            choices = [c.strip("'") for c in listed.split(", ")]
            message = f"{head}{did_you_mean(given, choices)}; choose from {', '.join(choices)}"
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="deepstep", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"deepstep {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"deepstep.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a deepstep command; user errors print one line and return 2."""
    from deepstep.errors import DeepstepError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["help"]:  # `deepstep help [COMMAND]`, as git and pip take it
        argv = [*argv[1:2], "--help"]
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = _subcommands(parser)[args.command]
        # `predict RUN --top-k 3 a.jpg`: argparse leaves the files after an option over, unless
        # the command's own arguments are parsed intermixed
        args, unknown = command.parse_known_intermixed_args(argv[argv.index(args.command) + 1 :])
        args.command = command.prog.split()[-1]
    if unknown:  # reported by the subcommand, whose options are the ones a typo was meant to be
        command.error(f"unrecognized arguments: {' '.join(unknown)}{_closest_option(unknown, command, args, argv)}")
    try:
        if getattr(args, "model_file", None):  # the user's own models, registered before anything looks for them
            from deepstep.models import load_model_file

            load_model_file(args.model_file)
        return args.run(args) or 0
    except DeepstepError as err:
        print(f"deepstep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `deepstep ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except OSError as err:
        if err.errno not in MACHINE_ERRORS:
            raise
        # a full disk or a folder that may not be written: the machine's answer, not a bug to trace
        where = f"{err.filename}: " if err.filename else ""
        print(f"deepstep {args.command}: error: {where}{err.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"deepstep {args.command}: interrupted; finished checkpoints are kept (train --resume continues)",
            file=sys.stderr,
        )
        return 130


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _closest_option(
    unknown: Sequence[str], command: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]
) -> str:
    """' (did you mean '--schedule'?)' for the first unknown --option close to one the command has;
    for a value after a flag that takes none (`--resume RUN`), that it takes none; for `train
    data.csv`, where the data goes."""
    from deepstep.errors import did_you_mean

    options = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
    for token in unknown:
        if token.startswith("--"):
            return did_you_mean(token.split("=")[0], options)
    flags = {o for a in command._actions for o in a.option_strings if a.nargs == 0}
    before = argv[argv.index(unknown[0]) - 1] if unknown[0] in argv[1:] else None
    if before in flags and before not in ("-h", "--help"):
        where = f"; the run is the folder --out names: --out {unknown[0]} --resume" if before == "--resume" else ""
        return f" ({before} takes no value{where})"
    if "--data" in options and getattr(args, "data", None) is None and not unknown[0].startswith("-"):
        return f" (the data is given as --data {unknown[0]})"
    return ""
