"""Atomic file writes: write to a temporary name in the same folder, flush, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepstep.errors import DeepstepError

# Where a path cannot hold a file: a file in the way of its folder, a folder in its place, a name too long.
PLACE_ERRORS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def cannot_write(path: Path, err: OSError, option: str = "") -> DeepstepError:
    """The one-line error for a place the user chose that cannot take a file, naming the option."""
    if err.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir where a file is, or a file used as a folder
        reason = "a file is in the way of its folder"
    elif err.errno == errno.EISDIR:
        reason = "it is a folder"
    else:
        reason = err.strerror or str(err)
    name = f"{option} {path}" if option else str(path)
    return DeepstepError(f"{name}: cannot write there ({reason}); choose another {option or 'path'}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename."""
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno in PLACE_ERRORS:  # a place asked for that cannot hold the file: the user's to change
            raise cannot_write(path, err) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file follows the umask
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(obj: Any) -> str:
    """Indented JSON that any parser reads: a metric that is not defined (NaN, inf) is null."""
    return json.dumps(_finite(obj), indent=2, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json_text(obj) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
