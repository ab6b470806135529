"""Errors a user can cause and fix. The CLI prints them on one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DeepstepError(Exception):
    """A problem with the user's input: the message names the input and what to do."""


class CheckpointError(DeepstepError):
    """A checkpoint that is missing, incomplete or does not match what asks for it."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean a or b?)' for the choices close to `name`, else ''."""
    close = difflib.get_close_matches(name.lower(), list(choices), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
