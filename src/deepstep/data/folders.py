"""Image folders in ImageFolder layout, and .tar.gz / .zip archives of them unpacked once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepstep.data.decode import IMAGE_EXTENSIONS
from deepstep.data.series import is_number
from deepstep.errors import DeepstepError, first_few

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
SPLIT_FOLDERS = ("train", "val", "test")


@dataclass
class FolderSplit:
    """The image files of one split, with their class index."""

    files: list[Path]
    labels: list[int]


@dataclass
class ImageFolderLayout:
    """What a folder holds: classes and the splits it provides (train always; val/test if present)."""

    root: Path
    classes: list[str]
    splits: dict[str, FolderSplit]
    notes: list[str]  # what was left out and why: empty class folders, files that are not images
    labels_file: Path | None = None  # the CSV that names the images' classes, if not their folders


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_images(folder: Path, others: list[Path] | None = None) -> list[Path]:
    """The image files under `folder`, sorted; files that are not images (hidden ones aside) are
    appended to `others` when given."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_image(name):
                found.append(Path(dirpath) / name)
            elif others is not None and not name.startswith("."):
                others.append(Path(dirpath) / name)
    return found


def in_natural_order(paths: list[Path]) -> list[Path]:
    """`paths` with the numbers in their names compared as numbers (img2.png before img10.png), as
    file browsers list them: for what people read (predictions), not for training's order."""

    def key(path: Path) -> tuple:
        return tuple(tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", p))) for p in path.parts)

    return sorted(paths, key=key)


def _left_out_notes(folder: Path, empty: list[str], loose: list[Path], others: list[Path]) -> list[str]:
    """One line per kind of thing a scan of `folder` left out, so that nothing is dropped unseen:
    folders without images, files beside the class folders (`loose`), and files in them that are
    not images by name (`others`)."""

    def shown(paths: list[Path]) -> str:
        return first_few(p.relative_to(folder) for p in paths)

    notes = []
    if empty:
        notes.append(
            f"{folder}: left out {len(empty)} folder(s) with no images, so not classes: {first_few(empty, most=5)}"
        )
    if loose:
        notes.append(
            f"{folder}: left out {len(loose)} file(s) beside the class folders, in no class ({shown(loose)}); "
            "move an image into its class's folder to use it"
        )
    if others:
        notes.append(
            f"{folder}: left out {len(others)} file(s) that are not images by name ({shown(others)}); "
            f"images end in {', '.join(IMAGE_EXTENSIONS)}"
        )
    return notes


def scan_class_folders(folder: Path, classes: list[str] | None = None) -> tuple[list[str], FolderSplit, list[str]]:
    """Files and labels of `folder/<class>/...`, and notes on what was left out; `classes` fixes
    the class order (from train/)."""
    subfolders = _class_folders(folder)
    if not subfolders:
        if any(_is_image(p.name) for p in folder.iterdir()):
            tables = sorted(p.name for where in (folder, folder.parent) for p in where.glob("*.csv"))
            raise DeepstepError(
                f"{folder} holds images but no class subfolders: put each class in its own folder, "
                f"{folder}/<class>/<image>.jpg (ImageFolder layout)"
                + (f", or give the CSV that names each image's class: --labels {tables[0]}" if tables else "")
            )
        raise DeepstepError(
            f"{folder} has no class subfolders: expected {folder}/<class>/<image>.jpg (ImageFolder layout)"
        )
    loose = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    others: list[Path] = []
    found = {p.name: find_images(p, others) for p in subfolders}
    empty = [name for name, files in found.items() if not files]
    found = {name: files for name, files in found.items() if files}
    if not found:
        raise DeepstepError(f"{folder} has class folders but no images in them ({', '.join(IMAGE_EXTENSIONS)})")
    if classes is None:
        classes = sorted(found)
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DeepstepError(
                f"{folder} has classes that train/ does not have: {', '.join(unknown)}; "
                "every split must use the training classes"
            )
    index = {name: i for i, name in enumerate(classes)}
    files, labels = [], []
    for name in sorted(found, key=index.__getitem__):
        files.extend(found[name])
        labels.extend([index[name]] * len(found[name]))
    return classes, FolderSplit(files, labels), _left_out_notes(folder, empty, loose, others)


def read_labels_table(path: Path) -> list[tuple[int, list[str]]]:
    """A labels CSV's rows of cells (stripped), each with its line number (blank lines left out),
    split by commas, semicolons or tabs, whichever its first line holds."""
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="cp1252")  # as Excel saves on Windows
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    rows = csv.reader(text.splitlines(), delimiter=delimiter)
    return [(number, [c.strip() for c in row]) for number, row in enumerate(rows, start=1) if any(row)]


def _image_lookup(folder: Path, images: list[Path]) -> dict[str, Path | None]:
    """Each image under `folder` by its path there, its file name, and both without the extension
    (Kaggle's ids leave it out); None for a name that two images share."""
    lookup: dict[str, Path | None] = {}
    for image, relative in zip(images, relative_names(folder, images), strict=True):
        name = relative.rsplit("/", 1)[-1]
        for key in {relative, relative.rsplit(".", 1)[0], name, name.rsplit(".", 1)[0]}:
            lookup[key] = None if key in lookup and lookup[key] != image else image
    return lookup


def scan_labelled_folder(folder: Path, labels: Path) -> ImageFolderLayout:
    """Images under `folder` whose classes a CSV names, one `image,class` row each after a header
    (as Kaggle ships data sets; fastai's ImageDataLoaders.from_csv, Keras's flow_from_dataframe):
    the image by its file name or its path under `folder`, with or without the extension."""
    if not folder.is_dir():
        raise DeepstepError(f"{folder} is not a folder: --labels names the classes of the images in a folder")
    others: list[Path] = []
    images = find_images(folder, others)
    if not images:
        raise DeepstepError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    lookup = _image_lookup(folder, images)
    rows = read_labels_table(labels)

    roots = {str(where).replace("\\", "/").rstrip("/") + "/" for where in (folder.absolute(), folder.resolve())}

    def key(cell: str) -> str:  # a path under the folder (or an absolute one there), as the lookup names it
        cell = cell.replace("\\", "/").removeprefix("./")
        return next((cell.removeprefix(root) for root in roots if cell.startswith(root)), cell)

    if rows and key(rows[0][1][0]) not in lookup:
        header, rows = rows[0][1], rows[1:]
    else:
        header = ["image", "class"]
    if len(header) != 2 or any(len(row) != len(header) for _, row in rows):
        width = len(header) if len(header) != 2 else next(len(row) for _, row in rows if len(row) != 2)
        raise DeepstepError(
            f"{labels}: --labels reads two columns, each image and its class; this has {width}"
            + (f" ({', '.join(header)})" if len(header) > 2 else "")
            + ("; a column per class (one-hot) is not read: make it one column of class names" if width > 2 else "")
        )
    if not rows:
        raise DeepstepError(f"{labels} holds no 'image,class' rows")
    chosen: dict[Path, str] = {}
    missing = []
    for number, (name, label) in rows:
        image = lookup.get(key(name), False)
        if image is None:
            raise DeepstepError(
                f"{labels} line {number}: {name!r} is the name of several images under {folder}; "
                "give its path there, with its extension"
            )
        if image is False:
            missing.append(name)
            continue
        if not label:
            raise DeepstepError(f"{labels} line {number}: {name} has no class")
        if chosen.setdefault(image, label) != label:
            raise DeepstepError(f"{labels} gives {name} two classes: {chosen[image]} and {label}")
    if missing:
        raise DeepstepError(
            f"{labels} names {len(missing)} image(s) that are not under {folder} (first: {first_few(missing)}); "
            "its first column names each image by its file name or its path there"
        )
    classes = sorted(set(chosen.values()), key=lambda c: (0, float(c), c) if is_number(c) else (1, 0.0, c))
    index = {name: i for i, name in enumerate(classes)}
    files = [image for image in images if image in chosen]  # the folder's order, as a class folder's
    files.sort(key=lambda image: index[chosen[image]])  # stable: by class, then as found
    unnamed = [image for image in images if image not in chosen]
    others = [p for p in others if p.resolve() != labels.resolve()]
    notes = _left_out_notes(folder, [], [], others)
    if unnamed:
        notes.append(
            f"{folder}: left out {len(unnamed)} image(s) that {labels.name} does not name "
            f"({first_few(p.relative_to(folder) for p in unnamed)}); predict them with `deepstep predict RUN`"
        )
    labelled = FolderSplit(files, [index[chosen[image]] for image in files])
    return ImageFolderLayout(folder, classes, {"train": labelled}, notes, labels_file=labels)


def _descend_single_folder(root: Path) -> Path:
    """An archive often wraps everything in one top folder: step into it."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in SPLIT_FOLDERS:
            inner = _class_folders(entries[0])
            if len(inner) == 1 or any(p.name in SPLIT_FOLDERS for p in inner):
                root = entries[0]
                continue
        return root


def find_labels_file(labels: str, folder: Path) -> Path:
    """--labels as given, or, if not there, inside the data folder (an archive's own labels.csv, or
    one that moved with its folder)."""
    path = Path(labels).expanduser()
    if path.is_file():
        return path
    inside = [folder / labels] if (folder / labels).is_file() else sorted(folder.rglob(path.name))
    if inside:
        return inside[0]
    raise DeepstepError(f"--labels {labels} not found (looked as given and inside {folder})")


def scan_image_folder(path: Path, labels: str | None = None) -> ImageFolderLayout:
    """Read an ImageFolder layout: `train/` (+ `val/`, `test/`) or one folder of class folders; or,
    with `labels` (a CSV), the images under `path` that it names."""
    if labels and path.is_dir():
        return scan_labelled_folder(path, find_labels_file(labels, path))
    if not path.exists():
        raise DeepstepError(
            f"{path} does not exist: give an image folder, a .tar.gz/.zip of one, or a built-in dataset name"
        )
    if not path.is_dir():
        table = path.suffix.lower() in (".xlsx", ".xls", ".ods", ".parquet", ".json", ".txt")
        raise DeepstepError(
            f"{path} is not a folder or a .tar.gz/.zip archive of one"
            + ("; a series is read from a .csv or .tsv file: save the table as CSV" if table else "")
        )
    if not any(path.iterdir()):
        raise DeepstepError(f"{path} is empty: expected {path}/<class>/<image>.jpg or {path}/train/<class>/<image>.jpg")
    root = _descend_single_folder(path)
    if (root / "train").is_dir():
        classes, train, notes = scan_class_folders(root / "train")
        splits = {"train": train}
        for name in ("val", "test"):
            if (root / name).is_dir():
                _, splits[name], more = scan_class_folders(root / name, classes)
                notes += more
        return ImageFolderLayout(root, classes, splits, notes)
    classes, everything, notes = scan_class_folders(root)
    return ImageFolderLayout(root, classes, {"train": everything}, notes)


def content_hashes(root: Path, files: list[Path], data_dir: Path) -> list[str]:
    """sha256 of each file's bytes, so that caches follow content, not names or timestamps.

    Remembered in `data_dir/hashes/` under the file's inode, size, mtime and ctime: an unchanged file
    is not read again, and any write moves ctime (even when a copy restores mtime), so it is read again.
    A file that cannot be read gets a stable marker instead; the decoder reports it. Give every file
    under `root` in one call: the memo keeps only the files of the last call.
    """
    memo_file = data_dir / "hashes" / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}.json"
    memo = _read_memo(memo_file)
    names, stamps = relative_names(root, files), []
    for file in files:
        try:
            stat = file.stat()
            stamps.append(f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}")
        except OSError:
            stamps.append("missing")
    stale = [
        i for i, (name, stamp) in enumerate(zip(names, stamps, strict=True)) if memo.get(name, ("", ""))[0] != stamp
    ]
    for i in stale:  # one thread: on small files a thread pool only adds lock contention (measured 10x slower)
        memo[names[i]] = (stamps[i], _file_sha256(files[i]))
    current = {name: memo[name] for name in names}
    if stale or len(current) != len(memo):
        _write_memo(memo_file, current)
    return [current[name][1] for name in names]


def relative_names(root: Path, files: list[Path]) -> list[str]:
    """`file.relative_to(root)` as posix text, by string slicing (pathlib's is 10 us a file)."""
    prefix = str(root) + os.sep
    return [
        str(file)[len(prefix) :].replace(os.sep, "/")
        if str(file).startswith(prefix)
        else file.relative_to(root).as_posix()
        for file in files
    ]


def _file_sha256(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 1 << 26:
                return hashlib.sha256(f.read()).hexdigest()  # small files: one read is fastest
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        return f"unreadable:{type(err).__name__}"


def _read_memo(path: Path) -> dict[str, tuple[str, str]]:
    try:
        return {name: (stamp, digest) for name, (stamp, digest) in json.loads(path.read_text())["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # absent or damaged: every file is hashed again


def _write_memo(path: Path, memo: dict[str, tuple[str, str]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"files": memo}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs hashing again next time


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def unpack_archive(archive: Path, cache_dir: Path, name: str | None = None) -> Path:
    """Unpack `archive` once into `cache_dir/unpacked/` and return the folder; reused while unchanged."""
    if not archive.is_file():
        raise DeepstepError(f"{archive} does not exist")
    digest = content_hashes(archive, [archive], cache_dir)[0]
    target = cache_dir / "unpacked" / f"{name or archive_stem(archive)}-{digest[:16]}"
    unpack = _unzip if archive.name.lower().endswith(".zip") else _untar
    return unpacked_once(target, lambda staging: unpack(archive, staging))


def unpacked_once(target: Path, unpack: Callable[[Path], None]) -> Path:
    """The folder `target`, made once: `unpack(staging)` fills a staging folder beside it, which is
    then renamed into place; an existing `target` is reused as it is."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=target.parent))
    try:
        unpack(staging)
        try:
            staging.rename(target)  # atomic: a concurrent unpacker either wins or finds it done
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _untar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")  # refuses absolute paths, '..', devices, links out
            else:  # Python 3.11 before 3.11.4
                root = dest.resolve()
                for member in tar.getmembers():
                    inside = (dest / member.name).resolve().is_relative_to(root)
                    if not inside or not (member.isfile() or member.isdir()):
                        raise DeepstepError(f"{archive} holds an unsafe entry: {member.name}")
                tar.extractall(dest)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as err:
        raise DeepstepError(f"{archive} is not a readable .tar/.tar.gz archive ({err})") from None


def _unzip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for member in zf.infolist():
                target = (dest / member.filename).resolve()
                if not target.is_relative_to(root):
                    raise DeepstepError(f"{archive} holds a path outside the archive: {member.filename}")
            zf.extractall(dest)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise DeepstepError(f"{archive} is not a readable .zip archive ({err})") from None


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error
