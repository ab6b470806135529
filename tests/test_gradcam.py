import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepstep.errors import DeepstepError
from deepstep.models.gradcam import cam_layer, grad_cam


class ColourDetector(nn.Module):
    """Class 0's score is the mean redness of the image, class 1's its mean blueness; one ReLU
    module is used twice, and `in_place` applies a last ReLU to the conv's maps in place."""

    def __init__(self, in_place: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        self.in_place = in_place
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0  # red
            self.conv.weight[1, 2] = 1.0  # blue
            self.conv.weight[:, 1] = -0.5  # green counts against both
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x):
        x = self.act(x)
        x = self.conv(x)  # (B, 2, H, W)
        x = x.relu_() if self.in_place else F.relu(x)
        return self.fc(self.pool(self.act(x)).flatten(1))


def red_and_blue() -> torch.Tensor:
    """A 16x16 image, green but for a red square at the top left and a blue one at the bottom right."""
    image = torch.zeros(1, 3, 16, 16)
    image[0, 1] = 0.5
    image[0, :, 1:5, 1:5] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    image[0, :, 10:14, 11:15] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)
    return image


def test_each_class_s_map_lies_on_its_evidence_at_the_input_s_size():
    model = ColourDetector().requires_grad_(False)  # frozen: the maps need no weight gradients
    image = red_and_blue().repeat(2, 1, 1, 1)
    found = grad_cam(model, image, torch.tensor([0, 1]))
    assert found.maps.shape == (2, 16, 16) and found.layer_shape == (2, 16, 16)
    red, blue = found.maps
    assert red.max() == 1 and red.min() >= 0 and red[1:5, 1:5].min() == 1 and red[8:, 8:].max() == 0
    assert blue.max() == 1 and blue[10:14, 11:15].min() == 1 and blue[:8, :8].max() == 0


def test_the_default_layer_is_the_last_called_with_a_height_and_width_even_when_called_twice():
    model = ColourDetector()
    assert cam_layer(model, red_and_blue()) == ("act", (2, 16, 16))  # act's last call is after conv's
    assert cam_layer(model, red_and_blue(), "conv") == ("conv", (2, 16, 16))
    assert grad_cam(model, red_and_blue(), torch.tensor([0])).layer == "act"


def test_maps_at_a_layer_whose_output_is_changed_in_place_later_are_those_of_the_output_itself():
    image = red_and_blue()
    image[0, :, 10:14, 8:11] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)  # more blue than red
    plain, in_place = ColourDetector(), ColourDetector(in_place=True)
    for model in (plain, in_place):
        with torch.no_grad():
            model.fc.weight[0, 1] = -1.0  # class 0: red, less blue
    expected = grad_cam(plain, image, torch.tensor([0]), "conv").maps[0]
    # the green background (-0.25 in both maps) counts for class 0, as blue outweighs red
    assert 0.1 < expected[7, 7] < 0.2 and expected[1:5, 1:5].min() == 1
    assert torch.equal(grad_cam(in_place, image, torch.tensor([0]), "conv").maps[0], expected)


def test_the_model_is_left_in_the_mode_and_with_the_weights_it_had():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    found = grad_cam(model, torch.randn(2, 3, 16, 16), torch.tensor([2, 0]))
    assert found.layer == "1" and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too


def test_wrong_layers_and_models_without_feature_maps_are_one_line_errors():
    model = ColourDetector()
    with pytest.raises(DeepstepError, match=r"'con': no such layer \(did you mean 'conv'\?\)"):
        cam_layer(model, red_and_blue(), "con")
    with pytest.raises(
        DeepstepError, match="'fc': its output has no height and width; the last layers with one: conv, act"
    ):
        cam_layer(model, red_and_blue(), "fc")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(DeepstepError, match="Sequential has no layer whose output has a height and width"):
        grad_cam(mlp, red_and_blue(), torch.tensor([0]))
