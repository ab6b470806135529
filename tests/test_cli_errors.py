"""Every input error a user can make gets one line on stderr, exit code 2 and no traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_images


def deepstep(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "deepstep", *args], capture_output=True, text=True, timeout=300, env=env
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def train(*args):
    return deepstep("train", "--epochs", "1", "--quiet", "--precision", "32", *args)


def test_a_missing_path(tmp_path):
    assert_one_line_error(train("--data", str(tmp_path / "missing" / "photos")), "missing/photos does not exist")


def test_a_missing_archive_is_named_even_with_a_sequence_model(tmp_path):
    # a missing .zip cannot say whether it held images or sequences: the file, not the model, is the error
    missing = str(tmp_path / "IndoorMovement.zip")
    assert_one_line_error(train("--data", missing, "--model", "gru"), "IndoorMovement.zip does not exist")


def test_a_mistyped_dataset_name_gets_a_suggestion_in_train_and_show():
    assert_one_line_error(train("--data", "cifar11"), "'cifar11' is neither a built-in dataset (did you mean 'cifar10'")
    shown = deepstep("show", "cifar10-sampel")
    assert_one_line_error(shown, "'cifar10-sampel' is neither", "did you mean 'cifar10-sample'")
    assert "--data" not in shown.stderr  # show takes the dataset as its argument, not as --data


def test_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(train("--data", str(tmp_path / "empty")), "is empty")


def test_a_folder_with_no_class_subfolders(tmp_path):
    write_images(tmp_path, 2, np.random.default_rng(0), classes=("loose",))
    assert_one_line_error(train("--data", str(tmp_path / "loose")), "no class subfolders", "ImageFolder layout")


def test_a_folder_of_one_class(tmp_path):
    write_images(tmp_path / "cats", 4, np.random.default_rng(0), classes=("cat",))
    assert_one_line_error(train("--data", str(tmp_path / "cats")), "cats has one class (cat)", "at least two")


def test_a_folder_with_too_few_images_a_class_to_hold_any_out_names_the_split_and_the_fix(tmp_path):
    write_images(tmp_path / "one", 1, np.random.default_rng(0))  # one image a class: nothing to carve a test part from
    assert_one_line_error(
        train("--data", str(tmp_path / "one")),
        "--test-split 0.2: no class has two images",
        "(3 images in 3 classes); add images, at least two a class, or give a test/ folder",
    )
    write_images(tmp_path / "two", 2, np.random.default_rng(0))  # one a class left to train on after the test part
    assert_one_line_error(
        train("--data", str(tmp_path / "two")),
        "--val-split 0.1 of the train part: no class has two images",
        "or train without one: --val-split 0",
    )


def test_a_corrupt_jpeg_is_skipped_with_a_warning_and_named_with_strict(image_folder, tmp_path):
    bad = image_folder / "train" / "square" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    skipped = train("--data", str(image_folder), "--out", str(tmp_path / "run"))
    assert skipped.returncode == 0
    assert "warning: skipped 1 unreadable image(s)" in skipped.stdout and str(bad) in skipped.stdout
    assert_one_line_error(train("--data", str(image_folder), "--strict", "--out", str(tmp_path / "strict")), str(bad))


def test_a_text_file_passed_to_predict(trained_run, tmp_path):
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    assert_one_line_error(deepstep("predict", str(trained_run), str(text)), "readme.txt: not an image")


def test_a_missing_file_and_a_pipe_passed_to_predict(trained_run, tmp_path):
    missing = deepstep("predict", str(trained_run), str(tmp_path / "nope.jpg"))
    assert_one_line_error(missing, "nope.jpg does not exist")
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)  # opening it to decode would wait for a writer forever
    assert_one_line_error(
        deepstep("predict", str(trained_run), str(pipe)), "pipe.jpg is not a file or folder of images"
    )


def test_a_decompression_bomb_passed_to_predict(trained_run, tmp_path):
    from PIL import Image

    bomb = tmp_path / "huge.png"
    Image.new("1", (10_000, 9_000)).save(bomb)  # 90 million pixels in a few kB: just over Pillow's limit
    assert_one_line_error(deepstep("predict", str(trained_run), str(bomb)), "huge.png: image too large")


def test_an_unknown_model_name_suggests_close_names():
    assert_one_line_error(train("--model", "resnet-cifr"), "unknown model 'resnet-cifr'", "did you mean 'resnet-cifar'")


def test_an_unknown_dataset_name_suggests_close_names():
    assert_one_line_error(train("--data", "mnsit"), "did you mean 'mnist'")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["train", "--shedule", "cosine"],
            [
                "deepstep train: error: unrecognized arguments: --shedule cosine",
                "did you mean '--schedule'?",
                "see deepstep train --help",
            ],
        ),
        (["train", "--epochs", "x"], ["deepstep train: error: argument --epochs", "see deepstep train --help"]),
        (["evaluate"], ["deepstep evaluate: error: the following arguments are required: RUN"]),
        (  # not taken as an abbreviation of --data-dir
            ["evaluate", "RUN", "--dat", "photos"],
            ["deepstep evaluate: error: unrecognized arguments: --dat photos (did you mean '--data'?)"],
        ),
        (
            ["trian"],
            [
                "deepstep: error: argument COMMAND: invalid choice: 'trian' (did you mean 'train'?); "
                "choose from quickstart, train,",
                "see deepstep --help",
            ],
        ),
        (  # the data given as a path alone, as `python train.py data.csv` scripts take it
            ["baseline", "airline.csv"],
            ["unrecognized arguments: airline.csv (the data is given as --data airline.csv); see deepstep baseline"],
        ),
        (["train", "--data", "x", "a.csv"], ["deepstep train: error: unrecognized arguments: a.csv; see deepstep"]),
        (  # as Lightning's ckpt_path takes it
            ["train", "--resume", "runs/a", "--epochs", "9"],
            [
                "unrecognized arguments: runs/a (--resume takes no value; the run is the folder --out names: "
                "--out runs/a --resume); see deepstep train --help"
            ],
        ),
        (["evaluate", "RUN", "--json", "x"], ["unrecognized arguments: x (--json takes no value); see deepstep"]),
        (
            ["evaluate", "RUN", "--split", "tset"],
            ["invalid choice: 'tset' (did you mean 'test'?); choose from test, val, all; see deepstep evaluate --help"],
        ),
    ],
)
def test_a_command_line_argparse_refuses_is_one_line_not_the_whole_usage(args, fragments):
    assert_one_line_error(deepstep(*args), *fragments)


@pytest.mark.parametrize("size", ["0", "-4"])
def test_a_batch_size_that_is_not_positive(size):
    assert_one_line_error(train("--batch-size", size), f"--batch-size must be a positive integer, got {size}")


def test_a_negative_micro_batch():
    assert_one_line_error(train("--micro-batch", "-1"), "--micro-batch must be a number of examples >= 0")


@pytest.mark.parametrize(
    ("padding", "message"),
    [("-1", "--crop-padding must be a number of pixels >= 0, got -1"), ("32", "too large for 32x32 model inputs")],
)
def test_a_crop_padding_that_cannot_work(padding, message, image_folder):
    assert_one_line_error(train("--data", str(image_folder), "--augment", "--crop-padding", padding), message)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--lr-end-factor", "1.5", "--schedule", "onecycle"],
            "--lr-end-factor is a fraction of --lr in [0, 1], got 1.5",
        ),
        (["--lr-end-factor", "0.1"], "--lr-end-factor sets where --schedule cosine, onecycle or linear ends"),
        (["--muon-lr", "0"], "--muon-lr must be positive, got 0.0"),
        (["--muon-momentum", "1"], "--muon-momentum must be in [0, 1), got 1.0"),
        (["--lr-start-factor", "0.2", "--schedule", "cosine"], "--lr-start-factor sets where the warm-up starts"),
        (["--norm-lr-scale", "0"], "--norm-lr-scale must be positive, got 0.0"),
        (["--progressive-crop", "0"], "--progressive-crop must be a side in pixels >= 1, got 0"),
        (["--progressive-until", "1.5"], "--progressive-until is a fraction of the epochs in (0, 1], got 1.5"),
    ],
)
def test_schedule_and_norm_options_that_cannot_work(flags, message):
    assert_one_line_error(train(*flags), message)


def test_an_input_size_the_model_cannot_take(image_folder):
    assert_one_line_error(
        train("--data", str(image_folder), "--image-size", "64"), "lenet cannot take input 3x64x64", "layer fc1"
    )


def test_a_model_whose_input_is_not_an_image(image_folder):
    assert_one_line_error(
        train("--data", str(image_folder), "--model", "mini-alexnet"),
        "takes 384x13x13 inputs",
        "see its layers with `deepstep summary mini-alexnet`",
    )


def test_a_config_file_with_an_unknown_key(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("epohcs = 3\n")
    assert_one_line_error(train("--config", str(config)), "unknown option 'epohcs'", "did you mean 'epochs'")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "lenet", "--progressive-crop", "24"], "lenet cannot take 24x24 windows"),
        (["--model", "resnet-cifar", "--progressive-crop", "32"], "must be smaller than the 32x32 model inputs"),
    ],
)
def test_a_progressive_crop_the_model_or_images_cannot_take(flags, message, image_folder):
    assert_one_line_error(train("--data", str(image_folder), *flags), message)


def test_compile_without_a_cpp_compiler_is_said_before_a_run_folder_exists(image_folder, seasonal_csv, tmp_path):
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++")}  # torch.compile's C++ compiler on a CPU
    for data in (["--data", str(image_folder)], ["--data", str(seasonal_csv), "--target", "Sales", "--lookback", "12"]):
        out = tmp_path / "runs" / "compiled"
        result = deepstep("train", "--epochs", "1", "--quiet", "--compile", "--out", str(out), *data, env=env)
        assert_one_line_error(result, "--compile needs a C++ compiler", "no-such-g++", "or train without --compile")
        assert not out.exists()


def test_nan_as_a_number_is_refused_before_it_reaches_a_split(tmp_path):
    series = tmp_path / "s.csv"
    series.write_text("t,y\n" + "".join(f"{i},{i % 7}\n" for i in range(60)))
    # int(nan) used to raise deep inside the split
    assert_one_line_error(
        deepstep("baseline", "--data", str(series), "--horizon", "2", "--test-size", "nan"),
        "--test-size must be a finite number, got nan",
    )


def test_a_spreadsheet_is_sent_to_csv(tmp_path):
    sheet = tmp_path / "sales.xlsx"
    sheet.write_bytes(b"PK\x03\x04 not really a workbook")
    assert_one_line_error(
        train("--data", str(sheet)), "sales.xlsx is not a folder", "a series is read from a .csv or .tsv file"
    )


@pytest.mark.parametrize("listed", ["'test', 'val'", "test, val"], ids=["python 3.11", "python 3.12.8 and later"])
def test_an_invalid_choice_gets_a_suggestion_in_either_argparse_wording(listed, capsys):
    from deepstep.cli import Parser

    with pytest.raises(SystemExit):
        Parser(prog="deepstep evaluate").error(f"argument --split: invalid choice: 'tset' (choose from {listed})")
    assert capsys.readouterr().err == (
        "deepstep evaluate: error: argument --split: invalid choice: 'tset' (did you mean 'test'?); "
        "choose from test, val; see deepstep evaluate --help\n"
    )
