"""Fixtures that make small, real data: image folders, archives, a CIFAR-format file."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepstep

# Tests start `python -m deepstep` and torchrun in other folders, where a relative PYTHONPATH (such
# as `src`, to test a checkout without installing it) would not find deepstep: make it absolute.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [
        str(Path(deepstep.__file__).resolve().parents[1]),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
)

CLASSES = ("circle", "square", "stripes")


def class_image(cls: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A (size, size, 3) uint8 image whose class is visible: a dominant colour plus noise."""
    base = np.zeros((size, size, 3), dtype=np.float64)
    base[..., cls % 3] = 180
    noise = rng.normal(0, 25, size=(size, size, 3))
    return np.clip(base + noise + 30, 0, 255).astype(np.uint8)


def write_images(
    folder: Path, per_class: int, rng: np.random.Generator, size: int = 32, classes=CLASSES, ext: str = "png"
) -> None:
    for cls, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(class_image(cls, rng, size)).save(folder / name / f"{i:03d}.{ext}")


def write_turned_photo(path: Path) -> None:
    """A 20x10 JPEG, white left half, whose EXIF says the camera was turned (orientation 6: rotate
    90 degrees clockwise to view): upright it is 10x20 with the white half on top."""
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data cache, torch hub cache and working folder (runs/ lands there)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSTEP_DATA", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """train/ and test/ with three classes of 32x32 images (20 and 6 per class)."""
    root = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    write_images(root / "train", 20, rng)
    write_images(root / "test", 6, rng)
    return root


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """One folder of class folders (no train/test): the test part must be carved."""
    root = tmp_path / "flat"
    write_images(root, 10, np.random.default_rng(1))
    return root


@pytest.fixture
def image_archive(image_folder: Path, tmp_path: Path) -> Path:
    archive = tmp_path / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, arcname="shapes")
    return archive


def train_lenet(folder: Path, *extra: str, out: str) -> int:
    """`deepstep train` of lenet in fp32 at batch 8 on `folder`, quietly; returns the exit code."""
    from deepstep.cli import main

    return main(
        [
            "train",
            "--data",
            str(folder),
            "--model",
            "lenet",
            "--batch-size",
            "8",
            "--precision",
            "32",
            "--out",
            out,
            "--quiet",
            *extra,
        ]
    )


@pytest.fixture
def trained_run(image_folder: Path) -> Path:
    """A tiny lenet run on the generated folder (fp32, 2 epochs)."""
    from deepstep.cli import main

    assert (
        main(
            [
                "train",
                "--data",
                str(image_folder),
                "--model",
                "lenet",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--precision",
                "32",
                "--out",
                "runs/tiny",
                "--quiet",
            ]
        )
        == 0
    )
    return Path("runs/tiny")


def write_pretrained_weights(name: str, edit=None) -> Path:
    """Random weights for torchvision's `name`, saved where its ImageNet weights download to.

    `edit(state_dict)` may change them first (e.g. bias one class). Returns the file's path.
    """
    import torch
    import torchvision

    from deepstep.models.pretrained import get_pretrained_spec

    torch.manual_seed(0)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    if edit is not None:
        edit(state)
    path = get_pretrained_spec(name).file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_seasonal_csv(path: Path, months: int = 96, seed: int = 0) -> Path:
    """A monthly series with a trend, a yearly season and noise: columns Month, Sales."""
    rng = np.random.default_rng(seed)
    t = np.arange(months)
    values = 100 + 0.8 * t + 20 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 2, months)
    lines = ["Month,Sales"] + [f"{2000 + i // 12}-{i % 12 + 1:02d},{v:.3f}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_sequence_folder(root: Path, count: int = 60, seed: int = 0) -> Path:
    """IndoorMovement's layout: dataset/seq_<id>.csv (rows = steps, 2 features, '#' header),
    dataset/targets.csv ('#id, label' with labels -1 / 1) and groups/groups.csv (3 groups).
    Class 1 rises, class -1 falls, so a recurrent net can learn it from the order of steps."""
    rng = np.random.default_rng(seed)
    (root / "dataset").mkdir(parents=True)
    (root / "groups").mkdir()
    targets, groups = ["#sequence_ID, class_label"], ["#sequence_ID, group"]
    for i in range(1, count + 1):
        label = 1 if i % 2 else -1
        steps = int(rng.integers(5, 16))
        ramp = np.linspace(0, label, steps)
        rows = np.stack([ramp + rng.normal(0, 0.1, steps), rng.normal(0, 1, steps)], axis=1)
        lines = ["#a, b"] + [f"{a:.4f},{b:.4f}" for a, b in rows]
        (root / "dataset" / f"seq_{i}.csv").write_text("\n".join(lines) + "\n")
        targets.append(f"{i},{label}")
        groups.append(f"{i},{1 + (i - 1) * 3 // count}")
    (root / "dataset" / "targets.csv").write_text("\n".join(targets) + "\n")
    (root / "groups" / "groups.csv").write_text("\n".join(groups) + "\n")
    return root


@pytest.fixture
def seasonal_csv(tmp_path: Path) -> Path:
    return write_seasonal_csv(tmp_path / "sales.csv")


@pytest.fixture
def sequence_folder(tmp_path: Path) -> Path:
    return write_sequence_folder(tmp_path / "moves")
