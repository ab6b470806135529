import numpy as np
import pytest
import torch
from PIL import Image

from deepstep.errors import DeepstepError
from deepstep.models import check_input, create_model, get_model_spec, list_models, trace_shapes


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward_at_its_declared_input(name):
    spec = get_model_spec(name)
    model = create_model(name, num_classes=7)
    x = torch.randn(2, *spec.input_size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _shapes(name, size):
    with torch.device("meta"):
        model = create_model(name)
    return {layer.name: layer.output_shape for layer in trace_shapes(model, size)}


def test_lenet_shapes_match_the_hand_computation():
    shapes = _shapes("lenet", (3, 32, 32))
    assert shapes["conv1"] == (1, 6, 28, 28)  # (32 + 2*0 - 5)/1 + 1 = 28
    assert shapes["conv2"] == (1, 16, 10, 10)  # (14 - 5)/1 + 1 = 10
    assert shapes["fc1"] == (1, 120)
    layers = trace_shapes(create_model("lenet"), (3, 32, 32))
    pools = [layer.output_shape for layer in layers if layer.name == "pool"]
    assert pools == [(1, 6, 14, 14), (1, 16, 5, 5)]  # 16 * 5 * 5 = 400 features
    assert sum(p.numel() for p in create_model("lenet", num_classes=10).parameters()) == 62_006


def test_simple_cnn_shapes_match_the_hand_computation():
    shapes = _shapes("simple-cnn", (1, 20, 20))
    assert shapes["conv1"] == (1, 3, 16, 16)
    assert shapes["conv2"] == (1, 10, 12, 12)  # 10 * 12 * 12 = 1440 features
    assert shapes["fc1"] == (1, 50)


def test_mini_alexnet_shapes_match_the_hand_computation():
    shapes = _shapes("mini-alexnet", (384, 13, 13))
    assert shapes["features.0"] == (1, 384, 13, 13)
    assert shapes["features.2"] == (1, 256, 13, 13)
    assert shapes["features.4"] == (1, 256, 6, 6)  # (13 - 3)/2 + 1 = 6
    assert shapes["classifier.0"] == (1, 9216)


def test_vgg16_has_the_published_parameter_count():
    with torch.device("meta"):
        model = create_model("vgg16")
    assert sum(p.numel() for p in model.parameters()) == 138_357_544


def test_an_input_the_model_cannot_take_names_the_layer():
    model = create_model("lenet")
    with pytest.raises(
        DeepstepError,
        match=r"lenet cannot take input 3x64x64: layer fc1 \(Linear\) expects 400 input features but gets 2704",
    ):
        check_input(model, "lenet", (3, 64, 64), (3, 32, 32))


def test_an_input_too_small_for_a_convolution_names_that_convolution():
    with pytest.raises(DeepstepError, match="layer conv2"):
        check_input(create_model("lenet"), "lenet", (3, 12, 12), (3, 32, 32))


def test_an_unknown_model_suggests_close_names():
    with pytest.raises(DeepstepError, match=r"unknown model 'lenett' \(did you mean 'lenet'\?\)"):
        create_model("lenett")


def test_an_unknown_model_argument_lists_the_known_ones():
    with pytest.raises(DeepstepError, match="model 'resnet-cifar' has no argument depth; it takes num_classes, width"):
        create_model("resnet-cifar", depth=3)


@pytest.mark.parametrize("name", ["resnet-cifar", "airbench"])
@pytest.mark.parametrize("width", [0, -4])
def test_a_width_below_one_is_refused_by_name(name, width):
    # 0 built empty layers that failed later in the first batch norm, -4 a RuntimeError from torch
    with pytest.raises(DeepstepError, match=f"width is a number of channels >= 1, got {width}"):
        create_model(name, width=width)


def test_the_resnet_width_option_changes_the_channels():
    narrow, wide = create_model("resnet-cifar", width=8), create_model("resnet-cifar", width=16)
    assert narrow.fc.in_features == 64 and wide.fc.in_features == 128


def _patch_moment(outputs: torch.Tensor) -> torch.Tensor:
    """The second-moment matrix of a conv's outputs over every image and position: (C, C)."""
    flat = outputs.permute(1, 0, 2, 3).reshape(outputs.shape[1], -1).double()
    return flat @ flat.T / flat.shape[1]


def test_the_whitening_layer_decorrelates_the_patches_it_was_set_from():
    from deepstep.models.airbench import whitening_weights

    generator = torch.Generator().manual_seed(0)
    # Smooth images: neighbouring pixels and the three channels are strongly correlated.
    coarse = torch.randn(200, 1, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear").repeat(1, 3, 1, 1)
    images = images + 0.3 * torch.randn(200, 3, 32, 32, generator=generator)
    before = _patch_moment(torch.nn.functional.unfold(images, 2).view(200, 12, 31, 31))
    assert before[0, 1] / before[0, 0] > 0.5  # neighbouring pixels correlated to start with
    weights = whitening_weights(images, patch=2)
    assert weights.shape == (24, 3, 2, 2)
    assert torch.equal(weights[12:], -weights[:12])  # each direction and its negative
    moment = _patch_moment(torch.nn.functional.conv2d(images, weights[:12]))
    assert torch.allclose(moment, torch.eye(12, dtype=torch.float64), atol=0.02)


def test_airbench_blocks_start_near_the_identity_with_fixed_norm_scales():
    from deepstep.models import create_model

    model = create_model("airbench", width=8)
    conv = model.block2[0]  # 8 -> 32 channels
    x = torch.randn(2, 8, 6, 6)
    # its first 8 filters pass their input through unchanged
    assert torch.allclose(torch.nn.functional.conv2d(x, conv.weight[:8], padding=1), x)
    assert conv.weight[8:].abs().sum() > 0  # the others start random
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)


@pytest.mark.parametrize("in_memory", ["yes", "no"])  # decoded in memory, or read from the files
def test_training_airbench_sets_its_whitening_layer_from_the_data_and_keeps_it(image_folder, in_memory):
    import deepstep
    from deepstep.engine.run_dir import RunDir
    from deepstep.tasks.image_classification import load_trained

    run = deepstep.train(
        data=str(image_folder),
        model="airbench",
        model_args={"width": 8},
        epochs=2,
        batch_size=16,
        lr=0.05,
        val_split=0.0,  # so that the train part is every file of train/
        in_memory=in_memory,
        out="runs/air",
        verbose=False,
    )
    model = load_trained(RunDir.open(run.path)).model
    files = sorted((image_folder / "train").rglob("*.png"))
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in files])).permute(0, 3, 1, 2)
    norm = run.info["data"]["normalization"]
    mean, std = torch.tensor(norm["mean"]).view(1, 3, 1, 1), torch.tensor(norm["std"]).view(1, 3, 1, 1)
    x = (pixels.float() / 255 - mean) / std
    # After two epochs, the first layer still whitens the training images it was set from.
    moment = _patch_moment(torch.nn.functional.conv2d(x, model.whiten.weight[:12]))
    assert torch.allclose(moment, torch.eye(12, dtype=torch.float64), atol=0.02)


def test_the_airbench_whitening_bias_learns_in_its_first_epochs_only(image_folder):
    import deepstep
    from deepstep.engine.run_dir import RunDir
    from deepstep.tasks.image_classification import load_trained

    settings = dict(data=str(image_folder), model="airbench", batch_size=16, lr=0.05, out="runs/bias", verbose=False)
    deepstep.train(**settings, model_args={"width": 4, "whiten_bias_epochs": 1}, epochs=1)
    first = load_trained(RunDir.open("runs/bias"), "last").model
    deepstep.train(**settings, model_args={"width": 4, "whiten_bias_epochs": 1}, epochs=2, resume=True)
    second = load_trained(RunDir.open("runs/bias"), "last").model
    assert first.whiten.bias.abs().sum() > 0  # learned in epoch 1 (it starts at 0)
    assert torch.equal(second.whiten.bias, first.whiten.bias)  # and not in epoch 2
    assert not torch.equal(second.fc.weight, first.fc.weight)  # while the rest went on learning


def test_airbench_with_whiten_bias_norm_trains_it_as_the_norm_shifts_down_to_zero_by_its_last_epoch(image_folder):
    from deepstep.engine.checkpoint import load_state

    run = _train_airbench_recipe(image_folder, "cifar-airbench-muon", whiten_bias="norm")
    groups = load_state(run.path / "checkpoints", "last")["optimizer"]["param_groups"]
    (whiten,) = [g for g in groups if "stop_epoch" in g]
    assert whiten["stop_epoch"] == 3 and len(whiten["params"]) == 1
    assert whiten["initial_lr"] == 1.66 * 64 and whiten["weight_decay"] == pytest.approx(2.4e-3 / 64)
    assert whiten["lr"] == pytest.approx(1.66 * 64 / 3)  # 2 of its 3 epochs done (batch 16: equal epochs)


def test_airbench_names_the_ways_its_whitening_bias_can_learn_when_given_another():
    from deepstep.models import create_model

    with pytest.raises(DeepstepError, match=r"whiten_bias is one of base, norm, got 'fast'$"):
        create_model("airbench", whiten_bias="fast")
    assert create_model("airbench", width=4).optimizer_hints() == []  # base: as the other biases


def test_airbench_in_bf16_takes_its_late_weight_gradients_from_a_matmul_and_saves_plain_convs(
    image_folder, monkeypatch
):
    import deepstep
    from deepstep.engine import backends, precision
    from deepstep.engine.run_dir import RunDir
    from deepstep.tasks.image_classification import load_trained

    for module in (backends, precision):  # any CPU is made one with AMX here
        monkeypatch.setattr(module, "cpu_has_fast_bf16", lambda: True)
    filled, fill = [], backends.Columns.fill

    def recording_fill(self, x, kernel, padding):
        filled.append(tuple(x.shape[1:]))
        return fill(self, x, kernel, padding)

    monkeypatch.setattr(backends.Columns, "fill", recording_fill)
    run = deepstep.train(
        data=str(image_folder),
        model="airbench",
        model_args={"width": 16},
        epochs=1,
        batch_size=16,
        precision="bf16",
        device="cpu",
        out="runs/air-bf16",
        verbose=False,
    )
    assert "im2col + matmul" in run.info["device"]["kernels"]
    # block2's second conv and block3's two (4w = 64 input channels, 7x7 and 3x3 outputs); not
    # block1's (15x15 and larger outputs) nor block2's first (16 input channels)
    assert set(filled) == {(64, 7, 7), (64, 3, 3)} and len(filled) % 3 == 0
    model = load_trained(RunDir.open(run.path)).model  # the checkpoint rebuilds the plain model
    assert all(type(m) is torch.nn.Conv2d for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def _train_airbench_recipe(image_folder, recipe: str, **model_args):
    """Two epochs of `recipe` at width 4 (and `model_args`) and batch 16 on the generated images; the run."""
    import deepstep

    return deepstep.train(
        data=str(image_folder),
        recipe=recipe,
        model_args={"width": 4, **model_args},
        epochs=2,
        batch_size=16,
        out=f"runs/{recipe}",
        verbose=False,
    )


def test_the_airbench_recipe_trains_with_fixed_norm_scales_and_moving_shifts(image_folder):
    from deepstep.engine.run_dir import RunDir
    from deepstep.tasks.image_classification import load_trained

    run = _train_airbench_recipe(image_folder, "cifar-airbench")
    assert run.config["norm-lr-scale"] == 64.0 and run.config["alternate-flip"]
    norms = [m for m in load_trained(RunDir.open(run.path)).model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)  # the scale stays 1
    assert all(m.bias.abs().sum() > 0 for m in norms)  # the shifts were learned (they start at 0)


def test_the_airbench_muon_recipe_trains_the_filters_with_muon(image_folder):
    from deepstep.engine.checkpoint import load_state

    run = _train_airbench_recipe(image_folder, "cifar-airbench-muon")
    assert run.config["optimizer"] == "muon" and run.config["schedule"] == "linear"
    groups = load_state(run.path / "checkpoints", "last")["optimizer"]["param_groups"]
    muon = [g for g in groups if g["muon"]]
    # the whitening filters (fixed: never stepped) and the six 3x3 convs at Muon's rate; the rest as SGD
    assert len(muon) == 1 and len(muon[0]["params"]) == 7 and muon[0]["lr"] == 0.0  # the schedule ends at 0
    assert muon[0]["initial_lr"] == 0.24 and muon[0]["momentum"] == 0.6
    assert {g["initial_lr"] for g in groups if not g["muon"]} == {1.66, 1.66 * 64}
