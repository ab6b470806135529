import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import deepstep
from conftest import CLASSES
from deepstep.cli import main
from deepstep.errors import DeepstepError


def test_evaluate_writes_accuracy_loss_per_class_and_a_confusion_matrix(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["accuracy"] <= 1 and result["loss"] > 0 and result["images"] == 18
    matrix = result["confusion_matrix"]
    assert sum(map(sum, matrix)) == 18 and [sum(row) for row in matrix] == [6, 6, 6]
    diagonal = sum(matrix[i][i] for i in range(3))
    assert result["accuracy"] == diagonal / 18
    assert set(result["per_class_accuracy"]) == {"circle", "square", "stripes"}
    assert json.loads((trained_run / "test.json").read_text())["accuracy"] == result["accuracy"]
    assert (trained_run / "confusion_test.png").stat().st_size > 10_000
    csv_lines = (trained_run / "confusion_test.csv").read_text().splitlines()
    assert csv_lines[0] == "true\\predicted,circle,square,stripes" and len(csv_lines) == 4


def test_the_test_part_is_measured_once_and_a_second_time_only_with_force(trained_run, capsys):
    assert main(["evaluate", str(trained_run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(trained_run)]) == 2
    err = capsys.readouterr().err
    assert "test split was already evaluated" in err and "--force" in err and err.count("\n") == 1
    assert main(["evaluate", str(trained_run), "--force"]) == 0
    records = json.loads((trained_run / "evaluations.json").read_text())
    assert [r["forced"] for r in records] == [False, True]


def test_the_python_api_guards_the_test_part_too_and_says_how_to_force_it(trained_run):
    import deepstep

    run = deepstep.load_run(trained_run)
    first = run.evaluate(verbose=False)["accuracy"]
    with pytest.raises(DeepstepError, match=r"force=True"):
        run.evaluate(verbose=False)
    assert run.evaluate(force=True, verbose=False)["accuracy"] == first


def test_the_validation_part_can_be_measured_any_number_of_times(trained_run, capsys):
    for _ in range(2):
        assert main(["evaluate", str(trained_run), "--split", "val", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["images"] == 6
    assert not (trained_run / "evaluations.json").exists()  # no test evaluation happened


def test_the_validation_accuracy_matches_what_training_recorded_for_that_epoch(trained_run, capsys):
    import csv

    assert main(["evaluate", str(trained_run), "--split", "val", "--checkpoint", "last", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    with open(trained_run / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert abs(result["accuracy"] - float(last["val_acc"])) < 1e-6


def test_evaluation_runs_in_the_precision_asked_for_with_trainings_kernels_and_records_it(
    trained_run, capsys, monkeypatch
):
    from deepstep.engine import loop

    used = []
    real_evaluate = loop.evaluate

    def spy(model, step, batches, precision, **kwargs):
        used.append((precision.name, batches.channels_last))
        return real_evaluate(model, step, batches, precision, **kwargs)

    monkeypatch.setattr("deepstep.tasks.image_classification.evaluate", spy)
    results = {}
    for name in ("32", "bf16"):
        assert (
            main(["evaluate", str(trained_run), "--split", "val", "--precision", name, "--device", "cpu", "--json"])
            == 0
        )
        results[name] = json.loads(capsys.readouterr().out)
    assert [r["device"]["precision"] for r in results.values()] == ["32", "bf16"]
    # batches of 256: oneDNN's channels_last kernels, as training would pick for them
    assert used == [("32", True), ("bf16", True)]
    assert results["bf16"]["loss"] == pytest.approx(results["32"]["loss"], rel=0.05)  # bf16 rounds, nothing more


def test_evaluation_precision_auto_decides_as_training_does_and_the_test_record_keeps_it(trained_run, capsys):
    from deepstep.engine.precision import cpu_has_fast_bf16

    assert main(["evaluate", str(trained_run), "--precision", "auto"]) == 0
    picked = "bf16" if cpu_has_fast_bf16() else "32"  # lenet on 256 images has enough work for bf16 to pay
    report = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test: accuracy")]
    assert report[0].endswith(f"epoch 2, precision {picked})")
    record = json.loads((trained_run / "evaluations.json").read_text())[0]
    assert record["device"]["precision"] == picked and record["device"]["precision_reason"].startswith("auto: ")


def test_evaluation_is_fp32_unless_asked_and_an_unknown_precision_is_refused(trained_run, capsys):
    import deepstep

    assert main(["evaluate", str(trained_run), "--split", "val", "--json"]) == 0
    device = json.loads(capsys.readouterr().out)["device"]
    assert device["precision"] == "32" and device["precision_reason"] == "fp32, evaluate's default"
    with pytest.raises(DeepstepError, match="--precision 'fp8' is not one of auto, 32, bf16, 16"):
        deepstep.load_run(trained_run).evaluate("val", precision="fp8", verbose=False)


def test_evaluation_and_prediction_run_on_the_device_asked_for(trained_run, image_folder, capsys):
    assert main(["evaluate", str(trained_run), "--split", "val", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"]["type"] == "cpu"
    if torch.cuda.is_available():
        return
    image = str(image_folder / "test" / "circle" / "000.png")
    for command in (["evaluate", str(trained_run)], ["predict", str(trained_run), image]):
        assert main([*command, "--device", "cuda"]) == 2
        assert capsys.readouterr().err == (
            f"deepstep {command[0]}: error: --device cuda: no CUDA device is visible to PyTorch; "
            "use --device cpu or auto\n"
        )
    with pytest.raises(DeepstepError, match=r"^--device 'gpu' is not a device; use auto, cpu, cuda or mps$"):
        deepstep.load_run(trained_run).predict(image, device="gpu")


def test_evaluating_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a deepstep run folder" in capsys.readouterr().err


def test_an_image_given_where_the_run_goes_is_named_as_a_file(image_folder, capsys):
    image = next((image_folder / "test").rglob("*.png"))
    assert main(["predict", str(image)]) == 2
    assert capsys.readouterr().err == (
        f"deepstep predict: error: {image} is a file, not a run folder; give the folder `deepstep train` wrote "
        "(predict: the run first, then the images)\n"
    )


def test_the_human_readable_report_lists_every_class(trained_run, capsys):
    assert main(["evaluate", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test: accuracy") and all(c in out for c in ("circle", "square", "stripes"))
    assert Path(trained_run / "test.json").is_file()


def test_flip_tta_averages_each_image_with_its_mirror_and_is_recorded(trained_run, capsys):
    from deepstep.tasks.image_classification import ViewAveraged

    model = torch.nn.Conv2d(1, 1, (1, 3), bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[[[1.0, 0.0, 0.0]]]]))  # looks at the leftmost pixel only
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    assert ViewAveraged(model)(x).item() == 2.0  # (1 + 3) / 2
    assert main(["evaluate", str(trained_run), "--tta", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == "flip"
    assert json.loads((trained_run / "evaluations.json").read_text())[0]["tta"] == "flip"


class SquaredPixel(torch.nn.Module):
    """A model whose one logit is the square of one pixel: not linear, so each view counts."""

    def __init__(self, row: int, col: int):
        super().__init__()
        self.row, self.col = row, col

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, self.row, self.col, None] ** 2


def test_translate_tta_adds_the_image_moved_a_pixel_up_left_and_down_right_with_edges_reflected():
    from deepstep.tasks.image_classification import ViewAveraged

    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # pixel (i, j) holds 4i + j
    # Pixel (1, 1): itself 5 and mirrored 6; moved up-left 10 and 11; moved down-right 0 and 1.
    inner = ViewAveraged(SquaredPixel(1, 1), "flip-translate")(x).item()
    assert inner == (25 + 36) / 4 + (100 + 121) / 8 + (0 + 1) / 8
    # Pixel (0, 0) moved down-right comes from the reflected row and column: 5 (and 6 mirrored), not 0.
    corner = ViewAveraged(SquaredPixel(0, 0), "flip-translate")(x).item()
    assert corner == (0 + 9) / 4 + (25 + 36) / 8 + (25 + 36) / 8


def test_translate_tta_is_recorded_by_name_and_an_unknown_mode_is_refused(trained_run, capsys):
    from deepstep.tasks.image_classification import evaluate_run

    assert main(["evaluate", str(trained_run), "--split", "val", "--tta-translate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == "flip-translate"
    with pytest.raises(DeepstepError, match="--tta 'flip-translat' is not one of flip, flip-translate.*flip-translate"):
        evaluate_run(trained_run, "val", tta="flip-translat")


def test_a_run_whose_data_moved_says_so_and_is_evaluated_with_data_at_the_new_place(trained_run, image_folder, capsys):
    moved = image_folder.rename(image_folder.with_name("moved"))
    assert main(["evaluate", str(trained_run), "--split", "val"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"deepstep evaluate: error: {image_folder}, the data {trained_run} was trained on, is not there any more: "
        "give its new place with --data PATH"
    )
    assert main(["evaluate", str(trained_run), "--split", "val", "--data", str(moved)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("val: accuracy") and "changed" not in out  # the same content: the same fingerprint
    (moved / "train" / CLASSES[0] / "000.png").unlink()
    assert main(["evaluate", str(trained_run), "--split", "val", "--data", str(moved)]) == 2  # val part differs
    captured = capsys.readouterr()
    assert f"warning: the data at {moved} changed since this run was trained" in captured.out
    assert captured.err.endswith("evaluate --split test instead, or --split all to score every image of other data\n")


def _stream_from_files(run: Path) -> None:
    """Make `run` evaluate as a run too big for memory does: its images read from files in batches."""
    info = json.loads((run / "run.json").read_text())
    info["data"]["in_memory"] = False
    (run / "run.json").write_text(json.dumps(info))


@pytest.mark.parametrize("in_memory", [True, False])
def test_data_with_some_of_the_run_s_classes_is_scored_by_class_name_and_other_classes_are_refused(
    trained_run, image_folder, tmp_path, capsys, in_memory
):
    # labels are numbers among the folder's own classes: a folder of the run's 2nd and 3rd classes was
    # scored as its 1st and 2nd; a folder of other classes was scored as if it held the run's
    import shutil

    if not in_memory:
        _stream_from_files(trained_run)
    assert main(["evaluate", str(trained_run), "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)["per_class_accuracy"]
    some = tmp_path / "some"
    for split in ("train", "test"):
        for cls in CLASSES[1:]:
            shutil.copytree(image_folder / split / cls, some / split / cls)
    assert main(["evaluate", str(trained_run), "--data", str(some), "--force", "--json"]) == 0
    part = json.loads(capsys.readouterr().out)["per_class_accuracy"]
    assert part == {CLASSES[0]: None, **{cls: whole[cls] for cls in CLASSES[1:]}}
    (some / "train" / CLASSES[1]).rename(some / "train" / "other")
    (some / "test" / CLASSES[1]).rename(some / "test" / "other")
    assert main(["evaluate", str(trained_run), "--data", str(some), "--force"]) == 2
    assert capsys.readouterr().err.startswith(
        f"deepstep evaluate: error: {some} has classes this run was not trained on: other; the run knows "
    )
    flat = tmp_path / "flat"  # no test/ of its own: its test part is carved as training carves one, and said
    for cls in CLASSES[1:]:
        shutil.copytree(image_folder / "test" / cls, flat / cls)
    assert main(["evaluate", str(trained_run), "--data", str(flat), "--force"]) == 0
    assert "; its test part: carved from the folder: 20% of each class (stratified, seed 0)\n" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("in_memory", [True, False])
def test_split_all_scores_every_image_of_other_data_and_not_the_run_s_own(
    trained_run, image_folder, tmp_path, capsys, in_memory
):
    import shutil

    if not in_memory:
        _stream_from_files(trained_run)
    new = tmp_path / "new"  # no test/, and one image of a class: too few to carve a test part from
    for cls in CLASSES[1:]:
        shutil.copytree(image_folder / "test" / cls, new / cls)
    (new / CLASSES[0]).mkdir()
    shutil.copy(image_folder / "test" / CLASSES[0] / "000.png", new / CLASSES[0])
    assert main(["evaluate", str(trained_run), "--split", "all", "--data", str(new), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert main(["predict", str(trained_run), str(new), "--json"]) == 0
    predicted = {r["file"]: r["label"] for r in json.loads(capsys.readouterr().out)}
    right = [label == Path(file).parent.name for file, label in predicted.items()]
    assert result["images"] == len(predicted) == 13 and result["data"] == str(new)
    assert result["accuracy"] == pytest.approx(sum(right) / 13)
    assert json.loads((trained_run / "all.json").read_text())["images"] == 13
    assert not (trained_run / "evaluations.json").exists()  # not the run's test part: nothing recorded
    assert main(["evaluate", str(trained_run), "--split", "all"]) == 2
    assert capsys.readouterr().err == (
        "deepstep evaluate: error: --split all scores every example of other labelled data: give it with "
        "--data PATH (all of the run's own data would hold its training part)\n"
    )
    copy = shutil.copytree(image_folder, tmp_path / "copy")  # the run's data, moved: its training images
    assert main(["evaluate", str(trained_run), "--split", "all", "--data", str(copy)]) == 2
    assert capsys.readouterr().err == (
        f"deepstep evaluate: error: {copy} is the data this run trained on: --split all would score its "
        "training part too; use --split test\n"
    )


def test_a_run_trained_on_a_relative_path_is_evaluated_from_another_folder(image_folder, monkeypatch, capsys):
    from conftest import train_lenet

    monkeypatch.chdir(image_folder.parent)
    assert train_lenet(Path(image_folder.name), "--epochs", "1", out="runs/rel") == 0
    monkeypatch.chdir(image_folder)  # where image_folder.name does not exist
    capsys.readouterr()
    assert main(["evaluate", str(image_folder.parent / "runs" / "rel"), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "val"
    config = (image_folder.parent / "runs" / "rel" / "config.yaml").read_text()
    assert f"data: {image_folder}\n" in config


def test_the_image_report_gives_precision_recall_and_f1_that_accuracy_alone_hides():
    from deepstep.tasks.image_classification import _classification_report

    # a model that calls everything "a": 4 of 6 right, yet useless on b and c; d has no images
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0]]).repeat(6, 1)
    report = _classification_report(logits, labels, ["a", "b", "c", "d"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == {"precision": pytest.approx(4 / 6), "recall": 1.0, "f1": 0.8, "support": 4}
    assert report["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class_accuracy"] == {"a": 1.0, "b": 0.0, "c": 0.0, "d": None}
    assert report["macro_f1"] == pytest.approx(0.2)  # (0.8 + 0 + 0 + 0) / 4
    two = _classification_report(
        torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]]), torch.tensor([1, 0, 0]), ["x", "y"]
    )
    assert two["positive_class"] == "y" and two["roc_auc"] == 0.5 and two["f1"] == pytest.approx(2 / 3)
    assert "top5_accuracy" not in report and "top5_accuracy" not in two  # 5 classes or fewer: always 1


def test_with_more_than_five_classes_the_report_gives_the_top_5_accuracy():
    from deepstep.tasks.image_classification import _classification_report

    logits = torch.arange(7.0).repeat(3, 1)  # every image ranks the classes 6, 5, 4, 3, 2, 1, 0
    report = _classification_report(logits, torch.tensor([6, 2, 1]), list("abcdefg"))
    assert report["accuracy"] == pytest.approx(1 / 3) and report["top5_accuracy"] == pytest.approx(2 / 3)


def test_evaluate_prints_each_class_s_accuracy_precision_f1_and_count(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--split", "val"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"val: accuracy \d+\.\d\d%  macro F1 \d\.\d{3}  loss \d", lines[0])
    assert lines[1].split() == ["class", "accuracy", "(recall)", "precision", "F1", "images"]
    for line, name in zip(lines[2:5], ("circle", "square", "stripes"), strict=True):
        assert re.fullmatch(rf"  {name} +\d+\.\d\d%  +\d\.\d{{3}}  \d\.\d{{3}}  +\d+", line)
    result = json.loads(Path(trained_run, "val.json").read_text())
    shown = [int(line.split()[-1]) for line in lines[2:5]]
    assert shown == [result["per_class"][c]["support"] for c in ("circle", "square", "stripes")]


def test_a_two_class_run_reports_the_positive_class_s_f1_and_the_roc_auc(tmp_path, capsys):
    import numpy as np

    from conftest import train_lenet, write_images

    write_images(tmp_path / "pets", 15, np.random.default_rng(0), classes=("cat", "dog"))
    assert train_lenet(tmp_path / "pets", "--epochs", "2", out="runs/pets") == 0
    capsys.readouterr()
    assert main(["evaluate", "runs/pets"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    result = json.loads(Path("runs/pets/test.json").read_text())
    assert result["positive_class"] == "dog" and 0 <= result["roc_auc"] <= 1
    assert f"F1 {result['f1']:.3f} (dog as positive)  ROC AUC {result['roc_auc']:.3f}  loss" in first
    assert result["files"]["roc_png"] == "runs/pets/roc_test.png" and Path("runs/pets/roc_test.png").is_file()


def test_the_most_confident_mistakes_are_the_wrong_answers_with_the_highest_loss():
    from deepstep.tasks.image_classification import most_confident_mistakes

    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 4.0], [2.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 0])  # images 1, 2 and 3 are wrong; 2 the most surely so
    mistakes = most_confident_mistakes(logits, labels, ["cat", "dog"], count=2)
    assert [m["image"] for m in mistakes] == [2, 3]
    assert mistakes[0]["label"] == "cat" and mistakes[0]["predicted"] == "dog"
    assert mistakes[0]["probability"] == pytest.approx(float(torch.softmax(logits[2], 0)[1]), abs=1e-6)
    assert mistakes[0]["probability"] + mistakes[0]["label_probability"] == pytest.approx(1)
    assert most_confident_mistakes(logits[:1], labels[:1], ["cat", "dog"]) == []


@pytest.mark.parametrize("in_memory", [True, False])
def test_evaluate_shows_the_mistakes_it_was_most_sure_of(trained_run, image_folder, tmp_path, capsys, in_memory):
    import shutil

    if not in_memory:
        _stream_from_files(trained_run)
    swapped = tmp_path / "swapped"  # each class's test images filed under the next class: mostly wrong
    for cls, other in zip(CLASSES, CLASSES[1:] + CLASSES[:1], strict=True):
        shutil.copytree(image_folder / "test" / cls, swapped / other)
    assert main(["evaluate", str(trained_run), "--split", "all", "--data", str(swapped), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert main(["predict", str(trained_run), str(swapped), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)  # in the order evaluate reads the folder
    wrong = [p for p in predicted if p["label"] != Path(p["file"]).parent.name]
    assert 0 < len(result["mistakes"]) == min(16, len(wrong))
    for m in result["mistakes"]:
        said = predicted[m["image"]]
        assert (m["label"], m["predicted"]) == (Path(said["file"]).parent.name, said["label"])
        assert m["probability"] == pytest.approx(said["top_k"][0]["probability"], abs=1e-4)
    sureness = [m["label_probability"] for m in result["mistakes"]]
    assert sureness == sorted(sureness)  # the lowest probability of the label (highest loss) first
    assert Path(result["files"]["mistakes_png"]) == trained_run / "mistakes_all.png"
    assert (trained_run / "mistakes_all.png").stat().st_size > 10_000


def test_gradcam_draws_the_mistakes_under_their_maps_for_the_class_said(
    trained_run, image_folder, tmp_path, capsys, monkeypatch
):
    import shutil

    import deepstep.models.gradcam as gradcam

    swapped = tmp_path / "swapped"  # mostly wrong, as above
    for cls, other in zip(CLASSES, CLASSES[1:] + CLASSES[:1], strict=True):
        shutil.copytree(image_folder / "test" / cls, swapped / other)
    targets = []
    real = gradcam.grad_cam
    monkeypatch.setattr(gradcam, "grad_cam", lambda m, x, t, layer: targets.append(t.tolist()) or real(m, x, t, layer))
    evaluate = ["evaluate", str(trained_run), "--split", "all", "--data", str(swapped), "--json"]
    assert main(evaluate) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert "mistakes_gradcam_png" not in files and "roc_png" not in files and not targets  # 3 classes: no ROC
    assert main([*evaluate, "--gradcam"]) == 0
    result = json.loads(capsys.readouterr().out)
    classes = json.loads((trained_run / "run.json").read_text())["data"]["classes"]
    assert targets == [[classes.index(m["predicted"]) for m in result["mistakes"]]] and targets[0]
    picture = Path(result["files"]["mistakes_gradcam_png"])
    assert picture == trained_run / "mistakes_gradcam_all.png" and Image.open(picture).size[1] > 300
