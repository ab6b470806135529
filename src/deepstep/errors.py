"""Errors a user can cause and fix. The CLI prints them on one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DeepstepError(Exception):
    """A problem with the user's input: the message names the input and what to do.

    The message is always one line: line breaks that come in with the input (a CSV column named
    with a quoted newline, say) are shown escaped."""

    def __init__(self, message: str = ""):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class CheckpointError(DeepstepError):
    """A checkpoint that is missing, incomplete or does not match what asks for it."""


class PeerStopped(DeepstepError):
    """Under torchrun, another process of the run stopped (its own error says why): this one
    cannot go on without it."""


class NonFiniteLoss(DeepstepError):
    """The training loss became NaN or inf (too high a learning rate, fp16 overflow)."""


def kind_of(value: object) -> str:
    """A value named for a message: 'None', 'an int', 'a numpy.ndarray', 'a PIL.Image'."""
    if value is None:
        return "None"
    name = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}".removeprefix("builtins.")
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def reason_of(err: BaseException, most: int = 200) -> str:
    """An exception said in a one-line error: the first line of its message, cut to `most`
    characters (a library's message may list a whole archive's files), or its type's name."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first if len(first) <= most else first[: most - 3].rstrip() + "..."


def first_few(names: Iterable[object], most: int = 3) -> str:
    """The first `most` names, comma-separated, then ', ...' when there are more."""
    names = [str(n) for n in names]
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean a or b?)' for the choices closest to `name`, else ''."""
    scored = sorted(
        ((difflib.SequenceMatcher(None, name.lower(), c.lower()).ratio(), c) for c in choices), reverse=True
    )
    close = [c for score, c in scored[:3] if score >= 0.6 and score >= scored[0][0] - 0.1]
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
