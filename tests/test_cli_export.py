import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from deepstep.cli import main


def test_onnx_export_matches_pytorch_and_records_what_a_consumer_needs(trained_run, capsys):
    assert main(["export", str(trained_run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["check"]["max_abs_diff"] < 1e-4
    path = trained_run / "export" / "model.onnx"
    assert record["path"] == str(path)
    side = json.loads((trained_run / "export" / "model.onnx.json").read_text())
    assert side["classes"] == ["circle", "square", "stripes"]
    assert side["preprocessing"]["crop"] == [32, 32] and len(side["preprocessing"]["mean"]) == 3
    # the file works alone: any batch size, outputs as PyTorch's
    from deepstep.api import load_run
    from deepstep.engine.run_dir import RunDir
    from deepstep.tasks.image_classification import load_trained

    model = load_trained(RunDir.open(load_run(trained_run).path)).model
    x = torch.randn(5, 3, 32, 32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [got] = session.run(None, {"input": x.numpy()})
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("name, flags", [("lenet.pt", ["--format", "torchscript"]), ("lenet.PTH", [])])
def test_torchscript_export_to_a_chosen_file(name, flags, trained_run, tmp_path, capsys):
    out = tmp_path / name  # without --format, the file's ending says which
    assert main(["export", str(trained_run), *flags, "--out", str(out)]) == 0
    assert "max abs difference from PyTorch" in capsys.readouterr().out
    loaded = torch.jit.load(str(out))
    assert loaded(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert json.loads((tmp_path / f"{name}.json").read_text())["format"] == "torchscript"


def test_a_file_named_for_one_format_is_not_written_in_the_other(trained_run, tmp_path, capsys):
    out = tmp_path / "lenet.onnx"
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"deepstep export: error: --out {out} ends in .onnx, an ONNX file, but --format is torchscript: "
        "call it lenet.pt, or leave out --format\n"
    )
    assert not out.exists()


def test_export_of_a_missing_run_is_one_line(capsys):
    assert main(["export", "no-such-run"]) == 2
    assert "run folder no-such-run does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_to_a_place_that_cannot_be_written_is_one_line(trained_run, tmp_path, fmt, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "model.out"
    assert main(["export", str(trained_run), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out}: cannot write there" in err and "choose another --out" in err


def _onnx_run(path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [got] = session.run(None, {"input": x.astype(np.float32)})
    return got


@pytest.mark.parametrize("relative", ["--relative", "--no-relative"])
def test_an_exported_forecaster_forecasts_from_raw_values_as_predict_does(seasonal_csv, relative, capsys):
    train = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--lookback", "12", "--horizon", "6"]
    assert main([*train, "--test-size", "12", "--epochs", "3", "--hidden", "8", relative, "--out", "runs/f"]) == 0
    assert main(["export", "runs/f"]) == 0
    side = json.loads(Path("runs/f/export/model.onnx.json").read_text())
    assert side["task"] == "forecasting" and side["target"] == "Sales"
    assert side["input"]["shape"] == ["batch", 12, 1] and side["output"]["shape"] == ["batch", 6]
    capsys.readouterr()
    assert main(["predict", "runs/f", "--json"]) == 0
    expected = [row["value"] for row in json.loads(capsys.readouterr().out)["forecast"]]
    sales = np.loadtxt(seasonal_csv, delimiter=",", skiprows=1, usecols=1)
    got = _onnx_run("runs/f/export/model.onnx", sales[-12:].reshape(1, 12, 1))
    np.testing.assert_allclose(got[0], expected, rtol=1e-4)  # in Sales' own units, no scaling outside


def test_an_exported_sequence_classifier_takes_raw_sequences_of_any_length(sequence_folder, capsys):
    train = ["train", "--data", str(sequence_folder), "--hidden", "8", "--epochs", "2", "--bidirectional"]
    assert main([*train, "--out", "runs/s", "--quiet"]) == 0
    assert main(["export", "runs/s", "--format", "onnx"]) == 0
    side = json.loads(Path("runs/s/export/model.onnx.json").read_text())
    assert side["classes"] == ["-1", "1"] and side["input"]["shape"] == ["batch", "time", 2]
    for name in ("seq_1.csv", "seq_2.csv"):  # two lengths
        csv_path = sequence_folder / "dataset" / name
        capsys.readouterr()
        assert main(["predict", "runs/s", str(csv_path), "--json"]) == 0
        expected = json.loads(capsys.readouterr().out)[0]["probabilities"]["1"]
        rows = np.loadtxt(csv_path, delimiter=",", comments="#")
        [[logit]] = _onnx_run("runs/s/export/model.onnx", rows[None])
        assert abs(1 / (1 + np.exp(-logit)) - expected) < 1e-5


def test_a_forecaster_of_large_values_passes_its_check_relative_to_their_size(tmp_path, capsys):
    from conftest import write_seasonal_csv

    lines = write_seasonal_csv(tmp_path / "small.csv").read_text().splitlines()
    big = tmp_path / "big.csv"  # the same series a thousand times larger: values ~1e5
    big.write_text("\n".join([lines[0]] + [f"{m},{float(v) * 1e3:.1f}" for m, v in (r.split(",") for r in lines[1:])]))
    train = ["train", "--data", str(big), "--target", "Sales", "--lookback", "12", "--horizon", "3", "--quiet"]
    assert main([*train, "--test-size", "12", "--epochs", "2", "--hidden", "8", "--out", "runs/big"]) == 0
    capsys.readouterr()
    # float32 forecasts of ~1e5 differ from onnxruntime's in their last digits (0.016 here), far
    # above an absolute 1e-4 but a tiny fraction of the values
    assert main(["export", "runs/big", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    assert 10 < check["tolerance"] < 100 and check["max_abs_diff"] < check["tolerance"]
