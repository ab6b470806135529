import json

import pytest

from deepstep.cli import main


def _summary(capsys, *argv):
    assert main(["summary", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _spatial(summary, kind):
    return [layer["output_shape"][-1] for layer in summary["layers"] if layer["type"] == kind]


def test_lenet_summary_matches_the_hand_computation(capsys):
    s = _summary(capsys, "lenet", "--input", "3x32x32")
    assert [(layer["name"], layer["output_shape"]) for layer in s["layers"][:4]] == [
        ("conv1", [6, 28, 28]),
        ("pool", [6, 14, 14]),
        ("conv2", [16, 10, 10]),
        ("pool", [16, 5, 5]),
    ]
    assert s["layers"][0]["formula"] == "(32 + 2*0 - 5)/1 + 1 = 28"
    assert s["layers"][3]["formula"] == "(10 + 2*0 - 2)/2 + 1 = 5"
    assert s["layers"][4]["formula"] == "400 -> 120 features"
    assert s["parameters"] == s["trainable_parameters"] == 62_006
    # conv1: 6*28*28 outputs x 3*5*5 weights each; fc1: 120 x 400
    assert s["layers"][0]["mult_adds"] == 6 * 28 * 28 * 75
    assert s["layers"][4]["mult_adds"] == 120 * 400


def test_simple_cnn_and_mini_alexnet_summaries(capsys):
    s = _summary(capsys, "simple-cnn", "--input", "1x20x20")
    assert _spatial(s, "Conv2d") == [16, 12]
    assert "1440 -> 50 features" in [layer["formula"] for layer in s["layers"]]
    s = _summary(capsys, "mini-alexnet")
    assert s["input_size"] == [384, 13, 13]
    assert _spatial(s, "Conv2d") + _spatial(s, "MaxPool2d") == [13, 13, 6]
    assert "9216 -> 4096 features" in [layer["formula"] for layer in s["layers"]]


def test_the_input_size_may_follow_the_model_as_in_the_python_api(capsys):
    assert _summary(capsys, "simple-cnn", "1x20x20") == _summary(capsys, "simple-cnn", "--input", "1x20x20")
    assert _summary(capsys, "resnet-cifar", "3x64x64", "--input", "3x64x64")["input_size"] == [3, 64, 64]
    assert main(["summary", "lenet", "3x16x16", "--input", "3x32x32"]) == 2
    assert "two input sizes, 3x16x16 and --input 3x32x32: give one" in capsys.readouterr().err


def test_the_table_names_totals(capsys):
    assert main(["summary", "lenet"]) == 0
    out = capsys.readouterr().out
    assert "(14 + 2*0 - 5)/1 + 1 = 10" in out
    assert "parameters:           62,006" in out
    assert "multiply-adds:" in out and "activation memory:" in out


def test_a_shared_layer_counts_its_parameters_once(capsys):
    s = _summary(capsys, "lenet")
    assert sum(layer["parameters"] for layer in s["layers"]) == s["parameters"]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (
            "3x64x64",
            "layer fc1 (Linear) expects 400 input features but gets 2704 (the flattened 16x13x13 from pool); "
            "input 3x32x32 makes them match",
        ),
        ("1x32x32", "layer conv1 (Conv2d) expects 3 input channels but gets 1"),
        ("3x8x8", "layer conv2 (Conv2d) gets 6x2x2, too small for its window: (2 + 2*0 - 5)/1 + 1 = -2"),
        ("3x32", "has 2 dimensions but lenet takes 3"),
        ("3xAx3", "--input '3xAx3' is not a size"),
    ],
)
def test_an_input_that_does_not_fit_names_the_layer_and_the_fix(capsys, size, expected):
    assert main(["summary", "lenet", "--input", size]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("size", ["3x28x28", "3,28,28", "(3, 28, 28)", "3 x 28 x 28", "[3,28,28]"])
def test_a_size_may_be_written_with_x_or_commas_as_shapes_are_printed(capsys, size):
    assert main(["summary", "lenet", "--input", size]) == 2  # 28x28 does not fit lenet: the size was read
    assert "input 3x32x32 makes them match" in capsys.readouterr().err


def test_an_image_size_may_be_written_with_x_or_a_comma():
    from deepstep.config import parse_image_size

    assert parse_image_size("64x48") == parse_image_size("64,48") == parse_image_size("(64, 48)") == (64, 48)
    assert parse_image_size("32") == (32, 32)


@pytest.mark.parametrize("size", ["3xx28", "3,,28", "3;28", "x"])
def test_a_size_with_an_empty_or_unknown_part_is_refused(capsys, size):
    assert main(["summary", "lenet", "--input", size]) == 2
    assert f"--input {size!r} is not a size" in capsys.readouterr().err


def test_the_formula_shows_floor_and_non_square_sizes():
    from torch import nn

    from deepstep.models.shapes import size_formula

    assert size_formula(nn.MaxPool2d(3, 2), (1, 8, 14, 14)) == "floor((14 + 2*0 - 3)/2) + 1 = 6"
    assert size_formula(nn.Conv2d(1, 1, 3, padding=1), (1, 1, 20, 10)) == (
        "(20 + 2*1 - 3)/1 + 1 = 20; (10 + 2*1 - 3)/1 + 1 = 10"
    )


def test_a_trained_run_is_summarised_with_its_own_input(trained_run, capsys):
    s = _summary(capsys, str(trained_run))
    assert s["model"] == "lenet" and s["input_size"] == [3, 32, 32]
    assert s["layers"][-1]["output_shape"] == [3]  # the generated folder has three classes


def test_model_arguments_change_the_summarised_model(capsys):
    narrow = _summary(capsys, "resnet-cifar", "--model-arg", "width=8")
    default = _summary(capsys, "resnet-cifar")
    assert narrow["layers"][0]["output_shape"][0] == 8 and default["layers"][0]["output_shape"][0] == 16
    assert narrow["parameters"] < default["parameters"]
    assert main(["summary", "resnet-cifar", "--model-arg", "depth=8"]) == 2
    err = capsys.readouterr().err
    assert "has no argument depth" in err and len(err.strip().splitlines()) == 1
    assert main(["summary", "resnet-cifar", "--model-arg", "width=wide"]) == 2
    err = capsys.readouterr().err
    assert "width must be a whole number (default 16), got 'wide'" in err and len(err.strip().splitlines()) == 1


def test_feature_maps_are_each_conv_and_pool_call_s_output_kept_before_an_in_place_relu():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from deepstep.models.shapes import feature_maps

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten())
    image = torch.randn(1, 8, 8)
    maps = feature_maps(model, image)
    conv = F.conv2d(image[None], model[0].weight, model[0].bias)[0]  # (2, 6, 6), with negative values
    assert [(name, tuple(m.shape)) for name, _, m in maps] == [("0", (2, 6, 6)), ("2", (2, 3, 3))]
    assert conv.min() < 0 and torch.allclose(maps[0][2], conv)
    assert torch.allclose(maps[1][2], F.max_pool2d(conv.relu(), 2))


def test_a_run_s_feature_maps_are_drawn_a_row_a_layer_call_with_its_own_preprocessing(
    trained_run, image_folder, tmp_path, capsys, monkeypatch
):
    import deepstep.plots as plots

    drawn = {}
    real = plots.plot_feature_maps

    def plot(image, layers, out, title, channels):
        drawn.update(image=image, layers=[(label, maps.shape) for label, maps in layers], channels=channels)
        return real(image, layers, out, title, channels)

    monkeypatch.setattr(plots, "plot_feature_maps", plot)
    image = image_folder / "test" / "circle" / "000.png"
    assert main(["summary", str(trained_run), "--image", str(image), "--plot", str(tmp_path / "maps")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"feature maps of {image}: {tmp_path / 'maps.png'}"
    assert drawn["image"].shape == (3, 32, 32) and drawn["channels"] == 8
    assert drawn["layers"] == [
        ("conv1\nConv2d\n6x28x28", (6, 28, 28)),
        ("pool\nMaxPool2d\n6x14x14", (6, 14, 14)),
        ("conv2\nConv2d\n16x10x10", (16, 10, 10)),
        ("pool\nMaxPool2d\n16x5x5", (16, 5, 5)),  # the same pool, called again
    ]
    assert (tmp_path / "maps.png").stat().st_size > 10_000
    assert main(["summary", str(trained_run), "--image", str(image), "--plot", str(tmp_path / "j.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feature_maps"] == str(tmp_path / "j.png")


def test_feature_maps_need_a_run_and_one_image_file(trained_run, image_folder, capsys):
    image = str(image_folder / "test" / "circle" / "000.png")
    cases = [
        (["lenet", "--image", image], "--image draws a trained model's feature maps: give a run folder, not 'lenet'"),
        ([str(trained_run), "--image", str(image_folder / "test")], "is a folder: give one image file"),
        ([str(trained_run), "--image", "missing.png"], "missing.png does not exist"),
        ([str(trained_run), "--plot", "maps.png"], "--plot goes with --image FILE"),
        ([str(trained_run), "--image", image, "--channels", "0"], "--channels must be at least 1, got 0"),
        ([str(trained_run), "--image", image, "--input", "3x64x64"], "--image uses the run's own input size"),
    ]
    for argv, message in cases:
        assert main(["summary", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_the_python_api_draws_the_feature_maps_of_a_pil_image(trained_run, image_folder, tmp_path):
    from PIL import Image

    import deepstep

    with Image.open(image_folder / "test" / "square" / "000.png") as image:
        out = deepstep.load_run(trained_run).feature_maps(image.convert("RGB"), tmp_path / "maps.png", channels=2)
    assert out == tmp_path / "maps.png" and out.stat().st_size > 5_000


def test_a_deep_net_s_feature_maps_are_drawn_for_evenly_spaced_layers_ending_with_the_last(
    trained_run, image_folder, tmp_path, monkeypatch
):
    import deepstep.plots as plots
    import deepstep.tasks.image_classification as images

    drawn = {}
    monkeypatch.setattr(images, "FEATURE_MAP_ROWS", 3)
    monkeypatch.setattr(
        plots, "plot_feature_maps", lambda image, layers, out, title, n: drawn.update(l=layers, t=title)
    )
    images.draw_feature_maps(trained_run, image_folder / "test" / "circle" / "000.png", tmp_path / "m.png")
    assert [label.split("\n")[0] + " " + label.split("\n")[2] for label, _ in drawn["l"]] == [
        "conv1 6x28x28",
        "conv2 16x10x10",
        "pool 16x5x5",
    ]
    assert "of 3 of its 4 convolutions and poolings, evenly spaced" in drawn["t"]
