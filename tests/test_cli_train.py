import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import train_lenet
from deepstep.cli import main


def _train(folder, *extra, out="runs/t"):
    return train_lenet(folder, *extra, out=out)


def _weights(run, kind="last"):
    record = json.loads((Path(run) / "checkpoints" / f"{kind}.json").read_text())
    return load_file(str(Path(run) / "checkpoints" / record["weights"]["file"]))


def test_a_run_folder_holds_config_metrics_curves_and_both_checkpoints(image_folder):
    assert _train(image_folder, "--epochs", "3") == 0
    run = Path("runs/t")
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s"} <= set(rows[0])
    assert all(float(r["seconds"]) > 0 and float(r["images_per_s"]) > 0 for r in rows)
    assert (run / "curves.png").stat().st_size > 10_000
    assert not (run / "train-batch.png").exists()  # no augmentation: nothing to look at but the data
    assert "val_acc5" not in rows[0]  # 3 classes: the top 5 hold every one
    record = json.loads((run / "checkpoints" / "best.json").read_text())
    assert record["model"] == {"name": "lenet", "args": {"num_classes": 3}}
    assert record["classes"] == ["circle", "square", "stripes"] and record["input_size"] == [3, 32, 32]
    assert len(record["normalization"]["mean"]) == 3
    best_epoch = max(rows, key=lambda r: (float(r["val_acc"]), -int(r["epoch"])))["epoch"]
    assert str(record["epoch"]) == best_epoch
    assert yaml.safe_load((run / "config.yaml").read_text())["batch-size"] == 8


def test_training_learns_the_generated_classes(image_folder):
    assert _train(image_folder, "--epochs", "8", "--lr", "0.05") == 0
    with open("runs/t/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["val_acc"]) == 1.0


def test_the_validation_part_is_carved_per_class_and_recorded(image_folder):
    assert _train(image_folder, "--epochs", "1", "--val-split", "0.25") == 0
    info = json.loads(Path("runs/t/run.json").read_text())
    assert info["data"]["train"]["count"] == 45 and info["data"]["val"]["count"] == 15
    assert info["data"]["test"]["count"] == 18 and "not" not in info["data"]["test"]["origin"]


def test_the_normalisation_is_computed_on_the_train_part_or_taken_as_given(image_folder):
    assert _train(image_folder, "--epochs", "1", "--mean", "0.5", "--std", "0.25", out="runs/given") == 0
    given = json.loads(Path("runs/given/run.json").read_text())["data"]["normalization"]
    assert given == {"mean": [0.5] * 3, "std": [0.25] * 3, "origin": "given"}
    assert _train(image_folder, "--epochs", "1", out="runs/computed") == 0
    computed = json.loads(Path("runs/computed/run.json").read_text())["data"]["normalization"]
    assert computed["origin"] == "computed on the train part" and computed["mean"][0] > computed["mean"][2]


def test_flags_override_the_config_file(image_folder, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(f'data = "{image_folder}"\nmodel = "lenet"\nepochs = 1\nlr = 0.5\nbatch-size = 4\n')
    assert (
        main(["train", "--config", str(config), "--lr", "0.02", "--precision", "32", "--out", "runs/c", "--quiet"]) == 0
    )
    saved = yaml.safe_load(Path("runs/c/config.yaml").read_text())
    assert saved["lr"] == 0.02 and saved["batch-size"] == 4 and saved["epochs"] == 1


def test_the_same_seed_trains_the_same_weights(image_folder):
    assert _train(image_folder, "--epochs", "2", "--augment", out="runs/a") == 0
    assert _train(image_folder, "--epochs", "2", "--augment", out="runs/b") == 0
    a, b = _weights("runs/a"), _weights("runs/b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_two_epochs_ends_where_four_straight_epochs_end(image_folder):
    # A constant schedule: extending a cosine one from 2 to 4 epochs would change its shape.
    assert _train(image_folder, "--epochs", "4", "--augment", "--momentum", "0.9", out="runs/straight") == 0
    assert _train(image_folder, "--epochs", "2", "--augment", "--momentum", "0.9", out="runs/resumed") == 0
    assert main(["train", "--out", "runs/resumed", "--resume", "--epochs", "4", "--quiet"]) == 0
    straight, resumed = _weights("runs/straight"), _weights("runs/resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    info = json.loads(Path("runs/resumed/run.json").read_text())
    assert info["resumes"][0]["from_epoch"] == 2 and "epochs: 2 -> 4" in info["resumes"][0]["changed"]


def test_a_run_from_before_an_option_existed_resumes_with_the_option_at_its_default(image_folder, capsys):
    assert _train(image_folder, "--epochs", "1", out="runs/old") == 0
    config = yaml.safe_load(Path("runs/old/config.yaml").read_text())
    for name in ("cutout", "mixup", "cutmix", "ema", "class-weights"):  # options newer than the run
        del config[name]
    Path("runs/old/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    assert main(["train", "--out", "runs/old", "--resume", "--epochs", "2", "--quiet"]) == 0, capsys.readouterr().err
    info = json.loads(Path("runs/old/run.json").read_text())
    assert info["resumes"][0]["changed"] == ["epochs: 1 -> 2"] and info["result"]["epochs"] == 2


def test_monitor_val_loss_keeps_the_epoch_of_the_lowest_validation_loss_and_resume_keeps_it(
    image_folder, seasonal_csv, capsys
):
    assert _train(image_folder, "--epochs", "6", "--monitor", "val_loss", out="runs/loss") == 0
    with open("runs/loss/metrics.csv") as f:
        rows = [(int(r["epoch"]), float(r["val_loss"]), float(r["val_acc"])) for r in csv.DictReader(f)]
    lowest = min(rows, key=lambda r: r[1])  # min keeps the first of equals, as the monitor does
    first_best_acc = max(rows, key=lambda r: r[2])
    assert lowest[0] != first_best_acc[0]  # so the test tells the two monitors apart
    info = json.loads(Path("runs/loss/run.json").read_text())["result"]
    assert info["best_epoch"] == lowest[0] and info["best_val_loss"] == pytest.approx(lowest[1], rel=1e-5)
    assert "best_val_acc" not in info
    assert json.loads(Path("runs/loss/checkpoints/best.json").read_text())["epoch"] == lowest[0]
    assert f"best val loss {info['best_val_loss']:.4g} at epoch {lowest[0]}" in capsys.readouterr().out
    result = _compare_json(capsys, "runs/loss")
    assert result["runs"][0]["best_val_acc"] == lowest[2]  # compare reads the chosen epoch's accuracy
    assert main(["train", "--out", "runs/loss", "--resume", "--epochs", "8", "--monitor", "val_acc", "--quiet"]) == 2
    assert (
        "cannot resume runs/loss with a different monitor (monitor: 'val_loss' -> 'val_acc')" in capsys.readouterr().err
    )
    forecast = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--monitor", "val_acc"]
    assert main(forecast) == 2
    assert "--monitor val_acc: a forecast has no accuracy; it is chosen by val_loss" in capsys.readouterr().err


def _compare_json(capsys, *runs):
    capsys.readouterr()
    assert main(["compare", *runs, "--json", "--out", "c.png"]) == 0
    return json.loads(capsys.readouterr().out)


def test_resuming_a_finished_run_says_how_to_train_on_and_leaves_its_record(image_folder, capsys):
    assert _train(image_folder, "--epochs", "2", out="runs/done") == 0
    capsys.readouterr()
    weights = _weights("runs/done")
    record = {name: Path("runs/done", name).read_text() for name in ("config.yaml", "run.json")}
    assert main(["train", "--out", "runs/done", "--resume", "--epochs", "1", "--lr", "0.5", "--quiet"]) == 0
    assert "note: 2 epoch(s) of --epochs 1 are done; --epochs 3 or more trains on" in capsys.readouterr().out
    assert all(torch.equal(weights[k], v) for k, v in _weights("runs/done").items())  # nothing trained
    assert {name: Path("runs/done", name).read_text() for name in record} == record  # nor said to be


def test_resume_with_a_different_batch_size_is_refused_with_the_difference(image_folder, capsys):
    assert _train(image_folder, "--epochs", "1") == 0
    assert main(["train", "--out", "runs/t", "--resume", "--batch-size", "16", "--epochs", "2", "--quiet"]) == 2
    assert "cannot resume runs/t with a different batch-size (batch-size: 8 -> 16)" in capsys.readouterr().err


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_is_kept(image_folder, capsys):
    assert _train(image_folder, "--epochs", "1") == 0
    before = _weights("runs/t")
    assert _train(image_folder, "--epochs", "1", "--lr", "0.5") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert all(torch.equal(before[k], v) for k, v in _weights("runs/t").items())


def test_bf16_training_runs_and_records_what_precision_it_used(image_folder):
    assert (
        main(
            [
                "train",
                "--data",
                str(image_folder),
                "--model",
                "resnet-cifar",
                "--model-arg",
                "width=4",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--precision",
                "bf16",
                "--out",
                "runs/bf16",
                "--quiet",
            ]
        )
        == 0
    )
    device = json.loads(Path("runs/bf16/run.json").read_text())["device"]
    assert device["precision"] == "bf16" and device["channels_last"] is True


def test_auto_precision_keeps_fp32_on_a_cpu_when_a_step_is_too_small_for_bf16_to_pay(image_folder, monkeypatch):
    from deepstep.engine import precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)  # any CPU is made one with AMX here

    def picked(*extra):
        out = f"runs/auto{len(list(Path('runs').glob('auto*'))) if Path('runs').exists() else 0}"
        assert _train(image_folder, "--epochs", "1", "--precision", "auto", "--device", "cpu", *extra, out=out) == 0
        device = json.loads((Path(out) / "run.json").read_text())["device"]
        return device["precision"], device["precision_reason"]

    # lenet: 651,720 multiply-adds an image; bf16 pays from 32 M a forward call
    assert picked() == (
        "32",
        "auto: fp32; bf16 autocast pays on a CPU from 32 M multiply-adds a step, and this one has 5.2 M",
    )
    assert picked("--batch-size", "64") == (
        "bf16",
        "auto: bf16 autocast, this CPU has AMX/AVX-512-BF16",
    )
    assert picked("--batch-size", "64", "--micro-batch", "16")[0] == "32"  # a part is what a call does


def test_a_batch_too_big_for_a_cpus_caches_gets_a_note_that_suggests_micro_batches(image_folder, monkeypatch, capsys):
    from deepstep.tasks import image_classification as ic

    airbench = ic.check_model_fits("airbench", {"num_classes": 10}, 3, (32, 32))
    assert airbench == ic.ModelCost(parameters=1_972_792, mult_adds=118_147_360, activation_bytes=1_415_144)
    note = ic.micro_batch_hint(1024, 0, airbench, torch.device("cpu"))
    assert note == (
        "note: a batch of 1024 holds 1.3 GiB of activations, which run faster in parts on a CPU: try "
        "--micro-batch 256 (the same steps; batch norm then normalises each part on its own)"
    )
    assert ic.micro_batch_hint(256, 0, airbench, torch.device("cpu")) is None
    assert ic.micro_batch_hint(1024, 256, airbench, torch.device("cpu")) is None
    assert ic.micro_batch_hint(1024, 0, airbench, torch.device("cuda")) is None
    lenet = ic.check_model_fits("lenet", {"num_classes": 3}, 3, (32, 32))  # 32,348 bytes an image
    assert ic.micro_batch_hint(1024, 0, lenet, torch.device("cpu")) is None

    monkeypatch.setattr(ic, "CPU_PARTS_HINT_BYTES", 2**18)  # lenet's batch of 16 passes a 256 KiB threshold
    args = ["train", "--data", str(image_folder), "--model", "lenet", "--epochs", "1", "--batch-size", "16"]
    args += ["--device", "cpu"]  # the note is for CPUs; auto would pick a GPU where there is one
    assert main([*args, "--out", "runs/whole"]) == 0
    assert "try --micro-batch 4 (the same steps" in capsys.readouterr().out  # parts under 3/4 of it
    assert main([*args, "--micro-batch", "4", "--out", "runs/parts"]) == 0
    assert "--micro-batch" not in capsys.readouterr().out


def test_a_train_part_smaller_than_the_batch_is_sized_as_the_one_batch_it_makes(flat_folder, monkeypatch, capsys):
    """21 training images at --batch-size 64 make steps of 21: auto precision and the micro-batch
    note count those, not 64 (lenet: 651,720 multiply-adds and 32,348 bytes of activations an image)."""
    from deepstep.engine import precision
    from deepstep.tasks import image_classification as ic

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(ic, "CPU_PARTS_HINT_BYTES", 2**19)  # 512 KiB: 21 images pass it, 16 would not
    args = ["train", "--data", str(flat_folder), "--model", "lenet", "--epochs", "1", "--device", "cpu"]
    assert main([*args, "--batch-size", "64", "--precision", "auto", "--out", "runs/small"]) == 0
    out = capsys.readouterr().out
    assert "data: flat: 21 train" in out
    assert "note: a batch of 21 holds" in out and "try --micro-batch 8 (" in out
    device = json.loads(Path("runs/small/run.json").read_text())["device"]
    assert device["precision"] == "32"  # 21 x 651,720 = 13.7 M a step, under bf16's 32 M
    assert device["precision_reason"].endswith("and this one has 13.7 M")


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "muon"])
def test_the_other_optimizers_train(image_folder, optimizer):
    assert (
        _train(image_folder, "--epochs", "1", "--optimizer", optimizer, "--lr", "0.001", "--schedule", "onecycle") == 0
    )


def test_grey_models_get_grey_resized_images(image_folder):
    assert (
        main(
            [
                "train",
                "--data",
                str(image_folder),
                "--model",
                "simple-cnn",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                "runs/grey",
                "--quiet",
            ]
        )
        == 0
    )
    record = json.loads(Path("runs/grey/checkpoints/best.json").read_text())
    assert record["input_size"] == [1, 20, 20] and len(record["normalization"]["mean"]) == 1


def test_augment_options_that_cannot_apply_say_so(image_folder, capsys):
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--crop-padding", "2", "--alternate-flip"]
    assert main([*args, "--out", "runs/plain"]) == 0
    out = capsys.readouterr().out
    assert "note: --crop-padding does nothing without --augment" in out
    assert "note: --alternate-flip does nothing without --augment" in out
    assert main([*args, "--augment", "--in-memory", "no", "--out", "runs/streamed"]) == 0
    out = capsys.readouterr().out
    assert "note: --crop-padding is for images held in memory; streamed ones get a random resized crop" in out
    assert "note: --alternate-flip is for images held in memory; streamed ones are flipped at random" in out


def test_a_train_log_and_record_name_the_files_the_folder_scan_left_out(image_folder, capsys):
    (image_folder / "train" / "unsorted").mkdir()
    assert main(["train", "--data", str(image_folder), "--epochs", "1", "--out", "runs/notes"]) == 0
    note = f"{image_folder / 'train'}: left out 1 folder(s) with no images, so not classes: unsorted"
    assert f"note: {note}" in capsys.readouterr().out
    assert json.loads(Path("runs/notes/run.json").read_text())["data"]["left_out"] == [note]


def test_the_train_log_says_how_each_image_becomes_the_model_input(image_folder, capsys):
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--model", "simple-cnn"]
    assert main([*args, "--out", "runs/fit"]) == 0
    expected = "pre-processing: each image grey, scaled to cover 20x20 (aspect ratio kept; not scaled when already "
    assert expected + "that size), center-cropped to 20x20, then normalised\n" in capsys.readouterr().out
    assert main([*args, "--resize", "24", "--out", "runs/resized"]) == 0
    expected = "pre-processing: each image grey, short side scaled to 24 px, center-cropped to 20x20, then normalised\n"
    assert expected in capsys.readouterr().out


def test_a_diverging_run_stops_with_advice_that_fits_what_it_had(image_folder, capsys):
    assert _train(image_folder, "--epochs", "2", "--lr", "1e12") == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"deepstep train: error: epoch 1: the training loss became (nan|inf) in this epoch; "
        r"lower --lr \(no epoch had finished to keep\)",
        err,
    ), err


def test_find_lr_plots_the_range_test_and_writes_no_run(image_folder, seasonal_csv, capsys):
    args = ["train", "--data", str(image_folder), "--model", "lenet", "--batch-size", "8", "--quiet"]
    assert main([*args, "--find-lr", "30"]) == 0
    out = capsys.readouterr().out
    assert "run folder: none (--find-lr)" in out
    stopped = r"stopped (after 30 steps|at step \d+, lr \S+: the loss (passed 4x its lowest|became \S+))$"
    assert re.search(rf"^lr range test: \d+ steps of batch 8, lr 1e-07 to \S+; {stopped}", out, re.M)
    assert sorted(p.name for p in Path("runs").iterdir()) == ["lenet-shapes-lr-find.json", "lenet-shapes-lr-find.png"]
    record = json.loads(Path("runs/lenet-shapes-lr-find.json").read_text())
    assert record["batch_size"] == 8 and record["optimizer"] == "sgd" and len(record["lrs"]) == len(record["losses"])
    from PIL import Image

    assert Image.open("runs/lenet-shapes-lr-find.png").size == (800, 450)
    assert main([*args, "--find-lr", "5"]) == 2
    assert capsys.readouterr().err == "deepstep train: error: --find-lr takes at least 10 steps (default 100), got 5\n"
    assert main([*args[:-3], "--batch-size", "256", "--find-lr", "10", "--quiet"]) == 0  # 54 train images
    assert "lr range test: 10 steps of batch 54 (all the train part), lr 1e-07" in capsys.readouterr().out
    forecast = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--lookback", "12", "--horizon", "6"]
    assert main([*forecast, "--test-size", "12", "--find-lr", "--out", "runs/sales", "--quiet"]) == 0
    assert re.search(r"^lr range test: \d+ steps of batch 32, lr 1e-07 to \S+; stopped ", capsys.readouterr().out, re.M)
    assert Path("runs/sales-lr-find.png").is_file() and not Path("runs/sales").exists()
    Path("a-file").write_text("not a folder")
    assert main([*args, "--find-lr", "10", "--out", "a-file/lr"]) == 2
    assert capsys.readouterr().err == (
        "deepstep train: error: --out a-file/lr-lr-find.png: cannot write there "
        "(a file is in the way of its folder); choose another --out\n"
    )


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_a_model_that_cannot_take_the_image_size_is_named_before_any_image_is_decoded(
    image_folder, capsys, monkeypatch, in_memory
):
    # it came after decoding (and, streamed, after 1,000 images for the normalisation): minutes on CIFAR-10
    from deepstep.tasks import image_classification

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the model was checked")

    monkeypatch.setattr(image_classification, "load_split", no_decoding)
    monkeypatch.setattr(image_classification, "sample_stats", no_decoding)
    assert train_lenet(image_folder, "--image-size", "12", "--in-memory", in_memory, out="runs/l") == 2
    assert "lenet cannot take input 3x12x12: layer " in capsys.readouterr().err  # conv2, or pool on torch 2.5
    assert not Path("runs/l").exists()


def test_mnist_format_files_train_and_evaluate_from_the_command_line(tmp_path, isolated):
    from test_data_sources import write_idx

    write_idx(tmp_path / "digits", per_class=40)
    assert _train(tmp_path / "digits", "--epochs", "6", "--lr", "0.05") == 0
    assert main(["evaluate", "runs/t", "--json"]) == 0
    result = json.loads((Path("runs/t") / "test.json").read_text())
    assert result["accuracy"] >= 0.9  # a bar per class: learnable, so the pixels and labels line up
    record = json.loads((Path("runs/t") / "checkpoints" / "best.json").read_text())
    assert record["classes"] == ["0", "1", "2"] and record["input_size"] == [3, 32, 32]  # lenet takes colour


def test_the_plateau_schedule_needs_a_validation_part_and_says_when_it_lowers_the_rate(image_folder, capsys):
    assert _train(image_folder, "--schedule", "plateau", "--val-split", "0", out="runs/p") == 2
    assert capsys.readouterr().err.strip() == (
        "deepstep train: error: --schedule plateau lowers the rate when validation stops improving, and this "
        "run has no validation part: give it one (--val-split or --val-size above 0) or choose another --schedule"
    )
    assert not Path("runs/p").exists()
    plateau = ["--schedule", "plateau", "--plateau-patience", "1", "--plateau-factor", "0.5", "--lr", "0.05"]
    assert _train(image_folder, *plateau, "--epochs", "3", out="runs/p") == 0
    assert "lr x0.5: val_acc has not improved for 1 epoch (now 0.025)" in capsys.readouterr().out


def test_class_weights_balanced_are_logged_recorded_and_refused_where_there_are_no_classes(tmp_path, capsys):
    import numpy as np

    from conftest import write_images

    rng = np.random.default_rng(0)
    write_images(tmp_path / "uneven", 20, rng, classes=("circle",))
    write_images(tmp_path / "uneven", 5, rng, classes=("square", "stripes"))
    assert _train(tmp_path / "uneven", "--epochs", "1", "--class-weights", "balanced", out="runs/w") == 0
    # 14 / 3 / 3 train images once the test and validation parts are carved: 20 / (3 x count)
    assert "class weights (balanced, by the train part's counts): circle 0.476, square 2.22, stripes 2.22" in (
        capsys.readouterr().out
    )
    assert yaml.safe_load(Path("runs/w/config.yaml").read_text())["class-weights"] == "balanced"
    series = tmp_path / "s.csv"
    series.write_text("t,y\n" + "".join(f"{i},{i % 7}\n" for i in range(60)))
    assert main(["train", "--data", str(series), "--target", "y", "--class-weights", "balanced"]) == 2
    assert "--class-weights does not apply to forecasting; leave it out" in capsys.readouterr().err


def test_mixup_and_cutmix_are_logged_recorded_kept_on_resume_and_refused_for_series(image_folder, tmp_path, capsys):
    assert _train(image_folder, "--epochs", "1", "--mixup", "0.4", "--cutmix", "1", out="runs/mix") == 0
    assert (
        "mixing: each training batch's images and labels mixed by mixup (share ~ Beta(0.4, 0.4)) or cutmix "
        "(share ~ Beta(1, 1)), at even odds for each batch; validation sees plain images"
    ) in capsys.readouterr().out
    config = yaml.safe_load(Path("runs/mix/config.yaml").read_text())
    assert (config["mixup"], config["cutmix"]) == (0.4, 1.0)
    assert Path("runs/mix/train-batch.png").stat().st_size > 10_000  # the mixed images, as trained on
    assert main(["train", "--out", "runs/mix", "--resume", "--epochs", "2", "--mixup", "0", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deepstep train: error: cannot resume runs/mix with a different mixup (mixup: 0.4 -> 0.0); start a new run instead"
    )
    assert main(["train", "--data", str(image_folder), "--cutmix", "-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deepstep train: error: --cutmix must be >= 0: the alpha of the Beta(alpha, alpha) that draws each "
        "batch's mixing share (0: off; e.g. 0.2 or 1), got -1.0"
    )
    series = tmp_path / "s.csv"
    series.write_text("t,y\n" + "".join(f"{i},{i % 7}\n" for i in range(60)))
    assert main(["train", "--data", str(series), "--target", "y", "--mixup", "0.2"]) == 2
    assert "--mixup does not apply to forecasting; leave it out" in capsys.readouterr().err


def test_with_more_than_five_classes_validation_also_reports_the_top_5_accuracy(tmp_path, capsys):
    import numpy as np

    from conftest import write_images

    write_images(tmp_path / "six", 10, np.random.default_rng(0), classes=tuple("abcdef"))
    assert _train(tmp_path / "six", "--epochs", "2", "--val-split", "0.3", out="runs/six") == 0
    assert re.search(r"epoch 1/2 .* val loss \S+ acc \S+% top-5 \S+%", capsys.readouterr().out)
    with open("runs/six/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc5"]
    assert all(float(r["val_acc5"]) >= float(r["val_acc"]) for r in rows)
    best = max(rows, key=lambda r: (float(r["val_acc"]), -int(r["epoch"])))
    assert main(["evaluate", "runs/six", "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top5_accuracy"] == pytest.approx(float(best["val_acc5"]), abs=1e-6)


def test_cutout_needs_augment_and_a_square_no_larger_than_the_input(image_folder, capsys):
    assert _train(image_folder, "--epochs", "1", "--cutout", "33", out="runs/big") == 2
    assert capsys.readouterr().err.strip() == (
        "deepstep train: error: --cutout 33 is larger than the 32x32 model inputs: at most 32 pixels"
    )
    assert _train(image_folder, "--epochs", "1", "--cutout", "8", out="runs/plain") == 0
    assert "note: --cutout does nothing without --augment" in capsys.readouterr().out
    assert not Path("runs/plain/train-batch.png").exists()
    assert _train(image_folder, "--epochs", "1", "--cutout", "8", "--augment", out="runs/cut") == 0
    assert yaml.safe_load(Path("runs/cut/config.yaml").read_text())["cutout"] == 8
    assert Path("runs/cut/train-batch.png").exists()


def test_with_ema_the_average_is_what_is_validated_saved_and_evaluated(image_folder, capsys):
    assert _train(image_folder, "--epochs", "3", "--ema", "0.9", "--lr", "0.05", out="runs/ema") == 0
    with open("runs/ema/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: (float(r["val_acc"]), -int(r["epoch"])))
    capsys.readouterr()
    assert main(["evaluate", "runs/ema", "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(float(best["val_acc"]), abs=1e-6)
    record = json.loads(Path("runs/ema/checkpoints/last.json").read_text())
    assert record["state"]["dict"][-1][0] == "ema"  # the trained weights ride in the state
    assert main(["train", "--out", "runs/ema", "--resume", "--epochs", "4", "--ema", "0", "--quiet"]) == 2
    assert "runs/ema was trained with --ema: resume it with the same --ema" in capsys.readouterr().err
