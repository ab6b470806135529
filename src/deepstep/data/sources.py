"""Where images come from: built-in datasets (torchvision, the shipped sample) and paths (image
folders, archives, CIFAR and MNIST-format files as their authors ship them).

`open_image_source(spec)` turns what the user typed after `--data` into an `ImageSource`:
classes plus a train and a test split (and a val split when the folder has `val/`), each a
list of files or an in-memory uint8 array, with labels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from deepstep.data.decode import open_image
from deepstep.data.folders import (
    ImageFolderLayout,
    archive_stem,
    content_hashes,
    is_archive,
    relative_names,
    scan_image_folder,
    unpack_archive,
    unpacked_once,
)
from deepstep.data.splits import stratified_split
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError, did_you_mean, first_few
from deepstep.registry import Registry

SAMPLE_ARCHIVE = Path(__file__).parent / "samples" / "cifar10-sample.tar.gz"
TEST_CARVE_SEED = 0  # the carved test part must not depend on the training seed


def data_cache_dir(*given: str | os.PathLike | None) -> Path:
    """Where downloads, unpacked archives and decoded caches go: the first of `given` that is set
    (a command's --data-dir, then the run's), else $DEEPSTEP_DATA, else ~/.cache/deepstep."""
    chosen = next((g for g in given if g), None) or os.environ.get("DEEPSTEP_DATA")
    return Path(chosen or Path.home() / ".cache" / "deepstep")


@dataclass
class ImageSplit:
    """One split of labelled images: files on disk, or pixels already in memory."""

    labels: np.ndarray  # (N,) int64
    files: list[Path] | None = None
    pixels: np.ndarray | None = None  # (N, H, W) or (N, H, W, C) uint8, as torchvision holds them

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSplit:
        return ImageSplit(
            labels=self.labels[indices],
            files=[self.files[i] for i in indices] if self.files is not None else None,
            pixels=self.pixels[indices] if self.pixels is not None else None,
        )

    def open(self, i: int) -> Image.Image:
        """Image `i` as a Pillow image (for grids and checks)."""
        if self.files is not None:
            return open_image(self.files[i])
        return Image.fromarray(self.pixels[i])

    def name(self, i: int) -> str:
        return str(self.files[i]) if self.files is not None else f"#{i}"


def join_splits(parts: list[ImageSplit]) -> ImageSplit:
    """The images of `parts` as one split, in order (all files, or all pixels in memory)."""
    labels = np.concatenate([p.labels for p in parts])
    if all(p.files is not None for p in parts):
        return ImageSplit(labels=labels, files=[f for p in parts for f in p.files])
    return ImageSplit(labels=labels, pixels=np.concatenate([p.pixels for p in parts]))


@dataclass
class ImageSource:
    """A dataset: class names, splits and where the test part came from."""

    name: str
    classes: list[str]
    splits: dict[str, ImageSplit]
    fingerprint: str
    test_origin: str
    root: Path | None = None
    notes: list[str] = field(default_factory=list)  # what the folder scan left out, logged by train
    labels_file: Path | None = None  # the CSV that named the classes (--labels), if not class folders


@dataclass
class BuiltinDataset:
    name: str
    description: str
    open: Callable[..., ImageSource]  # (data_dir, test_split) -> ImageSource


DATASETS: Registry[BuiltinDataset] = Registry("dataset", "deepstep datasets")


def builtin(name: str, description: str):
    return DATASETS.register(name, lambda fn: BuiltinDataset(name, description, fn))


def check_image_spec(spec: str) -> None:
    """Refuse in one line a dataset (--data, or show's argument) that is neither a built-in one nor
    an existing path, before anything is built or decoded (a missing file's name says nothing of
    what it would have held)."""
    if spec in DATASETS:
        return
    path = Path(spec).expanduser()
    if (run := RunDir(path)).exists():
        trained_on = run.data_given()
        raise DeepstepError(
            f"{path} is a deepstep run folder, not data"
            + (f"; it trained on {trained_on}: give that" if trained_on else ": give the images themselves")
        )
    if path.is_dir():
        try:
            runs = sorted(p.name for p in path.iterdir() if RunDir(p).exists())
        except OSError:  # unreadable: the folder scan says so in its own words
            runs = []
        if runs:  # a folder of runs (runs/): its plots would be read as images of a class a run
            raise DeepstepError(
                f"{path} holds deepstep run folders ({first_few(runs)}), "
                "not class folders of images: give the data a run trained on"
            )
    if path.exists():
        return
    if os.sep in spec or "." in spec:
        raise DeepstepError(
            f"{path} does not exist: give an image folder or a .tar.gz/.zip of one, labelled sequences "
            "(a folder or .zip of CSVs, or an .npz), a CSV series, or a built-in dataset name"
        )
    raise DeepstepError(
        f"{spec!r} is neither a built-in dataset{did_you_mean(spec, DATASETS.names())} nor an "
        "existing path; `deepstep datasets` lists the built-in ones"
    )


# CIFAR as its authors ship it (the pickled batches torchvision reads), given by path to --data:
# read from there by the built-in dataset's loader, offline, instead of from the cache.
AUTHORS_FILES = {
    "cifar-10-python.tar.gz": "cifar10",
    "cifar-10-batches-py": "cifar10",
    "cifar-100-python.tar.gz": "cifar100",
    "cifar-100-python": "cifar100",
}


def open_image_source(
    spec: str,
    data_dir: Path | None = None,
    test_split: float = 0.2,
    *,
    carve_test: bool = True,
    labels: str | None = None,
) -> ImageSource:
    """A built-in dataset name, an image folder, or a .tar.gz/.zip archive of one. A folder without
    test/ has `test_split` of each class carved as its test part, unless not `carve_test` (every
    image is then in train, as when a whole folder is scored). `labels`: a CSV naming the class of
    each image in the folder (scan_labelled_folder), in place of class folders."""
    data_dir = data_cache_dir(data_dir)
    path = Path(spec).expanduser()
    if labels and (spec in DATASETS or path.name in AUTHORS_FILES):
        raise DeepstepError(f"--labels names the classes of a folder's images; {spec} has its own: leave it out")
    if spec in DATASETS:
        return DATASETS.get(spec).open(data_dir, test_split)
    check_image_spec(spec)
    if path.name in AUTHORS_FILES:
        return DATASETS.get(AUTHORS_FILES[path.name]).open(data_dir, test_split, given=path)
    if is_archive(path):
        folder = unpack_archive(path, data_dir)
        if not labels and (idx := find_idx_files(folder)):
            return _idx_source(idx, archive_stem(path), data_dir)
        return _folder_source(
            folder, archive_stem(path), test_split, data_dir, unpacked=True, carve_test=carve_test, labels=labels
        )
    if path.is_dir() and not labels and (idx := find_idx_files(path)):
        return _idx_source(idx, path.resolve().name, data_dir)
    return _folder_source(path, path.resolve().name, test_split, data_dir, carve_test=carve_test, labels=labels)


def _folder_source(
    path: Path,
    name: str,
    test_split: float,
    data_dir: Path,
    unpacked: bool = False,
    carve_test: bool = True,
    labels: str | None = None,
) -> ImageSource:
    """`unpacked`: `path` is deepstep's own unpacking of an archive, named by the archive's content hash."""
    layout = scan_image_folder(path, labels)
    splits = {
        split: ImageSplit(labels=np.asarray(s.labels, dtype=np.int64), files=s.files)
        for split, s in layout.splits.items()
    }
    if "test" in splits:
        origin = "the folder's test/"
    elif not carve_test:
        origin = "none carved"
    else:
        if test_split <= 0:
            raise DeepstepError(
                f"{path} has no test/ folder and --test-split is 0: give a test/ folder or a test split such as 0.2"
            )
        keep, held = stratified_split(
            splits["train"].labels,
            test_split,
            seed=TEST_CARVE_SEED,
            option=f"{path}: --test-split {test_split:g}",
            instead=", or give a test/ folder",
        )
        splits["test"] = splits["train"].subset(held)
        splits["train"] = splits["train"].subset(keep)
        origin = f"carved from the folder: {test_split:.0%} of each class (stratified, seed {TEST_CARVE_SEED})"
    return ImageSource(
        name=name,
        classes=layout.classes,
        splits=splits,
        fingerprint=_layout_fingerprint(layout, test_split, data_dir, archive_id=path.name if unpacked else None),
        test_origin=origin,
        root=layout.root,
        notes=layout.notes,
        labels_file=layout.labels_file,
    )


def _layout_fingerprint(
    layout: ImageFolderLayout, test_split: float, data_dir: Path, archive_id: str | None = None
) -> str:
    """Identity of the data by content: a file rewritten in place, even with its old mtime, changes it;
    a folder moved or touched without changes keeps it (and so keeps its decoded cache).

    `archive_id`: the name of deepstep's unpacking of an archive, which holds the archive's content
    hash; nobody else writes there, so its files are not hashed one by one.
    """
    named = [(split, path) for split in sorted(layout.splits) for path in layout.splits[split].files]
    files = [path for _, path in named]
    hashes = [""] * len(files) if archive_id else content_hashes(layout.root, files, data_dir)
    digest = hashlib.sha256(f"{layout.classes}|{test_split}|{archive_id}".encode())
    if layout.labels_file is not None:  # the classes are the CSV's, not the folders'
        digest.update(b"labels|" + hashlib.sha256(layout.labels_file.read_bytes()).digest())
    for (split, _), name, content in zip(named, relative_names(layout.root, files), hashes, strict=True):
        digest.update(f"{split}|{name}|{content}\n".encode())
    return digest.hexdigest()[:16]


@builtin(
    "cifar10-sample",
    "CIFAR-10, a stratified sample shipped with deepstep (offline): 4,500 train + 1,000 test, 32x32 JPEG",
)
def _cifar10_sample(data_dir: Path, test_split: float) -> ImageSource:
    folder = unpack_archive(SAMPLE_ARCHIVE, data_dir, name="cifar10-sample")
    return _folder_source(folder, "cifar10-sample", test_split, data_dir, unpacked=True)


def _builtin_fingerprint(name: str, parts: dict[str, ImageSplit]) -> str:
    """A built-in dataset is known by its name and sizes: the download is checked against its checksums."""
    return hashlib.sha256(f"{name}|{len(parts['train'])}|{len(parts['test'])}".encode()).hexdigest()[:16]


def _torchvision_source(name: str, dataset_class: str, archive_hint: str) -> Callable[..., ImageSource]:
    def open_dataset(data_dir: Path, test_split: float, given: Path | None = None) -> ImageSource:
        """`given`: the dataset's own archive or unpacked folder, given as --data, read from there."""
        import torchvision.datasets

        cls = getattr(torchvision.datasets, dataset_class)
        root = data_dir / name
        if given is not None:  # torchvision reads ROOT/cifar-10-batches-py
            root = given.parent if given.is_dir() else unpack_archive(given, data_dir)
        if archive_hint in AUTHORS_FILES:
            given_instead = " (or give its path as --data)"
        elif dataset_class in IDX_DATASETS:
            given_instead = " (or give the folder that holds them as --data)"
        else:
            given_instead = ""
        parts = {}
        for split, train in (("train", True), ("test", False)):
            try:
                try:
                    ds = cls(str(root), train=train, download=False)
                except RuntimeError:  # not there yet: torchvision's own download
                    if given is not None:
                        raise
                    ds = cls(str(root), train=train, download=True)
            except Exception as err:  # offline: URLError, socket errors, HTTP errors, bad checksum
                reason = str(err).splitlines()[0][:120].rstrip(" :") if str(err) else type(err).__name__
                if given is not None:
                    if "not found or corrupted" in reason:  # torchvision's words for a missing or altered file
                        reason = "files missing, or not the ones its authors ship: their checksums differ"
                    raise DeepstepError(
                        f"{given} cannot be read as {name} ({reason}): give {archive_hint} as its authors "
                        "ship it, or the folder it unpacks to"
                    ) from None
                raise DeepstepError(
                    f"{name} is not in {root} and could not be downloaded ({reason}): put {archive_hint} "
                    f"in {root}{given_instead}, or use --data with an image folder or a .tar.gz/.zip of one "
                    f"(train/<class>/*.jpg, test/<class>/*.jpg), or --data cifar10-sample offline"
                ) from None
            pixels = np.asarray(ds.data, dtype=np.uint8)
            parts[split] = ImageSplit(labels=np.asarray(ds.targets, dtype=np.int64), pixels=pixels)
            classes = list(ds.classes)
        return ImageSource(
            name=name,
            classes=classes,
            splits=parts,
            fingerprint=_builtin_fingerprint(name, parts),
            test_origin=f"the standard {name} test split",
        )

    return open_dataset


for _name, _cls, _hint, _desc in (
    (
        "cifar10",
        "CIFAR10",
        "cifar-10-python.tar.gz",
        "CIFAR-10: 50,000 + 10,000 32x32 colour images, 10 classes (torchvision download; or its "
        "cifar-10-python.tar.gz by path)",
    ),
    (
        "cifar100",
        "CIFAR100",
        "cifar-100-python.tar.gz",
        "CIFAR-100: 50,000 + 10,000 32x32 colour images, 100 classes (torchvision download; or its "
        "cifar-100-python.tar.gz by path)",
    ),
    (
        "mnist",
        "MNIST",
        "the four MNIST .gz files under MNIST/raw/",
        "MNIST: 60,000 + 10,000 28x28 grey digits (torchvision download; or the folder of its four .gz files by path)",
    ),
    (
        "fashion-mnist",
        "FashionMNIST",
        "the four Fashion-MNIST .gz files under FashionMNIST/raw/",
        "Fashion-MNIST: 60,000 + 10,000 28x28 grey clothes images (torchvision download; or the folder of its "
        "four .gz files by path)",
    ),
):
    DATASETS.add(_name, BuiltinDataset(_name, _desc, _torchvision_source(_name, _cls, _hint)))


# MNIST-format data (IDX files, as MNIST, Fashion-MNIST and KMNIST ship them, each .gz or unpacked),
# given by the folder that holds them: read with torchvision's readers, offline.
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
IDX_DATASETS = {"MNIST": "mnist", "FashionMNIST": "fashion-mnist", "KMNIST": "kmnist"}  # torchvision class -> name


def find_idx_files(folder: Path, depth: int = 3) -> dict[tuple[str, str], Path] | None:
    """The four IDX files in `folder`, in torchvision's `raw/` below it, or in its only subfolder (an
    archive's wrapper, torchvision's root); None when there are none. Some but not all: an error."""
    try:
        entries = {p.name: p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))}
    except OSError:
        return None  # unreadable: the folder scan says so in its own words
    found = {key: entries.get(name + ".gz") or entries.get(name) for key, name in IDX_FILES.items()}
    found = {key: file for key, file in found.items() if file is not None and file.is_file()}
    if found and len(found) < len(IDX_FILES):
        missing = [name for key, name in IDX_FILES.items() if key not in found]
        raise DeepstepError(
            f"{folder} holds MNIST-format files but not {', '.join(missing)} (or .gz): "
            "MNIST-format data needs all four, the train and t10k images and labels"
        )
    if found:
        return found
    subfolders = [p for p in entries.values() if p.is_dir()]
    if depth > 0 and (len(subfolders) == 1 or "raw" in entries) and len(entries) <= 2:
        return find_idx_files(entries.get("raw", subfolders[0]), depth - 1)
    return None


def _idx_source(files: dict[tuple[str, str], Path], name: str, data_dir: Path) -> ImageSource:
    """MNIST-format data as an ImageSource: MNIST, Fashion-MNIST or KMNIST when the .gz files are
    theirs (by checksum) or lie in torchvision's <Dataset>/raw/, with their class names; otherwise
    classes named by their label numbers."""
    import torchvision.datasets
    from torchvision.datasets.mnist import read_image_file, read_label_file
    from torchvision.datasets.utils import check_md5

    by_name = {file.name: file for file in files.values()}
    known = None
    for cls_name in IDX_DATASETS:
        cls = getattr(torchvision.datasets, cls_name)
        if all(gz in by_name and check_md5(by_name[gz], md5) for gz, md5 in cls.resources):
            known = cls_name
            break
    folder = next(iter(files.values())).parent
    if known is None and folder.name == "raw" and folder.parent.name in IDX_DATASETS:
        known = folder.parent.name
    hashes = dict(zip(files, content_hashes(folder, list(files.values()), data_dir), strict=True))
    plain = _unpacked_idx(files, hashes, data_dir)
    parts = {}
    for split in ("train", "test"):
        read = {}
        for kind, reader in (("images", read_image_file), ("labels", read_label_file)):
            try:
                read[kind] = reader(str(plain[split, kind])).numpy()
            except Exception as err:  # torchvision asserts the header, fails to view a truncated body
                reason = str(err).splitlines()[0][:120] if str(err) else "its header is not an IDX header"
                raise DeepstepError(
                    f"{files[split, kind]} is not an MNIST-format {kind[:-1]} file ({reason}): "
                    "give the files as MNIST ships them"
                ) from None
        if len(read["images"]) != len(read["labels"]):
            raise DeepstepError(
                f"{files[split, 'labels']} has {len(read['labels'])} labels for the {len(read['images'])} images of "
                f"{files[split, 'images']}: give the labels that belong to those images"
            )
        parts[split] = ImageSplit(labels=read["labels"].astype(np.int64), pixels=read["images"])
    top = int(max(p.labels.max(initial=0) for p in parts.values()))
    if known:
        name = IDX_DATASETS[known]
        classes = list(getattr(torchvision.datasets, known).classes)
        fingerprint = _builtin_fingerprint(name, parts)
        if top >= len(classes):
            raise DeepstepError(f"{folder}: labels run past {known}'s {len(classes)} classes: these are not its files")
    else:
        classes = [str(i) for i in range(top + 1)]
        fingerprint = hashlib.sha256("|".join(hashes.values()).encode()).hexdigest()[:16]
    return ImageSource(
        name=name,
        classes=classes,
        splits=parts,
        fingerprint=fingerprint,
        test_origin="the folder's t10k files",
        root=folder,
    )


def _unpacked_idx(
    files: dict[tuple[str, str], Path], hashes: dict[tuple[str, str], str], data_dir: Path
) -> dict[tuple[str, str], Path]:
    """The IDX files unpacked: a .gz one once into a folder of `data_dir/unpacked/`, reused while
    its content (`hashes`) is unchanged."""
    from torchvision.datasets.utils import extract_archive

    def gunzip(file: Path, staging: Path) -> None:
        try:
            extract_archive(file, staging)
        except (OSError, EOFError) as err:  # not gzip, or cut short
            raise DeepstepError(f"{file} cannot be unpacked ({err}): give the file as MNIST ships it") from None

    plain = {}
    for key, file in files.items():
        if file.suffix != ".gz":
            plain[key] = file
            continue
        target = data_dir / "unpacked" / f"{file.stem}-{hashes[key][:16]}"
        plain[key] = unpacked_once(target, lambda staging, file=file: gunzip(file, staging)) / file.stem
    return plain
