"""Models of the user's own: a Python file that registers them (--model-file), trained, evaluated,
predicted with, summarised and exported like deepstep's, and never imported on a run folder's word."""

import json
import sys
from pathlib import Path

import pytest
import torch

from deepstep.cli import main
from deepstep.models import registry

TUTORIAL_NET = """
import torch
import torch.nn.functional as F
from torch import nn

import deepstep


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@deepstep.register_model("tutorial-net", input_size=(3, 32, 32), description="the tutorial's Net")
def tutorial_net(num_classes: int = 10):
    return Net(num_classes)
"""


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Each test registers into a copy of the registry, so no model of a test outlives it."""
    registry._load_builtin_models()
    monkeypatch.setattr(registry.MODELS, "_entries", dict(registry.MODELS._entries))
    monkeypatch.setattr(registry, "_FILES", {})
    monkeypatch.setattr(sys, "path", list(sys.path))


def _train(data, model_file, model="tutorial-net", out="runs/own", *extra):
    args = ["train", "--data", str(data), "--model", model, "--epochs", "2", "--batch-size", "8"]
    return main([*args, "--precision", "32", "--model-file", str(model_file), "--out", out, "--quiet", *extra])


def test_the_tutorial_net_from_a_file_trains_exactly_as_the_built_in_lenet(image_folder, tmp_path, capsys):
    net = tmp_path / "mynet.py"
    net.write_text(TUTORIAL_NET)
    assert _train(image_folder, net) == 0
    assert main(["train", "--data", str(image_folder), "--model", "lenet", "--epochs", "2", "--batch-size", "8"]
                + ["--precision", "32", "--out", "runs/lenet", "--quiet"]) == 0  # fmt: skip
    from safetensors.torch import load_file

    own, lenet = (load_file(next(Path(f"runs/{r}/checkpoints").glob("best-*.safetensors"))) for r in ("own", "lenet"))
    assert own.keys() == lenet.keys() and all(torch.equal(own[k], lenet[k]) for k in own)  # same layers, same steps
    model = json.loads(Path("runs/own/run.json").read_text())["model"]
    assert model["file"] == str(net) and len(model["sha256"]) == 64 and model["description"] == "the tutorial's Net"


def test_a_run_of_an_own_model_needs_its_file_given_and_then_works_everywhere(image_folder, tmp_path, capsys):
    net = tmp_path / "mynet.py"
    net.write_text(TUTORIAL_NET)
    assert _train(image_folder, net) == 0
    registry.MODELS.remove("tutorial-net")  # a new process: nothing registered but deepstep's own
    registry._FILES.clear()
    capsys.readouterr()
    for command in (
        ["evaluate", "runs/own"],
        ["predict", "runs/own", str(image_folder / "test")],
        ["summary", "runs/own"],
    ):
        assert main(command) == 2
        assert capsys.readouterr().err == (
            f"deepstep {command[0]}: error: runs/own was trained with your model 'tutorial-net' from {net}: "
            "give that file with --model-file (in Python: import it before loading the run)\n"
        )
    assert main(["evaluate", "runs/own", "--model-file", str(net), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 18
    assert main(["predict", "runs/own", str(image_folder / "test"), "--model-file", str(net), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 18
    assert main(["summary", "runs/own", "--model-file", str(net)]) == 0
    assert "fc1    Linear     120" in capsys.readouterr().out
    assert main(["export", "runs/own", "--format", "torchscript", "--model-file", str(net)]) == 0
    net.write_text(TUTORIAL_NET + "\n# edited\n")
    registry._FILES.clear()
    assert main(["evaluate", "runs/own", "--split", "val", "--model-file", str(net)]) == 0
    assert capsys.readouterr().err == f"note: {net} has changed since runs/own was trained; its weights may not fit\n"


def test_resume_finds_the_model_file_in_the_runs_config(image_folder, tmp_path):
    net = tmp_path / "mynet.py"
    net.write_text(TUTORIAL_NET)
    assert _train(image_folder, net) == 0
    registry.MODELS.remove("tutorial-net")
    registry._FILES.clear()
    assert main(["train", "--out", "runs/own", "--resume", "--epochs", "3", "--quiet"]) == 0
    assert len(Path("runs/own/metrics.csv").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("def forward(self, x):", "def forward(self, x:"), "cannot be imported: {file}, line 19: SyntaxError: '(' was never closed"),
        (lambda t: "import not_a_module\n" + t, "cannot be imported: {file}, line 1: ModuleNotFoundError: No module named 'not_a_module'"),
        (lambda t: t.split("@deepstep")[0], 'registers no model: put @deepstep.register_model("my-net", input_size=(3, 32, 32)) on a function that takes num_classes and returns your nn.Module'),
        (lambda t: t.replace('"tutorial-net"', '"lenet"'), "register_model: 'lenet' is one of deepstep's models; register yours under another name"),
        (lambda t: t.replace("num_classes: int = 10):", "):").replace("Net(num_classes)", "Net()"), "register_model('tutorial-net'): tutorial_net must take num_classes with a default, e.g. def tutorial_net(num_classes: int = 10), and size its last layer by it"),
        (lambda t: t.replace("input_size=(3, 32, 32)", "input_size=32"), "register_model('tutorial-net'): input_size must be (channels, height, width) for images, such as (3, 32, 32), or (steps, features) for sequences; got 32"),
    ],
    ids=["syntax", "import", "nothing-registered", "built-in-name", "no-num-classes", "input-size"],
)  # fmt: skip
def test_a_model_file_that_cannot_give_a_model_is_one_line_naming_it(image_folder, tmp_path, capsys, edit, message):
    net = tmp_path / "mynet.py"
    net.write_text(edit(TUTORIAL_NET))
    assert _train(image_folder, net) == 2
    err = capsys.readouterr().err
    sep = " " if message.startswith(("cannot", "registers")) else ": "
    assert err == f"deepstep train: error: --model-file {net}{sep}{message.format(file=net)}\n"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("torch.flatten(x, 1)", "torch.flaten(x, 1)"), "tutorial-net fails on a 3x32x32 input in its forward, after layer pool: AttributeError: module 'torch' has no attribute 'flaten' ({file}, line 22)"),
        (lambda t: t.replace("Net(num_classes)", "Net(7)"), "model 'tutorial-net' gives outputs of shape [2, 7] for a batch of 2, not [2, 3] for the data's 3 classes: size its last layer by num_classes"),
        (lambda t: t.replace("16 * 5 * 5", "16 * 4 * 4"), "tutorial-net cannot take input 3x32x32: layer fc1 (Linear) expects 256 input features but gets 400 (the flattened 16x5x5 from pool); input 3x31x31 makes them match. Its declared input is 3x32x32 (--image-size)"),
        (lambda t: t.replace("super().__init__()", "super().__init__()\n        raise ValueError('no')"), "model 'tutorial-net' cannot be built with {{'num_classes': 3}}: no"),
    ],
    ids=["forward-bug", "outputs", "layer-sizes", "builder-raises"],
)  # fmt: skip
def test_a_model_that_does_not_fit_the_data_is_one_line_naming_where(image_folder, tmp_path, capsys, edit, message):
    net = tmp_path / "mynet.py"
    net.write_text(edit(TUTORIAL_NET))
    assert _train(image_folder, net) == 2
    assert capsys.readouterr().err == f"deepstep train: error: {message.format(file=net)}\n"
    assert not Path("runs/own").exists()


def test_summary_of_a_model_whose_forward_fails_says_where_in_the_users_file(tmp_path, capsys):
    net = tmp_path / "mynet.py"
    net.write_text(TUTORIAL_NET.replace("torch.flatten(x, 1)", "flatten(x)"))
    assert main(["summary", "tutorial-net", "--model-file", str(net)]) == 2  # was a NameError traceback
    assert capsys.readouterr().err == (
        "deepstep summary: error: tutorial-net fails on a 3x32x32 input in its forward, after layer pool: "
        f"NameError: name 'flatten' is not defined ({net}, line 22)\n"
    )


def test_registering_a_name_again_replaces_the_users_model_as_a_notebook_cell_run_twice_would():
    import deepstep

    for width in (4, 8):

        @deepstep.register_model("twice", input_size=(3, 8, 8))
        def build(num_classes: int = 10, width=width):
            return torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, width), torch.nn.Linear(width, num_classes)
            )

    assert deepstep.create_model("twice")[1].out_features == 8
    assert [m["name"] for m in deepstep.list_models("twice")] == ["twice"]


def test_a_sequence_model_of_ones_own_takes_only_the_arguments_it_declares(seasonal_csv, tmp_path, capsys):
    net = tmp_path / "seqnet.py"
    net.write_text(
        "import deepstep\nfrom torch import nn\n\n\n"
        "class MeanNet(nn.Module):  # the steps' mean, then two layers\n"
        "    def __init__(self, features, outputs, width):\n"
        "        super().__init__()\n"
        "        self.layers = nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, outputs))\n\n"
        "    def forward(self, x):  # (batch, time, features)\n"
        "        return self.layers(x.mean(1))\n\n\n"
        '@deepstep.register_model("mean-net", input_size=(30, 4))\n'
        "def mean_net(num_classes: int = 1, input_features: int = 4, width: int = 8):\n"
        "    return MeanNet(input_features, num_classes, width)\n"
    )
    args = ["--target", "Sales", "--lookback", "12", "--horizon", "6", "--test-size", "12", "--model-arg", "width=4"]
    assert _train(seasonal_csv, net, "mean-net", "runs/seq", *args) == 0
    model = json.loads(Path("runs/seq/run.json").read_text())["model"]
    assert model["args"] == {"num_classes": 6, "input_features": 1, "width": 4}  # no hidden, layers, ...
    capsys.readouterr()
    assert main(["predict", "runs/seq", "--model-file", str(net), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["forecast"]) == 6


def test_the_readmes_own_model_example_trains(image_folder, tmp_path, capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("```python\n# mynet.py\n")[1].split("```")[0]
    net = tmp_path / "mynet.py"
    net.write_text(example)
    assert main(["summary", "my-net", "--model-file", str(net)]) == 0
    assert "(32 + 2*0 - 5)/1 + 1 = 28" in capsys.readouterr().out
    assert main(["models", "my-*", "--model-file", str(net)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert " ".join(row.split()) == "my-net 32,586 3x32x32 one conv, one linear (mynet.py)"
    assert _train(image_folder, net, "my-net") == 0


def test_a_file_may_register_through_a_module_beside_it_and_branch_on_values(image_folder, tmp_path, capsys):
    (tmp_path / "nets.py").write_text(
        TUTORIAL_NET.replace("return self.fc3(x)", "return self.fc3(x) if x.abs().sum().item() >= 0 else None")
    )
    (tmp_path / "train_me.py").write_text("import nets  # registers tutorial-net\n")
    assert _train(image_folder, tmp_path / "train_me.py") == 0  # .item() would fail on the meta device
