"""Data that does not fit in memory: files streamed with per-image torchvision transforms."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import train_lenet, write_images, write_turned_photo
from deepstep.cli import main


def _train(folder, *extra, out="runs/s"):
    return train_lenet(folder, "--workers", "1", *extra, out=out)


def test_a_streamed_run_trains_evaluates_and_predicts_like_an_in_memory_one(image_folder, capsys):
    assert _train(image_folder, "--epochs", "6", "--lr", "0.05", "--in-memory", "no") == 0
    info = json.loads(Path("runs/s/run.json").read_text())
    assert info["data"]["in_memory"] is False and info["data"]["normalization"]["origin"].startswith("computed on")
    capsys.readouterr()
    assert main(["evaluate", "runs/s", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 18 and result["accuracy"] > 0.9
    assert main(["predict", "runs/s", str(image_folder / "test"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    correct = sum(p["label"] == Path(p["file"]).parent.name for p in predictions)
    assert correct / 18 == result["accuracy"]


def test_a_streamed_corrupt_image_is_skipped_and_reported(image_folder, capsys):
    (image_folder / "train" / "circle" / "bad.png").write_bytes(b"\x89PNG broken")
    assert _train(image_folder, "--epochs", "1", "--in-memory", "no", "--val-split", "0") == 0
    assert "skipped 1 unreadable image(s) while streaming" in capsys.readouterr().out


def test_a_streamed_corrupt_image_with_strict_is_a_one_line_error(image_folder, capsys):
    bad = image_folder / "train" / "circle" / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    assert _train(image_folder, "--epochs", "1", "--in-memory", "no", "--val-split", "0", "--strict") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1


def test_more_workers_than_cores_is_one_note_not_dataloaders_warnings(image_folder, capsys, recwarn):
    import os

    from deepstep.hardware import available_cores

    workers = max(len(os.sched_getaffinity(0)), available_cores()) + 1  # DataLoader counts the former
    args = ["--workers", str(workers), "--epochs", "1", "--in-memory", "no", "--val-split", "0"]
    assert train_lenet(image_folder, *args, out="runs/w") == 0
    assert f"note: --workers {workers} on {available_cores()} cores: the workers take turns on them" in (
        capsys.readouterr().out
    )
    assert not [w for w in recwarn if "DataLoader will create" in str(w.message)]


def test_resize_then_center_crop_is_the_same_in_training_and_in_predict(tmp_path, capsys):
    root = tmp_path / "wide"
    rng = np.random.default_rng(0)
    write_images(root / "train", 12, rng, size=48)
    write_images(root / "test", 4, rng, size=48)
    assert _train(root, "--epochs", "4", "--lr", "0.05", "--resize", "40", out="runs/r") == 0
    record = json.loads(Path("runs/r/checkpoints/best.json").read_text())
    assert record["resize"] == 40 and record["input_size"] == [3, 32, 32]
    capsys.readouterr()
    assert main(["evaluate", "runs/r", "--json"]) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    assert main(["predict", "runs/r", str(root / "test"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert sum(p["label"] == Path(p["file"]).parent.name for p in predictions) / 12 == accuracy


def test_a_center_crop_after_resizing_keeps_the_middle(tmp_path):
    from deepstep.data.decode import read_image

    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 30:50] = 255  # a white band in the middle of a wide image
    Image.fromarray(image).save(tmp_path / "band.png")
    out = read_image(tmp_path / "band.png", (20, 20), 3, resize=20)  # 40x80 -> 20x40 -> middle 20x20
    assert out[:, :, 5:15].mean() > 200 and out[:, :, :3].mean() < 30


def test_a_streamed_exif_rotated_photo_is_turned_upright(tmp_path):
    from deepstep.data.sources import ImageSplit
    from deepstep.data.streaming import ImageFiles, eval_transform

    write_turned_photo(tmp_path / "turned.jpg")
    split = ImageSplit(labels=np.array([0]), files=[tmp_path / "turned.jpg"])
    x, label = ImageFiles(split, eval_transform((20, 10), 20, [0.0], [1.0]), channels=1)[0]
    assert x.shape == (1, 20, 10) and label == 0
    assert x[0, :10].mean() > 0.8 and x[0, 10:].mean() < 0.2  # white moved to the top


def test_the_streamed_normalisation_is_the_sample_s_mean_and_std_summed_image_by_image(image_folder):
    # it stacked the sample as one float64 array first: 6 GB for 1,000 images at 512x512
    from deepstep.data.sources import ImageSplit
    from deepstep.data.streaming import sample_images, sample_stats

    files = sorted((image_folder / "train").rglob("*.png"))
    (image_folder / "bad.png").write_bytes(b"not an image")
    split = ImageSplit(labels=np.zeros(len(files) + 1, dtype=np.int64), files=[*files, image_folder / "bad.png"])
    stack = sample_images(split, (24, 20), None, 3, count=40, seed=3).astype(np.float64) / 255
    assert len(stack) == 39  # seed 3 draws the unreadable file, which is left out of both
    mean, std = sample_stats(split, (24, 20), None, 3, count=40, seed=3)
    assert np.allclose(mean, stack.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(std, stack.std(axis=(0, 2, 3)), atol=1e-6)
    assert min(std) > 0.01  # the shapes are not flat
