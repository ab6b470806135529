"""Images whose classes a CSV names (--labels), as Kaggle ships data sets: one folder of images,
and rows 'image,class' beside it, in place of a folder per class."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, class_image
from deepstep.cli import main
from deepstep.data.folders import scan_image_folder
from deepstep.errors import DeepstepError


def write_kaggle_folder(root: Path, per_class: int = 12, seed: int = 0, header: str = "id,breed") -> Path:
    """root/train/<hex id>.jpg and root/labels.csv with rows '<hex id>,<class>' (no extension)."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    rows = [header]
    for i in range(per_class * len(CLASSES)):
        cls = i % len(CLASSES)
        name = f"{rng.integers(2**40):010x}"
        Image.fromarray(class_image(cls, rng)).save(root / "train" / f"{name}.jpg")
        rows.append(f"{name},{CLASSES[cls]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_csv_names_each_image_s_class_by_its_id_without_the_extension(tmp_path):
    root = write_kaggle_folder(tmp_path / "dogs")
    (root / "train" / "unlabelled.jpg").write_bytes((root / "train").glob("*.jpg").__next__().read_bytes())
    layout = scan_image_folder(root, "labels.csv")  # found inside the folder
    assert layout.classes == list(CLASSES) and layout.labels_file == root / "labels.csv"
    rows = dict(line.split(",") for line in (root / "labels.csv").read_text().splitlines()[1:])
    train = layout.splits["train"]
    assert len(train.files) == len(rows) == 36
    assert all(CLASSES[label] == rows[file.stem] for file, label in zip(train.files, train.labels, strict=True))
    assert train.labels == sorted(train.labels)  # grouped by class, as class folders give them
    assert (
        len(layout.notes) == 1
        and "left out 1 image(s) that labels.csv does not name (train/unlabelled.jpg)" in (layout.notes[0])
    )


def test_paths_with_extensions_numeric_classes_and_semicolons_are_read(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x.png", "y.png", "z.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "a" / name)
    (tmp_path / "classes.csv").write_text(f"a/x.png;10\n./a/y.png;2\n{tmp_path / 'a' / 'z.png'};2\n")  # no header
    layout = scan_image_folder(tmp_path, str(tmp_path / "classes.csv"))
    assert layout.classes == ["2", "10"]  # numbers in their order, not as text
    assert [
        (f.name, layout.classes[label]) for f, label in zip(*vars(layout.splits["train"]).values(), strict=True)
    ] == [
        ("y.png", "2"),
        ("z.png", "2"),
        ("x.png", "10"),
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("id,cat,dog\n", "--labels reads two columns, each image and its class; this has 3 (id, cat, dog); a column"),
        ("id,label\nmissing,cat\n", "names 1 image(s) that are not under"),
        ("id,label\nsame,cat\n", "'same' is the name of several images under"),
        ("id,label\nb,cat\nb.png,dog\n", "gives b.png two classes: cat and dog"),
        ("id,label\nb,\n", "line 2: b has no class"),
        ("b.png,cat\n\nsame.jpg,\n", "line 3: same.jpg has no class"),  # no header; a blank line counted
        ("id,label\n", "holds no 'image,class' rows"),
    ],
)
def test_a_table_that_cannot_name_one_class_per_image_is_a_one_line_error(tmp_path, table, message):
    for name in ("same.jpg", "same.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text(table)
    with pytest.raises(DeepstepError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scan_image_folder(tmp_path, "labels.csv")


def test_train_evaluate_predict_and_show_read_the_classes_from_the_csv(tmp_path, capsys):
    root = write_kaggle_folder(tmp_path / "dogs")
    train = ["train", "--data", str(root), "--labels", "labels.csv", "--model", "lenet", "--batch-size", "8"]
    assert main([*train, "--epochs", "3", "--precision", "32", "--out", "runs/k", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert f"data: dogs (classes from labels.csv): {27} train / 3 val" in said
    info = json.loads(Path("runs/k/run.json").read_text())["data"]
    assert info["classes"] == list(CLASSES) and info["labels"] == str(root / "labels.csv")
    assert main(["evaluate", "runs/k", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6  # a fifth of each class carved for test
    assert main(["show", str(root), "--labels", "labels.csv", "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 300
    capsys.readouterr()
    other = write_kaggle_folder(tmp_path / "more", per_class=2, seed=1, header="file,label")
    assert (
        main(
            [
                "evaluate",
                "runs/k",
                "--split",
                "all",
                "--data",
                str(other),
                "--labels",
                str(other / "labels.csv"),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["images"] == 6
    assert main(["train", "--out", "runs/k", "--resume", "--epochs", "4", "--labels", str(other / "labels.csv")]) == 2
    assert "cannot resume runs/k with a different labels" in capsys.readouterr().err


def test_relabelling_the_images_changes_the_data_s_fingerprint(tmp_path):
    from deepstep.data.sources import open_image_source

    root = write_kaggle_folder(tmp_path / "dogs")
    before = open_image_source(str(root), tmp_path / "cache", labels="labels.csv").fingerprint
    lines = (root / "labels.csv").read_text().splitlines()
    name = lines[1].split(",")[0]
    lines[1] = f"{name},{CLASSES[1] if lines[1].endswith(CLASSES[0]) else CLASSES[0]}"  # one image, other class
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    assert open_image_source(str(root), tmp_path / "cache", labels="labels.csv").fingerprint != before


def test_labels_for_data_that_has_its_own_or_for_a_series_are_refused(tmp_path, seasonal_csv, capsys):
    (tmp_path / "labels.csv").write_text("id,label\n")
    cases = [
        (["--data", "cifar10-sample"], "--labels names the classes of a folder's images; cifar10-sample has its own"),
        (["--data", str(seasonal_csv), "--target", "Sales"], "--labels does not apply to forecasting"),
        (["--data", str(tmp_path)], "holds no images"),
    ]
    for argv, message in cases:
        assert main(["train", *argv, "--labels", str(tmp_path / "labels.csv"), "--epochs", "1"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert main(["train", "--data", str(tmp_path), "--labels", "nowhere.csv"]) == 2
    assert f"--labels nowhere.csv not found (looked as given and inside {tmp_path})" in capsys.readouterr().err
