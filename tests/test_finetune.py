"""Fine-tuning a pretrained backbone on a small generated folder, with weights the tests write."""

import torch

from conftest import write_pretrained_weights
from deepstep.cli import main

MODEL = "mobilenet_v3_small"
HEAD = "classifier.3."


def _finetune(folder, *extra, out="runs/ft"):
    argv = [
        "train",
        "--data",
        str(folder),
        "--model",
        MODEL,
        "--pretrained",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--image-size",
        "64",
        "--resize",
        "72",
        "--lr",
        "0.05",
        "--precision",
        "32",
        "--out",
        out,
        "--quiet",
        *extra,
    ]
    return main(argv)


def _trained(out="runs/ft"):
    from deepstep.engine.run_dir import RunDir
    from deepstep.tasks.image_classification import load_trained

    return load_trained(RunDir.open(out), "last").model.state_dict()


def test_a_frozen_backbone_does_not_change_while_the_head_learns(image_folder):
    pretrained = torch.load(write_pretrained_weights(MODEL), weights_only=True)
    assert _finetune(image_folder, "--freeze-backbone") == 0
    after = _trained()
    backbone = [k for k in pretrained if not k.startswith(HEAD)]
    assert len(backbone) > 100  # weights, biases and batch-norm statistics
    for key in backbone:
        assert torch.equal(after[key], pretrained[key]), key
    assert after[HEAD + "weight"].shape == (3, 1024)  # the new head: three classes
    first = _finetune(image_folder, "--freeze-backbone", "--epochs", "1", out="runs/one")
    assert first == 0
    assert not torch.equal(_trained("runs/one")[HEAD + "weight"], after[HEAD + "weight"])


def test_unfreeze_after_trains_the_backbone_from_then_on(image_folder):
    pretrained = torch.load(write_pretrained_weights(MODEL), weights_only=True)
    assert _finetune(image_folder, "--freeze-backbone", "--unfreeze-after", "1") == 0
    after = _trained()
    assert not torch.equal(after["features.0.0.weight"], pretrained["features.0.0.weight"])


def test_without_freezing_the_backbone_learns_at_its_scaled_rate(image_folder):
    pretrained = torch.load(write_pretrained_weights(MODEL), weights_only=True)
    assert _finetune(image_folder, "--backbone-lr-scale", "0.1") == 0
    after = _trained()
    assert not torch.equal(after["features.0.0.weight"], pretrained["features.0.0.weight"])


def test_the_run_records_the_weights_preprocessing_and_predicts(image_folder, capsys):
    write_pretrained_weights(MODEL)
    assert _finetune(image_folder, "--freeze-backbone") == 0
    from pathlib import Path

    import yaml

    config = yaml.safe_load(Path("runs/ft/config.yaml").read_text())
    assert config["pretrained"] is True and config["resize"] == 72 and config["image-size"] == "64"
    assert config["mean"] == [0.485, 0.456, 0.406]
    photo = next((image_folder / "test" / "circle").iterdir())
    assert main(["predict", "runs/ft", str(photo), "--json"]) == 0
    assert '"label"' in capsys.readouterr().out


def test_freezing_needs_pretrained(image_folder, capsys):
    assert main(["train", "--data", str(image_folder), "--model", "lenet", "--freeze-backbone"]) == 2
    assert "--freeze-backbone and --unfreeze-after need --pretrained" in capsys.readouterr().err
