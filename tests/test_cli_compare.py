import json
from pathlib import Path

import yaml
from PIL import Image

from conftest import train_lenet
from deepstep.cli import main


def _compare(capsys, *argv):
    capsys.readouterr()  # what training printed
    assert main(["compare", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_runs_are_set_side_by_side_with_the_options_that_differ_and_their_best_validation(
    image_folder, tmp_path, capsys
):
    assert train_lenet(image_folder, "--epochs", "2", "--lr", "0.01", out="runs/a") == 0
    assert train_lenet(image_folder, "--epochs", "3", "--lr", "0.05", out="runs/b") == 0
    out = tmp_path / "both.png"
    result = _compare(capsys, "runs/a", "runs/b", "--out", str(out))
    assert result["task"] == "image-classification" and result["differing"] == ["epochs", "lr"]
    a, b = result["runs"]
    assert (a["run"], a["epochs"], a["options"]) == ("runs/a", 2, {"epochs": 2, "lr": 0.01})
    assert (b["run"], b["epochs"], b["options"]) == ("runs/b", 3, {"epochs": 3, "lr": 0.05})
    info = json.loads(Path("runs/b/run.json").read_text())["result"]
    assert b["best_val_acc"] == info["best_val_acc"] and b["best_epoch"] == info["best_epoch"]
    assert a["test"] is None and b["test"] is None  # nothing measured on the test part by comparing
    assert result["picture"] == str(out) and Image.open(out).size[0] > 800


def test_the_table_shows_the_test_result_only_of_runs_evaluated_on_it(image_folder, tmp_path, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/a") == 0
    assert train_lenet(image_folder, "--epochs", "1", "--seed", "1", out="runs/b") == 0
    capsys.readouterr()
    assert main(["evaluate", "runs/b", "--json"]) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    assert main(["compare", "runs/a", "runs/b", "--out", str(tmp_path / "c.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = ["run", "model", "epochs", "best", "val", "acc", "val", "part", "train", "s", "test", "--seed"]
    assert lines[0].split() == header
    assert lines[2].startswith("runs/a ") and "not measured" in lines[2] and lines[2].endswith(" 0")
    assert lines[3].startswith("runs/b ") and f"{accuracy:.2%}" in lines[3] and lines[3].endswith(" 1")
    assert lines[2].split()[6] == "A" and lines[3].split()[6] == "B"  # --seed draws the validation part
    assert lines[4].startswith("the runs were validated on 2 different parts")
    assert "of each class of the train part (stratified, seed 0)" in lines[5] and lines[5].split()[0] == "A"
    assert "of each class of the train part (stratified, seed 1)" in lines[6] and lines[6].split()[0] == "B"
    assert lines[-1] == f"curves: {tmp_path / 'c.png'}"


def test_runs_validated_on_other_examples_are_told_apart_even_when_no_option_differs(image_folder, tmp_path, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/a") == 0
    assert train_lenet(image_folder, "--epochs", "1", "--lr", "0.1", out="runs/b") == 0
    first = sorted((image_folder / "train").glob("*/*.png"))[0]
    Image.new("RGB", (32, 32), (9, 99, 199)).save(first)  # the data changed between the runs
    assert train_lenet(image_folder, "--epochs", "1", out="runs/c") == 0
    result = _compare(capsys, "runs/a", "runs/b", "runs/c", "--out", str(tmp_path / "c.png"))
    assert [r["val_part"] for r in result["runs"]] == ["A", "A", "B"] and result["differing"] == ["lr"]
    fingerprints = [json.loads(Path(f"runs/{r}/run.json").read_text())["data"]["fingerprint"] for r in "ac"]
    assert [part.rsplit(" ", 1)[1] for part in result["val_parts"].values()] == [f[:8] for f in fingerprints]
    assert main(["compare", "runs/a", "runs/b", "--out", str(tmp_path / "c.png")]) == 0
    assert "val part" not in capsys.readouterr().out  # one part: nothing to tell apart


def test_an_option_an_older_run_s_config_lacks_counts_as_its_default(image_folder, tmp_path, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/a") == 0
    assert train_lenet(image_folder, "--epochs", "1", "--ema", "0.9", out="runs/b") == 0
    config = yaml.safe_load(Path("runs/a/config.yaml").read_text())
    del config["ema"], config["mixup"]  # as a run written before these options existed
    Path("runs/a/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = _compare(capsys, "runs/a", "runs/b", "--out", str(tmp_path / "c.png"))
    assert result["differing"] == ["ema"] and [r["options"]["ema"] for r in result["runs"]] == [0.0, 0.9]


def test_curves_may_be_drawn_against_seconds_and_runs_without_validation_have_training_curves(
    image_folder, tmp_path, capsys
):
    assert train_lenet(image_folder, "--epochs", "2", "--val-split", "0", out="runs/a") == 0
    assert train_lenet(image_folder, "--epochs", "2", out="runs/b") == 0
    result = _compare(capsys, "runs/a", "runs/b", "--x", "seconds", "--out", str(tmp_path / "s"))
    assert result["picture"] == str(tmp_path / "s.png") and (tmp_path / "s.png").is_file()
    assert result["runs"][0]["best_val_acc"] is None and "val-split" in result["differing"]


def test_runs_of_other_tasks_and_folders_that_are_not_runs_are_one_line_errors(image_folder, seasonal_csv, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/a") == 0
    forecast = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--epochs", "1", "--hidden", "4"]
    assert main([*forecast, "--out", "runs/f", "--quiet"]) == 0
    cases = [
        (["runs/a", "runs/f"], "runs/a is image-classification and runs/f forecasting: compare runs of one task"),
        (["runs/nothing"], "run folder runs/nothing does not exist"),
        (["runs/a", "runs/nothing"], "run folder runs/nothing does not exist"),
        ([str(image_folder)], "is a run folder (with run.json) written by `deepstep train`"),
        (["runs/a", "--out", "runs"], "runs is a folder: give a picture's file name"),
    ]
    for argv, message in cases:
        assert main(["compare", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_forecasting_runs_are_compared_by_validation_loss_and_test_errors(seasonal_csv, tmp_path, capsys):
    forecast = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--hidden", "4", "--quiet"]
    assert main([*forecast, "--epochs", "2", "--out", "runs/f2"]) == 0
    assert main([*forecast, "--epochs", "3", "--out", "runs/f3"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "runs/f3", "--json"]) == 0
    errors = json.loads(capsys.readouterr().out)["model"]
    result = _compare(capsys, "runs/f2", "runs/f3", "--out", str(tmp_path / "f.png"))
    assert result["task"] == "forecasting" and result["differing"] == ["epochs"]
    assert [r["val_part"] for r in result["runs"]] == ["A", "A"] and len(result["val_parts"]) == 1
    assert result["runs"][1]["test"] == {"mae": errors["mae"], "mape": errors["mape"]}
    assert main(["compare", "runs/f2", "runs/f3", "--out", str(tmp_path / "f.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "best val loss" in lines[0] and f"MAE {errors['mae']:.4g}, MAPE {errors['mape']:.2f}%" in lines[3]
    assert main([*forecast, "--epochs", "2", "--val-size", "15", "--out", "runs/v15"]) == 0
    result = _compare(capsys, "runs/f2", "runs/v15", "--out", str(tmp_path / "f.png"))
    assert [r["val_part"] for r in result["runs"]] == ["A", "B"] and result["val_parts"]["B"].startswith("15 steps")


def test_the_python_api_compares_runs_or_their_folders_without_drawing_when_asked(image_folder, capsys):
    import deepstep

    assert train_lenet(image_folder, "--epochs", "1", out="runs/a") == 0
    assert train_lenet(image_folder, "--epochs", "1", "--lr", "0.1", out="runs/b") == 0
    result = deepstep.compare([deepstep.load_run("runs/a"), "runs/b"], out=None)
    assert result["picture"] is None and result["differing"] == ["lr"] and not Path("compare.png").exists()


def test_what_a_glob_takes_in_besides_run_folders_is_left_out_with_a_note(image_folder, tmp_path, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/a") == 0
    assert train_lenet(image_folder, "--epochs", "1", "--lr", "0.1", out="runs/b") == 0
    Path("runs/compare.png").write_bytes(b"an earlier picture")
    Path("runs/failed").mkdir()  # a run that never started
    capsys.readouterr()
    argv = ["compare", "runs/a", "runs/b", "runs/compare.png", "runs/failed", "--out", str(tmp_path / "c.png")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "note: left out runs/compare.png: not a run folder (no run.json)",
        "note: left out runs/failed: not a run folder (no run.json)",
    ]
    assert [line.split()[0] for line in captured.out.splitlines()[2:4]] == ["runs/a", "runs/b"]


def test_sequence_runs_with_another_test_part_were_validated_on_other_sequences(sequence_folder, tmp_path, capsys):
    train = ["train", "--data", str(sequence_folder), "--hidden", "4", "--epochs", "1", "--quiet"]
    assert main([*train, "--out", "runs/a"]) == 0
    assert main([*train, "--lr", "0.01", "--out", "runs/b"]) == 0
    assert main([*train, "--test-size", "0.3", "--out", "runs/c"]) == 0
    result = _compare(capsys, "runs/a", "runs/b", "runs/c", "--out", str(tmp_path / "s.png"))
    assert [r["val_part"] for r in result["runs"]] == ["A", "A", "B"]
    assert "beside a test part of 30% of each class" in result["val_parts"]["B"]


def test_runs_of_two_models_show_the_model_once(image_folder, tmp_path, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/a") == 0
    assert train_lenet(image_folder, "--epochs", "1", "--model", "simple-cnn", out="runs/b") == 0
    result = _compare(capsys, "runs/a", "runs/b", "--out", str(tmp_path / "c.png"))
    assert result["differing"] == ["model"]
    assert main(["compare", "runs/a", "runs/b", "--out", str(tmp_path / "c.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "model", "epochs", "best", "val", "acc", "train", "s", "test"]
    assert [line.split()[1] for line in lines[2:4]] == ["lenet", "simple-cnn"]
