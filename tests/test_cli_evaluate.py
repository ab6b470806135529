import json
from pathlib import Path

from deepstep.cli import main


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


def test_evaluating_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a deepstep run folder" in capsys.readouterr().err


def test_the_human_readable_report_lists_every_class(trained_run, capsys):
    assert main(["evaluate", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test: accuracy") and all(c in out for c in ("circle", "square", "stripes"))
    assert Path(trained_run / "test.json").is_file()


def test_flip_tta_averages_each_image_with_its_mirror_and_is_recorded(trained_run, capsys):
    import torch

    from deepstep.tasks.image_classification import FlipAveraged

    model = torch.nn.Conv2d(1, 1, (1, 3), bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[[[1.0, 0.0, 0.0]]]]))  # looks at the leftmost pixel only
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    assert FlipAveraged(model)(x).item() == 2.0  # (1 + 3) / 2
    assert main(["evaluate", str(trained_run), "--tta", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] is True
    assert json.loads((trained_run / "evaluations.json").read_text())[0]["tta"] is True
