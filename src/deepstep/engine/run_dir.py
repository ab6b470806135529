"""The run folder: everything a run was made with and everything it measured.

RUN/config.yaml       the resolved config (usable again with --config)
RUN/run.json          data, model, split sizes, normalisation, precision, what was picked
RUN/metrics.csv       one row per epoch
RUN/checkpoints/      best.json, last.json and their safetensors files
RUN/evaluations.json  every evaluation of the test split, in order
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
import socket
from pathlib import Path
from typing import Any

from deepstep.engine.files import read_json, write_json, write_text
from deepstep.errors import DeepstepError, first_few

# The leading columns, in this order, when a run has them; any others follow.
METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_acc5",
    "seconds",
    "images_per_s",
    "lr",
]


class RunDir:
    """Paths and atomic reads/writes of one run folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        run = cls(path)
        if not run.path.exists():
            raise DeepstepError(f"run folder {run.path} does not exist")
        if not run.path.is_dir():
            raise DeepstepError(
                f"{run.path} is a file, not a run folder; give the folder `deepstep train` wrote "
                "(predict: the run first, then the images)"
            )
        if not run.exists():
            raise DeepstepError(
                f"{run.path} is not a deepstep run folder (no run.json); give the folder `deepstep train` wrote"
            )
        return run

    @classmethod
    def create(cls, path: str | os.PathLike) -> RunDir:
        """A new run folder; refuses one that holds a checkpoint, which would be lost. A run that
        stopped before its first checkpoint (a failed start) left nothing to keep or resume, so
        its folder is started again."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise DeepstepError(f"--out {run.path} is a file, not a folder: choose another --out")
        if run.has_checkpoint():
            raise DeepstepError(f"{run.path} already holds a run: use --resume to continue it, or choose another --out")
        if run.path.is_dir() and not (run.exists() or run.file("config.yaml").is_file()):
            others = sorted(p.name for p in run.path.iterdir() if not p.name.startswith("."))
            if others:  # deepstep writes grid.png, curves.png, ... there: another's files are not its to replace
                raise DeepstepError(
                    f"--out {run.path} holds other files ({first_few(others)}): a run gets a folder of its own; "
                    "choose a new or empty --out"
                )
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DeepstepError(
                f"--out {run.path}: cannot make the run folder ({err.strerror}); choose another --out"
            ) from None
        return run

    def has_checkpoint(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def lock(self) -> str | None:
        """Claim the folder for this process (RUN/.lock holds its pid and host), so that a second
        `deepstep train` into it is refused; released by `unlock` or when this process exits.
        A lock left by a process that is gone is taken over; returns a note saying so, else None."""
        mine = {"pid": os.getpid(), "host": socket.gethostname()}
        note = None
        for _ in range(2):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._lock_holder()
                if holder == mine:
                    return None  # this process, e.g. an earlier train() call of the Python API
                if holder and holder.get("host") == mine["host"] and _alive(holder.get("pid")):
                    raise DeepstepError(
                        f"{self.path} is being trained by process {holder['pid']} (lock {self.lock_file}); "
                        "wait for it to finish or stop it, or use another --out"
                    ) from None
                if holder and holder.get("host") != mine["host"]:
                    raise DeepstepError(
                        f"{self.path} is locked by process {holder.get('pid')} on {holder.get('host')} ({self.lock_file}); "
                        "if that run is over, delete the lock file"
                    ) from None
                self.lock_file.unlink(missing_ok=True)  # stale: its process is gone
                note = f"took over a stale lock of process {holder.get('pid') if holder else '?'}"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            atexit.register(self.unlock)
            return note
        raise DeepstepError(f"could not lock {self.path}: {self.lock_file} keeps reappearing")

    def unlock(self) -> None:
        if self._lock_holder() == {"pid": os.getpid(), "host": socket.gethostname()}:
            self.lock_file.unlink(missing_ok=True)

    def _lock_holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.lock_file.read_text())
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        if not path.is_file():
            return default
        try:
            return read_json(path)
        except ValueError:
            raise DeepstepError(f"{path} is not valid JSON; the run folder is damaged") from None

    def write_config(self, config: dict[str, Any]) -> None:
        import yaml

        write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def data_given(self) -> str | None:
        """The --data the run trained on, as config.yaml records it; None if that cannot be read."""
        try:
            data = self.read_config().get("data")
        except Exception:  # a damaged config.yaml only loses the hint it was read for
            return None
        return str(data) if data else None

    def read_config(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8")) or {}

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv with every epoch's row (small, atomic, never half-written)."""
        present = {k for row in rows for k in row}
        columns = [c for c in METRIC_COLUMNS if c in present]
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(row.get(k)) for k in columns})
        write_text(self.path / "metrics.csv", buffer.getvalue())

    def read_metrics(self) -> list[dict[str, float]]:
        """metrics.csv's rows: the epoch as an int, every other column a float (None where empty)."""
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]
        for row in rows:
            if row.get("epoch") is not None:
                row["epoch"] = int(row["epoch"])
        return rows


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
