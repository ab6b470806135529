"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def key_value(text: str) -> tuple[str, Any]:
    """`--model-arg width=32` -> ("width", 32): the value is read as YAML (numbers, booleans)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip().replace("-", "_"), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip().replace("-", "_"), value


def add_model_file(parser: argparse.ArgumentParser, what: str) -> None:
    """--model-file: the Python file that registers the user's own models, imported before the command runs."""
    parser.add_argument(
        "--model-file",
        metavar="FILE.py",
        help=f"{what}: the Python file that registers it with @deepstep.register_model",
    )


def print_json(obj: Any) -> None:
    from deepstep.engine.files import json_text

    sys.stdout.write(json_text(obj) + "\n")


def progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def add_tta_options(parser: argparse.ArgumentParser) -> None:
    """--tta and --tta-translate, for evaluate and predict; read back by `tta_from_flags`."""
    parser.add_argument("--tta", action="store_true", help="average each image's logits with its mirror image's")
    parser.add_argument(
        "--tta-translate",
        action="store_true",
        help="--tta, and also average in the image moved one pixel up-left and one down-right, each mirrored too",
    )


def tta_from_flags(args: argparse.Namespace) -> str | None:
    """The test-time augmentation the flags ask for, by the name the Python API takes."""
    return "flip-translate" if args.tta_translate else "flip" if args.tta else None


def refuse_options(args: argparse.Namespace, names: Sequence[str], run: str, task: str) -> None:
    """A one-line error for options given that the run's task has no use for, rather than
    ignoring them silently (`names`: the options' dests, whose defaults are None or False)."""
    from deepstep.errors import DeepstepError

    given = ["--" + name.replace("_", "-") for name in names if getattr(args, name, None) not in (None, False)]
    if given:
        verb, it = ("does", "it") if len(given) == 1 else ("do", "them")
        raise DeepstepError(f"{', '.join(given)} {verb} not apply to {run} ({task}); leave {it} out")
