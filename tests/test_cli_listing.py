import json

from deepstep.cli import main


def test_datasets_lists_the_built_in_ones(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    images = [d["name"] for d in rows if d["task"] == "image-classification"]
    series = [d["name"] for d in rows if d["task"] == "forecasting"]
    assert images == ["cifar10-sample", "cifar10", "cifar100", "mnist", "fashion-mnist"]
    assert series == ["co2", "sunspots", "nile", "elnino"]


def test_models_lists_parameters_and_declared_inputs(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["lenet"]["parameters"] == 62_006 and rows["lenet"]["input_size"] == [3, 32, 32]
    assert rows["mini-alexnet"]["input_size"] == [384, 13, 13]
    assert rows["vgg16"]["parameters"] == 138_357_544
    assert {"alexnet", "vgg11", "resnet18", "resnet-cifar", "simple-cnn"} <= set(rows)


def test_models_takes_a_pattern(capsys):
    assert main(["models", "vgg*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["vgg11", "vgg16"]
    for args in (["models", "zzz"], ["models", "--pretrained", "zzz"]):  # not an empty table
        assert main(args) == 2
        assert f"no model matches 'zzz'; `deepstep {' '.join(args[:-1])}` lists them all" in capsys.readouterr().err


def test_every_command_has_help_and_train_groups_its_options(capsys):
    import pytest

    from deepstep.cli import COMMANDS

    for command in COMMANDS:
        for asked in ([command, "--help"], ["help", command]):  # `deepstep help train`, as git takes it
            with pytest.raises(SystemExit) as done:
                main(asked)
            text = capsys.readouterr().out
            assert done.value.code == 0 and f"usage: deepstep {command}" in text and "\nexamples:\n" in text
    with pytest.raises(SystemExit) as done:
        main(["help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: deepstep [-h] [--version] COMMAND")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    headings = [line for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[:3] == ["options:", "data:", "model:"] and "optimisation:" in headings
    assert text.index("\n  --lookback") > text.index("\nsequences:") > text.index("\n  --image-size")
