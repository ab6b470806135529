import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, write_images
from deepstep.data.sources import open_image_source
from deepstep.errors import DeepstepError


def test_a_folder_with_train_and_test_keeps_its_own_test_part(image_folder, isolated):
    source = open_image_source(str(image_folder), isolated)
    assert source.classes == list(CLASSES)
    assert len(source.splits["train"]) == 60 and len(source.splits["test"]) == 18
    assert source.test_origin == "the folder's test/"


def test_a_flat_folder_gets_a_stratified_test_part_carved_the_same_way_every_time(flat_folder, isolated):
    first = open_image_source(str(flat_folder), isolated, test_split=0.2)
    again = open_image_source(str(flat_folder), isolated, test_split=0.2)
    assert np.bincount(first.splits["test"].labels).tolist() == [2, 2, 2]
    assert first.splits["test"].files == again.splits["test"].files
    assert not set(first.splits["test"].files) & set(first.splits["train"].files)
    assert "carved" in first.test_origin


def test_a_tar_gz_archive_is_unpacked_once_and_reused(image_archive, isolated):
    first = open_image_source(str(image_archive), isolated)
    unpacked = first.splits["train"].files[0]
    unpacked.with_name("marker").write_text("still here")
    second = open_image_source(str(image_archive), isolated)
    assert second.splits["train"].files[0] == unpacked
    assert unpacked.with_name("marker").exists()  # not unpacked again over it
    assert first.name == "shapes" and len(second.splits["test"]) == 18


def test_a_zip_archive_works_like_a_folder(image_folder, tmp_path, isolated):
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(image_folder.rglob("*.png")):
            zf.write(path, path.relative_to(image_folder))
    source = open_image_source(str(archive), isolated)
    assert len(source.splits["train"]) == 60


def test_a_zip_that_writes_outside_its_folder_is_refused(tmp_path, isolated):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(DeepstepError, match="outside the archive"):
        open_image_source(str(archive), isolated)
    assert not (tmp_path / "escaped.txt").exists()


def test_a_tar_with_a_link_out_of_its_folder_is_refused(tmp_path, isolated):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("data/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
        data = b"x"
        member = tarfile.TarInfo("../outside.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with pytest.raises(DeepstepError):
        open_image_source(str(archive), isolated)
    assert not (tmp_path / "outside.txt").exists()


def test_a_missing_path_is_named(isolated):
    with pytest.raises(DeepstepError, match="nowhere/images does not exist"):
        open_image_source("nowhere/images", isolated)


def test_an_unknown_dataset_name_suggests_the_close_one(isolated):
    with pytest.raises(DeepstepError, match=r"neither a built-in dataset \(did you mean 'cifar10'"):
        open_image_source("cifar1O", isolated)


def test_an_empty_folder_says_what_it_should_hold(tmp_path, isolated):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeepstepError, match="empty is empty: expected"):
        open_image_source(str(tmp_path / "empty"), isolated)


def test_a_folder_of_loose_images_asks_for_class_folders(tmp_path, isolated):
    write_images(tmp_path, 3, np.random.default_rng(0), classes=("loose",))
    with pytest.raises(DeepstepError, match="holds images but no class subfolders"):
        open_image_source(str(tmp_path / "loose"), isolated)


def test_what_a_folder_scan_leaves_out_is_noted_not_dropped_unseen(flat_folder, image_folder, isolated):
    assert open_image_source(str(image_folder), isolated).notes == []
    (flat_folder / "empty_class").mkdir()
    (flat_folder / "README.txt").write_text("about these images")
    (flat_folder / "stray.png").write_bytes((flat_folder / CLASSES[1] / "000.png").read_bytes())
    (flat_folder / CLASSES[0] / "Thumbs.db").write_bytes(b"\0junk")
    (flat_folder / CLASSES[0] / ".DS_Store").write_bytes(b"\0junk")  # hidden: not worth a word
    source = open_image_source(str(flat_folder), isolated)
    assert source.classes == list(CLASSES)
    assert len(source.splits["train"]) + len(source.splits["test"]) == 30
    assert source.notes == [
        f"{flat_folder}: left out 1 folder(s) with no images, so not classes: empty_class",
        f"{flat_folder}: left out 2 file(s) beside the class folders, in no class (README.txt, stray.png); "
        "move an image into its class's folder to use it",
        f"{flat_folder}: left out 1 file(s) that are not images by name ({CLASSES[0]}/Thumbs.db); "
        "images end in .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif, .tiff, .ppm, .pgm, .pbm",
    ]


def test_a_test_folder_with_a_class_unknown_to_train_is_refused(image_folder, isolated):
    write_images(image_folder / "test", 1, np.random.default_rng(0), classes=("triangle",))
    with pytest.raises(DeepstepError, match="classes that train/ does not have: triangle"):
        open_image_source(str(image_folder), isolated)


def test_the_shipped_sample_is_a_stratified_cifar10_sample(isolated):
    source = open_image_source("cifar10-sample", isolated)
    assert source.classes[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(source.splits["train"].labels).tolist() == [450] * 10
    assert np.bincount(source.splits["test"].labels).tolist() == [100] * 10


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10_batches(folder: Path) -> None:
    """A CIFAR-10 python-format folder (pickled batches, as its authors ship it): 20 train, 6 test."""
    import pickle

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 6)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10_NAMES}))


def files_pass_checksums(monkeypatch) -> None:
    """torchvision checks each batch file's md5: written here, they pass when present."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())


def test_cifar10_loads_through_torchvision_from_a_cifar_format_folder(isolated, monkeypatch):
    """The torchvision path, fed a CIFAR-10 python-format folder written here (integrity check patched)."""
    write_cifar10_batches(isolated / "cifar10" / "cifar-10-batches-py")
    files_pass_checksums(monkeypatch)
    source = open_image_source("cifar10", isolated)
    assert source.classes == CIFAR10_NAMES
    assert len(source.splits["train"]) == 20 and len(source.splits["test"]) == 6
    assert source.splits["train"].pixels.shape == (20, 32, 32, 3)


def test_cifar10_s_own_archive_or_folder_given_as_data_is_read_from_there_offline(isolated, tmp_path, monkeypatch):
    # they were read as image folders: "has class folders but no images in them"
    write_cifar10_batches(tmp_path / "downloads" / "cifar-10-batches-py")
    archive = tmp_path / "downloads" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "downloads" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    files_pass_checksums(monkeypatch)
    for given in (tmp_path / "downloads" / "cifar-10-batches-py", archive):
        source = open_image_source(str(given), isolated)
        assert source.classes == CIFAR10_NAMES and source.name == "cifar10"
        assert len(source.splits["train"]) == 20 and len(source.splits["test"]) == 6
    assert not (isolated / "cifar10").exists()  # read where given, not from (or into) the built-in's cache
    (tmp_path / "downloads" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DeepstepError, match=r"cifar-10-batches-py cannot be read as cifar10 \(files missing, or not"):
        open_image_source(str(tmp_path / "downloads" / "cifar-10-batches-py"), isolated)


def test_cifar10_offline_names_the_folder_to_fill_and_the_other_ways_in(isolated, monkeypatch):
    import urllib.error

    import torchvision

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DeepstepError) as err:
        open_image_source("cifar10", isolated)
    message = str(err.value)
    assert f"cifar10 is not in {isolated / 'cifar10'}" in message
    assert "cifar-10-python.tar.gz" in message and "--data" in message and "cifar10-sample" in message
    assert f"put cifar-10-python.tar.gz in {isolated / 'cifar10'} (or give its path as --data), or" in message
    assert "\n" not in message


def write_idx(folder: Path, per_class: int = 20, test_per_class: int = 5, gz: bool = True, classes: int = 3) -> None:
    """MNIST-format (IDX) files as MNIST ships them: class k is a bright bar at rows 4 + 7k of a
    noisy 28x28 grey image, so a small net can learn them."""
    import gzip
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(classes, dtype=np.uint8), n)
        rng.shuffle(labels)
        images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 4 + 7 * label : 8 + 7 * label, 3:25] = 230
        for name, payload in (
            (f"{prefix}-images-idx3-ubyte", struct.pack(">IIII", 2051, len(labels), 28, 28) + images.tobytes()),
            (f"{prefix}-labels-idx1-ubyte", struct.pack(">II", 2049, len(labels)) + labels.tobytes()),
        ):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)


def test_mnist_format_files_given_as_a_folder_are_read_offline_with_classes_by_number(isolated, tmp_path):
    # the folder of the four .gz files was read as an image folder: "has no class subfolders"
    write_idx(tmp_path / "digits")
    source = open_image_source(str(tmp_path / "digits"), isolated)
    assert source.name == "digits" and source.classes == ["0", "1", "2"]
    assert source.splits["train"].pixels.shape == (60, 28, 28) and len(source.splits["test"]) == 15
    assert source.splits["train"].pixels.dtype == np.uint8
    assert np.bincount(source.splits["test"].labels).tolist() == [5, 5, 5]
    label = source.splits["train"].labels[0]
    assert source.splits["train"].pixels[0, 4 + 7 * label : 8 + 7 * label, 3:25].min() == 230
    again = open_image_source(str(tmp_path / "digits"), isolated)
    assert again.fingerprint == source.fingerprint
    (tmp_path / "digits" / "t10k-labels-idx1-ubyte.gz").unlink()  # different content: another fingerprint
    write_idx(tmp_path / "other", test_per_class=6)
    (tmp_path / "other" / "t10k-labels-idx1-ubyte.gz").rename(tmp_path / "digits" / "t10k-labels-idx1-ubyte.gz")
    (tmp_path / "other" / "t10k-images-idx3-ubyte.gz").rename(tmp_path / "digits" / "t10k-images-idx3-ubyte.gz")
    assert open_image_source(str(tmp_path / "digits"), isolated).fingerprint != source.fingerprint


def test_mnist_format_files_unpacked_in_torchvision_s_layout_or_an_archive_are_found(isolated, tmp_path):
    write_idx(tmp_path / "data" / "FashionMNIST" / "raw", gz=False)
    fashion = open_image_source(str(tmp_path / "data"), isolated)  # torchvision's root, as its users have it
    assert fashion.name == "fashion-mnist" and fashion.classes[:2] == ["T-shirt/top", "Trouser"]
    assert len(fashion.classes) == 10 and len(fashion.splits["train"]) == 60
    write_idx(tmp_path / "wrapped" / "mnist")
    archive = tmp_path / "mnist.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "wrapped" / "mnist", arcname="mnist")
    source = open_image_source(str(archive), isolated)
    assert source.name == "mnist" and source.classes == ["0", "1", "2"] and len(source.splits["test"]) == 15


def test_mnist_s_own_files_are_known_by_their_checksums(isolated, tmp_path, monkeypatch):
    import hashlib

    import torchvision

    write_idx(tmp_path / "downloads")
    md5s = [
        (name, hashlib.md5((tmp_path / "downloads" / name).read_bytes()).hexdigest())
        for name, _ in torchvision.datasets.MNIST.resources
    ]
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", md5s)
    source = open_image_source(str(tmp_path / "downloads"), isolated)
    assert source.name == "mnist" and source.classes[:2] == ["0 - zero", "1 - one"]
    # the built-in's identity, so a run on `--data mnist` can be evaluated on these files
    assert source.fingerprint == hashlib.sha256(b"mnist|60|15").hexdigest()[:16]


def test_broken_mnist_format_files_are_named_in_one_line(isolated, tmp_path):
    import gzip

    folder = tmp_path / "digits"
    write_idx(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").rename(tmp_path / "kept.gz")
    with pytest.raises(DeepstepError, match=r"digits holds MNIST-format files but not t10k-labels-idx1-ubyte \(or"):
        open_image_source(str(folder), isolated)
    (tmp_path / "kept.gz").rename(folder / "t10k-labels-idx1-ubyte.gz")
    images = folder / "train-images-idx3-ubyte.gz"
    whole = gzip.decompress(images.read_bytes())
    for payload, message in (
        (b"not gzip", r"train-images-idx3-ubyte.gz cannot be unpacked \(Not a gzipped file"),
        (gzip.compress(whole)[:200], r"train-images-idx3-ubyte.gz cannot be unpacked"),
        (gzip.compress(b"\0\0\0\0" + whole[4:]), r"train-images-idx3-ubyte.gz is not an MNIST-format image file"),
        (gzip.compress(whole[:5000]), r"train-images-idx3-ubyte.gz is not an MNIST-format image file \(shape"),
    ):
        images.write_bytes(payload)
        with pytest.raises(DeepstepError, match=message) as err:
            open_image_source(str(folder), isolated)
        assert "\n" not in str(err.value)
    images.write_bytes(gzip.compress(whole))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DeepstepError, match=r"has 15 labels for the 60 images of .*train-images-idx3-ubyte.gz"):
        open_image_source(str(folder), isolated)
    assert not [p for p in (isolated / "unpacked").iterdir() if p.name.startswith(".")]  # no staging left
