"""A ResNet-9-style network for 32x32 images (after Page's DAWNBench ResNet-9 and airbench).

prep conv -> [conv, pool, residual] -> [conv, pool] -> [conv, pool, residual] -> max-pool -> linear,
every conv 3x3 followed by batch norm and ReLU; channels grow w, 2w, 4w, 8w with `width` = w.

Each stage pools right after its convolution, before batch norm and ReLU (as airbench does):
the normalisation and activation then run on a quarter of the pixels. Measured on a 2-core
AVX-512 CPU in bf16 at width 16: 1,590 img/s against 1,190 with pooling last.
"""

from __future__ import annotations

import torch
from torch import nn

from deepstep.models.registry import register_model


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """x + f(x), with f two conv-BN-ReLU layers at constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def stage(c_in: int, c_out: int, residual: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if residual:
        layers.append(Residual(c_out))
    return nn.Sequential(*layers)


class ResNetCifar(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3, scale: float = 0.125):
        super().__init__()
        if width < 1:  # torch makes a width of 0 into empty layers, and -4 into a RuntimeError
            raise ValueError(f"width is a number of channels >= 1, got {width}")
        w = width
        self.prep = conv_bn(in_channels, w)  # (B, w, 32, 32)
        self.layer1 = stage(w, 2 * w, residual=True)  # (B, 2w, 16, 16)
        self.layer2 = stage(2 * w, 4 * w, residual=False)  # (B, 4w, 8, 8)
        self.layer3 = stage(4 * w, 8 * w, residual=True)  # (B, 8w, 4, 4)
        self.pool = nn.AdaptiveMaxPool2d(1)  # (B, 8w, 1, 1)
        self.flatten = nn.Flatten()  # (B, 8w)
        self.fc = nn.Linear(8 * w, num_classes, bias=False)
        self.scale = scale  # small logits at the start make the first epochs stable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.flatten(self.pool(x))) * self.scale


@register_model(
    "resnet-cifar",
    input_size=(3, 32, 32),
    description="ResNet-9-style net for 32x32 images (conv-BN-ReLU, residual blocks); width option",
)
def resnet_cifar(num_classes: int = 10, width: int = 16) -> nn.Module:
    return ResNetCifar(num_classes, width)
