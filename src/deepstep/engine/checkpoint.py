"""Checkpoints: tensors in safetensors, everything else in JSON; nothing is ever unpickled.

A checkpoint named KIND (best, last) is `KIND.json`, which names its tensor files and their
sha256. The tensor files carry the epoch in their names and are written first, then the JSON
is replaced in one rename, then older tensor files are removed: at every moment KIND.json
points at complete files, so a crash or a full disk never loses the previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepstep.engine.files import atomic_path, read_json, sha256_of, write_json
from deepstep.errors import CheckpointError

FORMAT = "deepstep-checkpoint-1"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile's and DDP's wrappers, whose state dict has clean names."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by {"tensor": key}, collecting it in `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = prefix.strip(".")
        tensors[key] = obj.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(obj, np.ndarray):
        return {"ndarray": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"dict": [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "tensor" in obj:
            return tensors[obj["tensor"]]
        if "ndarray" in obj:
            return np.asarray(obj["ndarray"], dtype=obj["dtype"])
        return {k: unflatten(v, tensors) for k, v in obj["dict"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return sha256_of(path)


def _load_tensors(folder: Path, entry: dict, pointer: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (named by {pointer}); {_intact_other(folder, pointer.stem)}")
    if sha256_of(path) != entry["sha256"]:
        raise CheckpointError(
            f"{path} is damaged (its checksum does not match {pointer}); {_intact_other(folder, pointer.stem)}"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); {_intact_other(folder, pointer.stem)}") from None


def _intact_other(folder: Path, damaged: str) -> str:
    """Where to turn when checkpoint `damaged` cannot be loaded: the other one, if its files verify."""
    for kind in ("best", "last"):
        pointer = folder / f"{kind}.json"
        if kind == damaged or not pointer.is_file():
            continue
        try:
            record = read_json(pointer)
            files = [record[key] for key in ("weights", "state_tensors") if key in record]
            if all(sha256_of(folder / f["file"]) == f["sha256"] for f in files):
                return (
                    f"the {kind} checkpoint (epoch {record.get('epoch')}) is intact "
                    f"(evaluate, predict and export take --checkpoint {kind})"
                )
        except (OSError, ValueError, KeyError):
            continue
    return "no other checkpoint of this run is intact"


def save_checkpoint(
    folder: Path,
    kind: str,
    tag: str,
    model: nn.Module,
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> Path:
    """Write `kind` (best/last): the model's weights, `meta` (JSON), and optional training state."""
    folder.mkdir(parents=True, exist_ok=True)
    pointer = folder / f"{kind}.json"
    old = read_json(pointer) if pointer.is_file() else None
    weights = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    record: dict[str, Any] = {"format": FORMAT, **meta}
    written: list[Path] = []
    try:
        name = f"{kind}-{tag}.safetensors"
        record["weights"] = {"file": name, "sha256": _save_tensors(folder / name, weights)}
        written.append(folder / name)
        if state is not None:
            state_tensors: dict[str, torch.Tensor] = {}
            record["state"] = flatten(state, "", state_tensors)
            name = f"{kind}-{tag}.state.safetensors"
            record["state_tensors"] = {"file": name, "sha256": _save_tensors(folder / name, state_tensors)}
            written.append(folder / name)
        write_json(pointer, record)
    except OSError as err:  # a full disk, a lost mount: the pointer still names the previous files
        for path in written:
            if old is None or path.name not in {
                old.get("weights", {}).get("file"),
                old.get("state_tensors", {}).get("file"),
            }:
                path.unlink(missing_ok=True)
        kept = f"the previous one (epoch {old.get('epoch')}) is kept" if old else "no earlier one exists"
        raise CheckpointError(
            f"could not write the {kind} checkpoint in {folder}: {err.strerror or err}; {kept}"
        ) from None
    if old is not None:
        for key in ("weights", "state_tensors"):
            stale = old.get(key, {}).get("file")
            if stale and stale not in {
                record.get("weights", {}).get("file"),
                record.get("state_tensors", {}).get("file"),
            }:
                (folder / stale).unlink(missing_ok=True)
    return pointer


def read_checkpoint(folder: Path, kind: str) -> dict[str, Any]:
    """The JSON record of checkpoint `kind`, checked for format."""
    pointer = folder / f"{kind}.json"
    if not pointer.is_file():
        raise CheckpointError(f"{pointer} does not exist: the run has no {kind!r} checkpoint")
    try:
        record = read_json(pointer)
    except ValueError:
        raise CheckpointError(f"{pointer} is not valid JSON; the checkpoint is damaged") from None
    if record.get("format") != FORMAT:
        raise CheckpointError(f"{pointer} is not a deepstep checkpoint (format {record.get('format')!r})")
    return record


def load_weights(folder: Path, kind: str, model: nn.Module) -> dict[str, Any]:
    """Load checkpoint `kind`'s weights into `model` (verified by checksum); returns the record."""
    record = read_checkpoint(folder, kind)
    tensors = _load_tensors(folder, record["weights"], folder / f"{kind}.json")
    missing, unexpected = unwrap(model).load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / record['weights']['file']} does not fit the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return record


def load_state(folder: Path, kind: str) -> dict[str, Any]:
    """The training state saved with checkpoint `kind` (optimizer, schedule, RNG, progress)."""
    record = read_checkpoint(folder, kind)
    if "state" not in record:
        raise CheckpointError(f"{folder / (kind + '.json')} holds no training state to resume from")
    tensors = _load_tensors(folder, record["state_tensors"], folder / f"{kind}.json")
    return unflatten(record["state"], tensors)
