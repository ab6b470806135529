"""Forecasting and sequence classification through the same train / evaluate / predict commands."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import deepstep
from deepstep.cli import main
from deepstep.errors import DeepstepError


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def _forecast(csv_path, *extra, out="runs/f", target="Sales"):
    return main(
        [
            "train",
            "--data",
            str(csv_path),
            *(["--target", target] if target else []),
            "--lookback",
            "12",
            "--horizon",
            "6",
            "--test-size",
            "12",
            "--val-size",
            "12",
            "--epochs",
            "30",
            "--hidden",
            "16",
            "--out",
            out,
            "--quiet",
            *extra,
        ]
    )


def test_a_csv_is_forecast_with_an_lstm_by_default_and_beats_the_naive_forecast(seasonal_csv, capsys):
    assert _forecast(seasonal_csv) == 0
    info = json.loads(Path("runs/f/run.json").read_text())
    assert info["task"] == "forecasting" and info["model"]["name"] == "lstm"
    assert info["data"]["spans"] == {"train": 72, "val": 12, "test": 12, "val_start": 72, "test_start": 84}
    with open("runs/f/metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert {"train_loss", "val_loss", "seconds", "windows_per_s"} <= set(row) and "images_per_s" not in row
    capsys.readouterr()
    assert main(["evaluate", "runs/f", "--baselines", ","]) == 2  # as `baseline` refuses it, not read as none
    assert "--baselines names none; choose from naive, seasonal_naive, sarima" in capsys.readouterr().err
    assert main(["evaluate", "runs/f", "--order", "1,1,1"]) == 2  # before the test part is measured
    assert "--order set the SARIMA baseline's orders, but no baselines are asked for" in capsys.readouterr().err
    assert main(["evaluate", "runs/f", "--baselines", "--json"]) == 0
    result = _json(capsys)
    assert set(result["model"]) == {"mae", "rmse", "mape", "smape", "mase"}
    assert set(result["baselines"]) == {"naive", "seasonal_naive", "sarima"}
    assert result["origins"] == 2 and result["horizon"] == 6
    assert result["model"]["mae"] < result["baselines"]["naive"]["mae"]
    assert Path("runs/f/forecast_test.png").stat().st_size > 10_000


def test_the_test_span_is_forecast_once_and_each_time_recorded(seasonal_csv, capsys):
    _forecast(seasonal_csv, "--epochs", "2")
    assert main(["evaluate", "runs/f", "--json"]) == 0
    assert main(["evaluate", "runs/f"]) == 2
    assert "already evaluated" in capsys.readouterr().err
    assert main(["evaluate", "runs/f", "--force", "--backtest", "--json"]) == 0
    history = json.loads(Path("runs/f/evaluations.json").read_text())
    assert [e["forced"] for e in history] == [False, True]


def test_predict_forecasts_the_steps_after_the_data_as_csv_and_plot(seasonal_csv, capsys):
    _forecast(seasonal_csv, "--epochs", "2")
    capsys.readouterr()
    assert main(["predict", "runs/f", "--json"]) == 0
    result = _json(capsys)
    assert [r["time"] for r in result["forecast"]] == [
        "2008-01-01",
        "2008-02-01",
        "2008-03-01",
        "2008-04-01",
        "2008-05-01",
        "2008-06-01",
    ]
    assert result["notes"] == []
    assert Path("runs/f/forecast.csv").read_text().splitlines()[0] == "time,Sales"
    assert Path("runs/f/forecast.png").stat().st_size > 10_000
    moved = seasonal_csv.rename(seasonal_csv.with_name("moved.csv"))
    assert main(["predict", "runs/f", "--json"]) == 2
    assert f"{seasonal_csv}, the data runs/f was trained on, is not there any more: give its new place with --data" in (
        capsys.readouterr().err
    )
    assert main(["predict", "runs/f", "--json", "--data", str(moved)]) == 0
    assert _json(capsys)["forecast"] == result["forecast"]
    # a run whose target was inferred (the only column), given another series: it forecast that one
    assert _forecast(moved, "--epochs", "1", out="runs/g", target=None) == 0
    other = moved.with_name("other.csv")
    other.write_text(moved.read_text().replace("Month,Sales", "Month,Visitors"))
    for command in (["predict", "runs/g"], ["evaluate", "runs/g", "--split", "val"]):
        assert main([*command, "--data", str(other)]) == 2
        assert capsys.readouterr().err == (
            f"deepstep {command[0]}: error: {other} gives the columns Visitors, but runs/g was trained on Sales: "
            "give --data the series it was trained on\n"
        )
    for out, why in [("runs/f/forecast.csv/x.csv", "a file is in the way of its folder"), ("runs", "it is a folder")]:
        assert main(["predict", "runs/f", "--data", str(moved), "--out", out]) == 2
        assert (
            capsys.readouterr().err
            == f"deepstep predict: error: {out}: cannot write there ({why}); choose another path\n"
        )


def test_a_daily_series_missing_days_is_forecast_on_the_days_after_it_not_on_step_numbers(tmp_path, capsys):
    import datetime as dt

    # two days missing, as in Melbourne's daily minimum temperatures: pandas infers no frequency
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(122) if i not in (40, 80)]
    daily = tmp_path / "daily.csv"
    daily.write_text("Date,Temp\n" + "".join(f"{d},{10 + (i % 7)}\n" for i, d in enumerate(days)))
    args = ["--data", str(daily), "--lookback", "7", "--horizon", "3", "--test-size", "10", "--val-size", "10"]
    assert main(["train", *args, "--epochs", "1", "--hidden", "8", "--out", "runs/d", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["predict", "runs/d", "--json"]) == 0
    result = _json(capsys)
    assert [r["time"] for r in result["forecast"]] == ["2020-05-02", "2020-05-03", "2020-05-04"]
    assert result["notes"] == ["the data's times are uneven, so the forecast's times go on by its usual step, 1 day"]
    assert main(["predict", "runs/d"]) == 0
    first = result["forecast"][0]["value"]
    assert capsys.readouterr().out.splitlines()[:2] == [f"note: {result['notes'][0]}", f"2020-05-02  Temp {first:.6g}"]


def test_baseline_runs_on_its_own_with_the_same_spans(seasonal_csv, capsys):
    args = ["baseline", "--data", str(seasonal_csv), "--target", "Sales", "--horizon", "6", "--test-size", "12"]
    assert main([*args, "--order", "0,1,1", "--seasonal-order", "0,1,1", "--json"]) == 0
    result = _json(capsys)
    assert result["baseline_notes"]["sarima"]["model"] == "SARIMA(0, 1, 1)(0, 1, 1)12"
    assert result["first_origin"] == "2007-01-01"  # as evaluate says where its forecasts start
    assert result["baselines"]["seasonal_naive"]["mae"] < result["baselines"]["naive"]["mae"]
    assert result["data_notes"] == []
    semicolons = seasonal_csv.with_name("semicolons.csv")
    semicolons.write_text(seasonal_csv.read_text().replace(",", ";"))
    assert main([*args[:2], str(semicolons), *args[3:], "--baselines", "naive"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{semicolons}: read as ';'-separated"


def test_baselines_that_cannot_forecast_the_span_say_which_option_to_change(seasonal_csv, capsys):
    args = ["baseline", "--data", str(seasonal_csv), "--target", "Sales", "--baselines", "naive,seasonal_naive"]
    assert main([*args, "--season", "100"]) == 2  # of 96 months, the first test forecast is at 77
    assert capsys.readouterr().err == (
        "deepstep baseline: error: seasonal naive needs 100 steps of history before the first forecast, which has "
        "77: give a shorter --season, or leave seasonal_naive out of --baselines\n"
    )
    assert main([*args, "--split", "val", "--val-size", "0"]) == 2
    assert "the validation span (0 steps) is shorter than --horizon 1: nothing to forecast; raise --val-size" in (
        capsys.readouterr().err
    )
    assert main([*args[:-2], "--baselines", ","]) == 2
    assert "--baselines names none; choose from naive, seasonal_naive, sarima" in capsys.readouterr().err
    assert main([*args, "--order", "1,1,1"]) == 2  # not ignored: the orders were meant for a SARIMA
    assert capsys.readouterr().err == (
        "deepstep baseline: error: --order set the SARIMA baseline's orders, but --baselines naive,seasonal_naive "
        "leaves sarima out: add it, --baselines naive,seasonal_naive,sarima\n"
    )


def test_a_metric_that_is_not_defined_reads_n_a_with_the_reason_and_null_in_json(tmp_path, capsys):
    periodic = tmp_path / "periodic.csv"
    periodic.write_text("value\n" + "".join(f"{v}\n" for v in [1, 4, 2, 8, 5, 7] * 20))
    args = ["baseline", "--data", str(periodic), "--season", "6", "--baselines", "naive,seasonal_naive"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:4]}
    assert rows["naive"][-1] == "n/a" and rows["seasonal_naive"] == ["0.000", "0.000", "0.00", "0.00", "n/a"]
    assert "  MASE n/a: the value 6 steps back forecasts the span before validation exactly" in out
    assert main([*args, "--json"]) == 0

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    result = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert result["baselines"]["naive"]["mase"] is None and result["metric_notes"][0].startswith("MASE n/a")


def test_the_arima_search_shows_progress_and_the_table_keeps_its_columns(seasonal_csv, capsys):
    args = ["baseline", "--data", str(seasonal_csv), "--target", "Sales", "--horizon", "6", "--test-size", "12"]
    assert main([*args, "--order", "0,1,1", "--seasonal-order", "0,1,1"]) == 0
    out, err = capsys.readouterr()
    assert "choosing the SARIMA orders by AIC on 84 steps" in err  # minutes with a season of 24: say so
    rows = [line for line in out.splitlines() if line.split()[0] in ("naive", "seasonal_naive", "sarima")]
    assert len(rows) == 3 and len({len(row) for row in rows}) == 1  # 4 significant digits, zeros kept
    assert "sarima: SARIMA(0, 1, 1)(0, 1, 1)12 (AIC" in out and "1 order tried)" in out


def test_missing_values_without_fill_are_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "gap.csv"
    path.write_text("Month,Sales\n" + "".join(f"2000-{m:02d},{'' if m == 5 else m}\n" for m in range(1, 13)))
    assert main(["train", "--data", str(path), "--target", "Sales"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "choose --fill interpolate, ffill or drop" in err


def test_a_sequence_folder_is_classified_and_measured_with_f1_and_roc_auc(sequence_folder, capsys):
    args = [
        "train",
        "--data",
        str(sequence_folder),
        "--hidden",
        "16",
        "--epochs",
        "25",
        "--lr",
        "0.01",
        "--quiet",
        "--out",
        "runs/s",
    ]
    assert main([*args, "--bidirectional"]) == 0
    info = json.loads(Path("runs/s/run.json").read_text())
    assert info["task"] == "sequence-classification" and info["model"]["args"]["bidirectional"] is True
    said = capsys.readouterr().out
    assert "parameters (num_classes=1, input_features=2, hidden=16, layers=1, dropout=0.0, bidirectional=True)" in said
    assert main(["evaluate", "runs/s", "--json"]) == 0
    result = _json(capsys)
    assert result["accuracy"] >= 0.9 and result["roc_auc"] >= 0.9
    assert {"precision", "recall", "f1", "confusion_matrix"} <= set(result)
    assert Path("runs/s/confusion_test.png").is_file() and result["files"]["roc_png"] == "runs/s/roc_test.png"
    rising = sequence_folder / "dataset" / "seq_1.csv"
    assert main(["predict", "runs/s", str(rising), "--json"]) == 0
    prediction = _json(capsys)[0]
    assert prediction["label"] == "1" and abs(sum(prediction["probabilities"].values()) - 1) < 1e-6


def test_holding_out_a_group_is_recorded_as_the_test_part(sequence_folder):
    args = [
        "train",
        "--data",
        str(sequence_folder),
        "--group-file",
        "groups.csv",
        "--test-groups",
        "3",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        "runs/g",
    ]
    assert main(args) == 0
    data = json.loads(Path("runs/g/run.json").read_text())["data"]
    assert data["test"] == {"count": 20, "origin": "group(s) 3 held out whole (of 1, 2, 3)"}


def test_a_sequence_run_resumes_to_the_same_weights_as_an_uninterrupted_one(sequence_folder):
    from safetensors.torch import load_file

    base = ["train", "--data", str(sequence_folder), "--hidden", "8", "--quiet"]
    assert main([*base, "--epochs", "4", "--out", "runs/full"]) == 0
    assert main([*base, "--epochs", "2", "--out", "runs/half"]) == 0
    assert main(["train", "--out", "runs/half", "--resume", "--epochs", "4", "--quiet"]) == 0

    def weights(run):
        record = json.loads(Path(run, "checkpoints", "last.json").read_text())
        return load_file(str(Path(run, "checkpoints", record["weights"]["file"])))

    full, resumed = weights("runs/full"), weights("runs/half")
    assert all((full[k] == resumed[k]).all() for k in full)


def test_a_precision_the_cpu_cannot_run_an_lstm_in_is_refused_before_a_run_folder_exists(
    seasonal_csv, monkeypatch, capsys
):
    import torch

    from deepstep.engine import precision

    # oneDNN has no bf16 LSTM on CPUs without AVX-512-BF16 / AMX; here every CPU is made one
    monkeypatch.setattr(
        precision, "_recurrent_error", lambda kind, device, name: "no bf16 LSTM" if kind is torch.nn.LSTM else None
    )
    train = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--lookback", "12", "--horizon", "3"]
    args = [*train, "--test-size", "12", "--epochs", "1", "--hidden", "4", "--precision", "bf16", "--device", "cpu"]
    assert main([*args, "--out", "runs/lstm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "deepstep train: error: --precision bf16: this CPU cannot run LSTM in bf16 (no bf16 LSTM); use --precision 32"
    )
    assert not Path("runs/lstm").exists()
    assert main([*args, "--model", "gru", "--out", "runs/gru", "--quiet"]) == 0
    auto = precision.Precision("bf16", "cpu", "auto: bf16 autocast, this CPU has AMX/AVX-512-BF16")
    fallback = precision.supported_by(auto, torch.nn.LSTM(2, 3), auto=True)
    assert fallback.name == "32" and fallback.reason == "auto: fp32 (this CPU cannot run LSTM in bf16)"


def test_options_a_task_has_no_use_for_are_refused_not_ignored(seasonal_csv, sequence_folder, capsys):
    _forecast(seasonal_csv, "--epochs", "1")
    assert main(["evaluate", "runs/f", "--split", "val", "--tta"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deepstep evaluate: error: --tta does not apply to runs/f (forecasting); leave it out"
    )
    train = ["train", "--data", str(sequence_folder), "--hidden", "4", "--epochs", "1", "--quiet", "--out", "runs/s"]
    assert main(train) == 0
    assert main(["evaluate", "runs/s", "--split", "val", "--baselines", "--backtest"]) == 2
    assert "--baselines, --backtest do not apply to runs/s (sequence-classification)" in capsys.readouterr().err
    assert main(["evaluate", "runs/s", "--split", "val", "--precision", "bf16"]) == 2
    assert "--precision does not apply to runs/s (sequence-classification)" in capsys.readouterr().err
    assert main(["evaluate", "runs/f", "--split", "val", "--gradcam"]) == 2
    assert "--gradcam does not apply to runs/f (forecasting)" in capsys.readouterr().err
    with pytest.raises(DeepstepError, match=r"^gradcam= is for image runs; runs/s is sequence-classification"):
        deepstep.load_run("runs/s").evaluate("val", gradcam=True)
    seq = str(sequence_folder / "dataset" / "seq_1.csv")
    assert main(["predict", "runs/s", seq, "--plot", "p.png"]) == 2
    assert "--plot does not apply to runs/s" in capsys.readouterr().err
    assert main(["predict", "runs/s", seq, "--precision", "bf16", "--device", "cpu"]) == 2
    assert "--precision, --device do not apply to runs/s (sequence-classification)" in capsys.readouterr().err
    assert main(["predict", "runs/s", seq, "--top-k", "1"]) == 2  # every class's probability is given
    assert "--top-k does not apply to runs/s (sequence-classification)" in capsys.readouterr().err
    assert main(["predict", "runs/s", seq, "--gradcam", "cam.png"]) == 2
    assert "--gradcam does not apply to runs/s (sequence-classification)" in capsys.readouterr().err
    assert main(["predict", "runs/f", "--gradcam", "cam.png", "--gradcam-layer", "lstm"]) == 2
    assert "--gradcam, --gradcam-layer do not apply to runs/f (forecasting)" in capsys.readouterr().err
    assert main(["predict", "runs/s", seq, "--top-k", "1"]) == 2
    assert "--top-k does not apply to runs/s (sequence-classification)" in capsys.readouterr().err
    with pytest.raises(
        DeepstepError, match=r"^feature maps are drawn for image runs; runs/s is sequence-classification"
    ):
        deepstep.load_run("runs/s").feature_maps(seq)
    with pytest.raises(DeepstepError, match=r"^device= is for image runs; runs/s is sequence-classification"):
        deepstep.load_run("runs/s").predict(seq, device="cpu")
    with pytest.raises(DeepstepError, match=r"^strict= is for image runs"):
        deepstep.load_run("runs/s").predict(seq, strict=True)
    with pytest.raises(DeepstepError, match=r"^top_k= is for image runs"):
        deepstep.load_run("runs/s").predict(seq, top_k=1)
    assert main(["predict", "runs/s", seq]) == 0  # without it, the same command works
    assert main([*train[:-2], "--augment", "--lookback", "5", "--out", "runs/s2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deepstep train: error: --augment, --lookback do not apply to sequence-classification; leave them out"
    )
    assert not Path("runs/s2").exists()


def test_predict_takes_a_folder_of_sequence_csvs_and_leaves_the_labels_file_out(sequence_folder, capsys):
    train = ["train", "--data", str(sequence_folder), "--hidden", "4", "--epochs", "1", "--quiet", "--out", "runs/s"]
    assert main(train) == 0
    capsys.readouterr()
    assert main(["predict", "runs/s", str(sequence_folder / "dataset"), "--json"]) == 0
    files = [Path(r["file"]).name for r in _json(capsys)]
    assert len(files) == 60 and "targets.csv" not in files
    assert files[:11] == [f"seq_{i}.csv" for i in range(1, 12)]  # in natural order: seq_2 before seq_10
    assert main(["predict", "runs/s", str(sequence_folder / "groups")]) == 2  # groups.csv is no sequence
    assert "groups holds no sequence CSV files (named ..._<id>.csv)" in capsys.readouterr().err
    (sequence_folder / "header_only.csv").write_text("a,b\n")
    assert main(["predict", "runs/s", str(sequence_folder / "header_only.csv")]) == 2
    assert "header_only.csv holds no rows of numbers: a sequence is one row per time step" in capsys.readouterr().err
    assert main(["predict", "runs/s", "nowhere"]) == 2
    assert "nowhere does not exist; give sequence CSV files" in capsys.readouterr().err
    archive = shutil.make_archive(str(sequence_folder.parent / "moves"), "zip", sequence_folder)  # as shipped
    assert main(["predict", "runs/s", archive, "--out", "p.csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 61 and lines[-1] == "written: p.csv" and lines[0].split(":")[0].endswith("seq_1.csv")
    table = Path("p.csv").read_text().splitlines()
    assert table[0] == "file,label,probability,-1,1" and len(table) == 61
    (sequence_folder / "inf_1.csv").write_text("1,2\n1,inf\n")
    assert main(["predict", "runs/s", str(sequence_folder / "inf_1.csv")]) == 2
    assert "inf_1.csv: row 2 holds inf or nan" in capsys.readouterr().err


def test_predict_takes_an_npz_of_sequences_cut_to_their_lengths_without_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 2)).astype(np.float32)
    np.savez(tmp_path / "train.npz", X=x, y=np.array(["up", "down"] * 20))
    train = ["train", "--data", str(tmp_path / "train.npz"), "--hidden", "4", "--epochs", "1", "--quiet"]
    assert main([*train, "--out", "runs/n"]) == 0
    padded = np.full((2, 10, 2), np.nan, np.float32)  # longer than training's, NaN past the lengths
    padded[0, :8], padded[1, :3] = x[0], x[1, :3]
    np.savez(tmp_path / "new.npz", X=padded, lengths=np.array([8, 3]))
    capsys.readouterr()
    assert main(["predict", "runs/n", str(tmp_path / "new.npz"), "--json"]) == 0
    results = _json(capsys)
    expected = deepstep.load_run("runs/n").predict([x[0], x[1, :3]])
    assert [r["sequence"] for r in results] == [0, 1] and all(r["file"] == str(tmp_path / "new.npz") for r in results)
    assert [r["probabilities"] for r in results] == [e["probabilities"] for e in expected]
    assert main(["predict", "runs/n", str(tmp_path / "new.npz")]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'new.npz'} sequence 0: {results[0]['label']}  (")
    np.savez(tmp_path / "wide.npz", X=np.zeros((2, 8, 3), np.float32))
    assert main(["predict", "runs/n", str(tmp_path / "wide.npz")]) == 2
    assert "wide.npz: the model takes sequences of 2 columns, got shape (8, 3)" in capsys.readouterr().err


def test_split_all_scores_every_sequence_of_other_data(tmp_path, seasonal_csv, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 2)).astype(np.float32)
    np.savez(tmp_path / "train.npz", X=x, y=np.array(["up", "down"] * 20))
    train = ["train", "--data", str(tmp_path / "train.npz"), "--hidden", "4", "--epochs", "1", "--quiet"]
    assert main([*train, "--out", "runs/n"]) == 0
    np.savez(tmp_path / "new.npz", X=x[:5] + 1, y=np.array(["up", "down", "up", "up", "up"]))
    capsys.readouterr()
    assert main(["evaluate", "runs/n", "--split", "all", "--data", str(tmp_path / "new.npz"), "--json"]) == 0
    result = _json(capsys)
    labels = [r["label"] for r in deepstep.load_run("runs/n").predict(x[:5] + 1)]
    right = sum(a == b for a, b in zip(labels, ["up", "down", "up", "up", "up"], strict=True))
    assert result["sequences"] == 5 and result["accuracy"] == pytest.approx(right / 5)
    assert result["data"] == str(tmp_path / "new.npz")
    assert main(["evaluate", "runs/n", "--split", "all", "--data", str(tmp_path / "train.npz")]) == 2
    assert "train.npz is the data this run trained on: --split all would score its training part" in (
        capsys.readouterr().err
    )
    forecast = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--epochs", "1", "--hidden", "4"]
    assert main([*forecast, "--quiet", "--out", "runs/f"]) == 0
    assert main(["evaluate", "runs/f", "--split", "all", "--data", str(seasonal_csv)]) == 2
    assert capsys.readouterr().err == (
        "deepstep evaluate: error: --split 'all': a forecast is measured on 'test' or 'val' "
        "('all' is for classifiers: a series has one test span)\n"
    )


def test_the_python_api_predicts_arrays_as_it_predicts_their_csv_files(sequence_folder):
    import torch

    from deepstep.data.sequences import read_numbers

    train = ["train", "--data", str(sequence_folder), "--hidden", "4", "--epochs", "1", "--quiet", "--out", "runs/s"]
    assert main(train) == 0
    run = deepstep.load_run("runs/s")
    csv = sequence_folder / "dataset" / "seq_3.csv"
    values = read_numbers(csv)
    from_file, from_array, from_tensor = run.predict([csv, values, torch.from_numpy(values.copy())])
    assert from_array == {**from_file, "file": None, "sequence": 1} and from_tensor["sequence"] == 2
    assert from_tensor["probabilities"] == from_file["probabilities"]
    other = read_numbers(sequence_folder / "dataset" / "seq_4.csv")
    steps = min(len(other), len(values))
    batch = np.stack([other[:steps], values[:steps]])  # sequences x steps x features, as an .npz's X
    _, of_other, of_values = run.predict([csv, batch])
    assert [of_other["sequence"], of_values["sequence"]] == [1, 2]
    assert of_other == {**run.predict(other[:steps])[0], "sequence": 1}
    assert of_values == {**run.predict(values[:steps])[0], "sequence": 2}
    with pytest.raises(DeepstepError, match=r"^sequence 0: the model takes sequences of 2 columns, got shape"):
        run.predict(values[:, :1])
    with pytest.raises(
        DeepstepError,
        match=r"\.npz files or arrays \(steps x features, or sequences x steps x features\); input 1 is None$",
    ):
        run.predict([csv, None])


def test_an_image_model_for_a_series_is_a_one_line_error_that_names_the_sequence_models(seasonal_csv, capsys):
    args = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--epochs", "1", "--out", "runs/r"]
    assert main([*args, "--recipe", "cifar-fast"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deepstep train: error: resnet-cifar takes 3x32x32 inputs, not TIMExFEATURES sequences, so it cannot be "
        "trained for forecasting; use --model rnn, lstm or gru"
    )
    assert not Path("runs/r").exists()


def test_muon_for_a_net_without_conv_filters_is_refused_before_a_run_folder_exists(seasonal_csv, capsys):
    args = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--epochs", "1", "--hidden", "4"]
    assert main([*args, "--optimizer", "muon", "--out", "runs/m"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deepstep train: error: --optimizer muon steps conv filters, and lstm has none: use sgd, adam, adamw or rmsprop"
    )
    assert not Path("runs/m").exists()


def test_summary_of_a_sequence_run_follows_its_lookback_and_features(seasonal_csv, sequence_folder, capsys):
    # a run folder without an image input size raised KeyError: 'input_size'
    assert _forecast(seasonal_csv, "--epochs", "1") == 0
    capsys.readouterr()
    assert main(["summary", "runs/f"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lstm on 12x1 ") and "16 -> 6 features" in out  # lookback x the target; the horizon
    train = ["train", "--data", str(sequence_folder), "--model", "gru", "--hidden", "4", "--epochs", "1"]
    assert main([*train, "--quiet", "--out", "runs/s"]) == 0
    capsys.readouterr()
    assert main(["summary", "runs/s"]) == 0
    assert capsys.readouterr().out.startswith("gru on 30x2 ")  # its 2 features over gru's declared 30 steps
    assert main(["summary", "runs/s", "--input", "7x3"]) == 0
    assert capsys.readouterr().out.startswith("gru on 7x3 ")


def test_evaluating_sequences_of_classes_the_run_does_not_know_is_refused(sequence_folder, capsys):
    # their labels were numbers among their own classes, read as the run's
    import shutil

    train = ["train", "--data", str(sequence_folder), "--hidden", "4", "--epochs", "1", "--quiet", "--out", "runs/s"]
    assert main(train) == 0
    other = sequence_folder.with_name("other")
    shutil.copytree(sequence_folder, other)
    targets = other / "dataset" / "targets.csv"
    targets.write_text(targets.read_text().replace(",-1\n", ",down\n"))
    assert main(["evaluate", "runs/s", "--data", str(other)]) == 2
    assert capsys.readouterr().err == (
        f"deepstep evaluate: error: {other} has classes this run was not trained on: down; the run knows -1, 1: "
        "give --data the data it was trained on\n"
    )


def test_clip_grad_reaches_the_training_steps_and_is_recorded(seasonal_csv):
    sgd = ["--optimizer", "sgd", "--lr", "0.1", "--momentum", "0", "--epochs", "3"]
    assert _forecast(seasonal_csv, *sgd, "--clip-grad", "1e-9", out="runs/clipped") == 0
    assert _forecast(seasonal_csv, *sgd, out="runs/free") == 0

    def losses(run):
        with open(Path(run, "metrics.csv")) as f:
            return [float(row["train_loss"]) for row in csv.DictReader(f)]

    clipped, free = losses("runs/clipped"), losses("runs/free")
    assert clipped[0] == pytest.approx(free[0], rel=0.2)  # the same start
    assert clipped[2] == pytest.approx(clipped[0], rel=1e-5)  # steps of at most 1e-10: the loss stands still
    assert free[2] < 0.98 * free[0]  # while the same steps unclipped learn
    config = Path("runs/clipped/config.yaml").read_text()
    assert "clip-grad: 1.0e-09" in config


def test_class_weights_reach_a_sequence_classifier_s_training_loss(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "uneven.npz", X=rng.normal(size=(60, 8, 2)), y=np.repeat([0, 1], [48, 12]))
    train = ["train", "--data", str(tmp_path / "uneven.npz"), "--hidden", "4", "--epochs", "1", "--quiet"]
    assert main([*train, "--out", "runs/plain"]) == 0
    assert main([*train, "--class-weights", "balanced", "--out", "runs/weighted"]) == 0
    import re

    shown = re.search(
        r"class weights \(balanced, by the train part's counts\): 0 ([\d.]+), 1 ([\d.]+)", capsys.readouterr().out
    )
    assert 3 < float(shown[2]) / float(shown[1]) < 5  # about 4 of class 0 to each of class 1 in the train part

    def first_loss(run):
        with open(Path(run, "metrics.csv")) as f:
            return float(next(csv.DictReader(f))["train_loss"])

    assert first_loss("runs/weighted") != pytest.approx(first_loss("runs/plain"), rel=1e-3)
