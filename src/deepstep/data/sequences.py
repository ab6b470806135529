"""Labelled sequences for classification: one CSV per sequence plus a labels CSV (a folder or a
.zip of one, as the IndoorMovement data set is laid out), or an .npz with X (N, T, F) and y.

Sequences keep their own lengths: they are padded to a common length only in a tensor that
travels with the lengths, and the models pack them, so no padding is ever read as data.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepstep.data.folders import is_archive, unpack_archive
from deepstep.data.series import is_number
from deepstep.data.splits import stratified_split
from deepstep.errors import DeepstepError, reason_of

LABEL_FILE = re.compile(r"(target|label|class)", re.IGNORECASE)
TRAILING_ID = re.compile(r"(\d+)$")


@dataclass
class SequenceSet:
    """Sequences (each (T_i, F)), their integer labels, class names and, optionally, groups."""

    name: str
    sequences: list[np.ndarray]
    labels: np.ndarray  # (N,) int64 indices into classes
    classes: list[str]
    ids: list[str]
    groups: np.ndarray | None = None  # (N,) group names as str
    root: Path | None = None
    feature_names: list[str] | None = None  # from the sequence CSVs' header line, when they have one

    @property
    def features(self) -> int:
        return self.sequences[0].shape[1]

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for seq in self.sequences:
            digest.update(np.ascontiguousarray(seq).tobytes())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()[:16]

    def subset(self, index: np.ndarray) -> SequenceSet:
        return SequenceSet(
            self.name,
            [self.sequences[i] for i in index],
            self.labels[index],
            self.classes,
            [self.ids[i] for i in index],
            None if self.groups is None else self.groups[index],
            self.root,
            self.feature_names,
        )


def is_sequence_spec(spec: str) -> bool:
    """An .npz, or a folder / archive that holds a labels CSV beside per-sequence CSVs."""
    path = Path(spec)
    if path.suffix.lower() == ".npz":
        return True
    if path.is_dir():
        labels = _labels_file(path, quiet=True)
        return labels is not None and _sequence_files(labels) != {}  # not an image folder's labels.csv
    if path.is_file() and path.suffix.lower() == ".zip":
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.lower().endswith(".csv")]
        except zipfile.BadZipFile:
            return False
        return any(LABEL_FILE.search(Path(n).stem) for n in names) and len(names) > 2
    return False


def read_numbers(path: Path) -> np.ndarray:
    """A CSV of numbers, 2-D; a first line of names (with or without '#') is skipped."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, header=None, comment="#", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DeepstepError(f"{path} is empty") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DeepstepError(f"{path} is not a readable CSV: {reason_of(err)}") from None
    if len(frame) and pd.to_numeric(frame.iloc[0], errors="coerce").isna().all():
        frame = frame.iloc[1:]  # a header line
    values = frame.apply(pd.to_numeric, errors="coerce")
    if values.isna().to_numpy().any():
        row, _ = np.argwhere(values.isna().to_numpy())[0]
        raise DeepstepError(f"{path}: row {row + 1} holds a missing value or a non-number; sequences must be numeric")
    return values.to_numpy(np.float32)


def header_names(path: Path) -> list[str] | None:
    """The column names on a CSV's first line (with or without '#'), or None when it holds numbers."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip().lstrip("#").strip()
    names = [c.strip() for c in first.split(",")]
    return None if not first or any(is_number(n) for n in names) else names


def _labels_file(root: Path, quiet: bool = False) -> Path | None:
    found = sorted(p for p in root.rglob("*.csv") if LABEL_FILE.search(p.stem))
    found = [p for p in found if "group" not in p.stem.lower() and "path" not in p.stem.lower()]
    if len(found) == 1:
        return found[0]
    if quiet:
        return None
    if not found:
        raise DeepstepError(
            f"{root} has no labels CSV: add a file whose name holds 'target' or 'label', with rows "
            "'sequence_id,label', beside one CSV per sequence named ..._<id>.csv"
        )
    raise DeepstepError(f"{root} has several labels CSVs ({', '.join(p.name for p in found)}); keep one")


def _id_map(path: Path) -> dict[str, str]:
    """A two-column CSV 'id,value' -> {id: value}, both as text."""
    table = _read_table_text(path)
    return {row[0]: row[1] for row in table}


def _read_table_text(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 2:
            raise DeepstepError(f"{path}: each row must be 'id,value', got {line!r}")
        rows.append(cells)
    if rows and not is_number(rows[0][0]):
        rows = rows[1:]  # a header without '#'
    if not rows:
        raise DeepstepError(f"{path} holds no 'id,value' rows")
    return rows


def _class_names(raw: list[str]) -> list[str]:
    unique = sorted(set(raw), key=lambda v: (float(v), v) if is_number(v) else (float("inf"), v))
    return [str(int(float(v))) if is_number(v) and float(v) == int(float(v)) else v for v in unique]


def load_sequences(spec: str, data_dir: Path, *, group_file: str | None = None) -> SequenceSet:
    """Read labelled sequences from an .npz, a folder or a .zip of a folder (unpacked once into `data_dir`)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise DeepstepError(
            f"{spec} does not exist; give a folder of sequence CSVs with a labels CSV, a .zip of one, or an .npz"
        )
    if path.suffix.lower() == ".npz":
        data = _load_npz(path)
    else:
        root = unpack_archive(path, data_dir) if is_archive(path) else path
        data = _load_folder(root, path.stem)
    if group_file:
        data.groups = _load_groups(group_file, data)
    return data


def _load_npz(path: Path) -> SequenceSet:
    sequences, y = read_npz(path)
    raw = [str(v) for v in y.tolist()]
    classes = _class_names(raw)
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[_class_names([v])[0]] for v in raw], dtype=np.int64)
    return SequenceSet(path.stem, sequences, labels, classes, [str(i) for i in range(len(y))], None, path.parent)


def read_npz(path: Path, labelled: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """The sequences of an .npz, each X[i] cut to lengths[i] (steps x features), and its labels y
    (`labelled`; else whatever y it holds, or None)."""
    import zipfile

    if not zipfile.is_zipfile(path):  # numpy would say it holds pickled data, which it need not
        raise DeepstepError(f"{path} is not an .npz (numpy's zip of arrays, as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = {name.lower(): name for name in npz.files}  # x as X, Y as y, as np.savez(x=..., y=...) gives
            if "x" not in names or ("y" not in names and labelled):
                wanted = "X (N, T, F) and y (N,)" if labelled else "X (N, T, F)"
                raise DeepstepError(f"{path} must hold arrays {wanted}; it has {', '.join(npz.files) or 'none'}")
            x = np.asarray(npz[names["x"]], np.float32)
            y = np.asarray(npz[names["y"]]) if "y" in names else None
            lengths = np.asarray(npz[names["lengths"]]) if "lengths" in names else None
    except (ValueError, OSError) as err:
        if "Object arrays" in str(err):  # a ragged list of sequences, which only pickle can hold
            raise DeepstepError(
                f"{path}: X is an object array (sequences of different lengths?); pad them into one float array "
                "X (N, T, F) and save their lengths beside it as 'lengths'"
            ) from None
        raise DeepstepError(f"{path} is not a readable .npz: {reason_of(err)}") from None
    if x.ndim == 2:
        x = x[:, :, None]
    if y is not None and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # a column of labels
    if labelled and y.ndim != 1:
        one_hot = y.ndim == 2 and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
        raise DeepstepError(
            f"{path}: y must hold one label per sequence, shape (N,); it has shape {y.shape}"
            + ("; these are one-hot rows: save y.argmax(axis=1) instead" if one_hot else "")
        )
    if x.ndim != 3 or (labelled and len(x) != len(y)):
        got = f"X {x.shape}, y {y.shape}" if labelled else f"X {x.shape}"
        raise DeepstepError(f"{path}: X must be (N, T, F) with one y per sequence; got {got}")
    steps = x.shape[1]
    lengths = np.full(len(x), steps) if lengths is None else _npz_lengths(path, lengths, len(x), steps)
    unread = ~np.isfinite(x).all(axis=2) & (np.arange(steps) < lengths[:, None])  # padding may hold anything
    if unread.any():
        i, t = (int(v) for v in np.argwhere(unread)[0])
        raise DeepstepError(
            f"{path}: X holds NaN or inf values (first in sequence {i} at step {t}); fill them"
            + ("" if "lengths" in names else ", or give the lengths of padded sequences as 'lengths'")
        )
    return [x[i, :n] for i, n in enumerate(lengths.tolist())], y


def _npz_lengths(path: Path, lengths: np.ndarray, count: int, steps: int) -> np.ndarray:
    """An .npz's `lengths`: one whole number per sequence, from 1 to X's steps."""
    if lengths.shape != (count,):
        raise DeepstepError(
            f"{path}: lengths must hold one length per sequence ({count}); it has shape {lengths.shape}"
        )
    whole = np.issubdtype(lengths.dtype, np.integer) or (
        np.issubdtype(lengths.dtype, np.floating)
        and np.isfinite(lengths).all()
        and (lengths == np.round(lengths)).all()
    )
    if not whole:
        raise DeepstepError(f"{path}: lengths must be whole numbers of steps; it holds {lengths.dtype} values")
    lengths = lengths.astype(np.int64)
    wrong = np.flatnonzero((lengths < 1) | (lengths > steps))
    if len(wrong):
        raise DeepstepError(
            f"{path}: lengths must be 1 to {steps} (X's steps); sequence {wrong[0]} has {lengths[wrong[0]]}"
        )
    return lengths


def _sequence_files(labels_path: Path) -> dict[str, Path]:
    """The per-sequence CSVs beside (or below) a labels CSV, by their id: ..._<id>.csv."""
    files = {}
    for p in sorted(labels_path.parent.rglob("*.csv")):
        match = TRAILING_ID.search(p.stem)
        if p != labels_path and match:
            files[str(int(match.group(1)))] = p
    return files


def _load_folder(root: Path, name: str) -> SequenceSet:
    labels_path = _labels_file(root)
    labels_by_id = _id_map(labels_path)
    files = _sequence_files(labels_path)
    not_ids = [i for i in labels_by_id if not is_number(i)]
    if not_ids:
        raise DeepstepError(
            f"{labels_path}: a sequence's id is the number ending its file's name (..._<id>.csv); "
            f"{not_ids[0]!r} is not one"
        )
    ids = [str(int(float(i))) for i in labels_by_id]
    missing = [i for i in ids if i not in files]
    if missing:
        raise DeepstepError(
            f"{labels_path} names {len(missing)} sequence(s) with no CSV beside it (first id {missing[0]}); "
            "sequence files are named ..._<id>.csv"
        )
    sequences = [read_numbers(files[i]) for i in ids]
    widths = {s.shape[1] for s in sequences}
    if len(widths) != 1:
        raise DeepstepError(
            f"{root}: sequences have different numbers of columns ({sorted(widths)}); all need the same features"
        )
    empty = [i for i, s in zip(ids, sequences, strict=True) if len(s) == 0]
    if empty:
        raise DeepstepError(f"{files[empty[0]]} holds no rows")
    raw = list(labels_by_id.values())
    classes = _class_names(raw)
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[_class_names([v])[0]] for v in raw], dtype=np.int64)
    names = header_names(files[ids[0]])
    names = names if names and len(names) == sequences[0].shape[1] else None
    return SequenceSet(name, sequences, labels, classes, ids, None, root, names)


def _load_groups(group_file: str, data: SequenceSet) -> np.ndarray:
    path = Path(group_file)
    if not path.is_absolute() and not path.exists() and data.root is not None:
        found = list(data.root.rglob(path.name))
        path = found[0] if found else path
    if not path.is_file():
        raise DeepstepError(f"--group-file {group_file} not found (looked as given and inside {data.root})")
    groups = {str(int(float(k))) if is_number(k) else k: v for k, v in _id_map(path).items()}
    missing = [i for i in data.ids if i not in groups]
    if missing:
        raise DeepstepError(f"{path} gives no group for {len(missing)} sequence(s) (first id {missing[0]})")
    return np.array([groups[i] for i in data.ids])


@dataclass
class SequenceSplits:
    train: SequenceSet
    val: SequenceSet | None
    test: SequenceSet
    report: dict


def split_sequences(
    data: SequenceSet, *, test_size: float, val_size: float, seed: int, test_groups: list[str] | None
) -> SequenceSplits:
    """Test part: the given groups (an unseen environment), else a stratified fraction (seed 0, fixed
    so every run of the data set is measured on the same test part). Validation: a stratified
    fraction of what remains, seeded by --seed."""
    n = len(data.labels)
    if len(data.classes) < 2:
        raise DeepstepError(f"{data.name} holds one class ({data.classes[0]}): a classifier needs at least two")
    if test_groups:
        if data.groups is None:
            raise DeepstepError("--test-groups needs --group-file, the CSV that says which group each sequence is in")
        known = sorted(set(data.groups.tolist()))
        unknown = [g for g in test_groups if g not in known]
        if unknown:
            raise DeepstepError(f"--test-groups {', '.join(unknown)}: no such group; groups are {', '.join(known)}")
        held = np.flatnonzero(np.isin(data.groups, test_groups))
        keep = np.setdiff1d(np.arange(n), held)
        origin = f"group(s) {', '.join(test_groups)} held out whole (of {', '.join(known)})"
    else:
        if test_size == 0:  # as an image folder without test/ and --test-split 0: no run goes untested
            raise DeepstepError(
                "--test-size 0 leaves no test part: it is measured once, at the end; give a fraction such as "
                "0.2, a number of sequences, or --group-file with --test-groups"
            )
        fraction = test_size if test_size < 1 else test_size / n
        keep, held = stratified_split(
            data.labels, fraction, seed=0, option=f"--test-size {test_size:g}", items="sequences"
        )
        origin = f"{fraction:.0%} of each class (stratified, seed 0)"
    rest = data.subset(keep)
    val = None
    if val_size > 0:
        fraction = val_size if val_size < 1 else val_size / len(keep)
        train_index, val_index = stratified_split(
            rest.labels,
            fraction,
            seed=seed,
            option=f"--val-size {val_size:g} of the train part",
            items="sequences",
            instead=", or --val-size 0",
        )
        train, val = rest.subset(train_index), rest.subset(val_index)
    else:
        train = rest
    if len(train.labels) == 0 or len(np.unique(train.labels)) < 2:
        raise DeepstepError("the train part holds fewer than two classes; change --test-groups or --test-size")
    report = {
        "train": {"count": len(train.labels)},
        "val": {"count": 0 if val is None else len(val.labels), "origin": f"stratified from the rest, seed {seed}"},
        "test": {"count": len(held), "origin": origin},
    }
    return SequenceSplits(train, val, data.subset(held), report)


def pad(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, T_max, F) zero-padded values and (N,) lengths."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    out = np.zeros((len(sequences), lengths.max(), sequences[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out, lengths
