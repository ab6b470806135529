"""The textbook networks, written as the tutorials draw them, shapes beside each line."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepstep.models.registry import register_model


class LeNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial net: two conv + pool stages, three linear layers."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        x = self.pool(F.relu(self.conv1(x)))  # (B, 6, 28, 28) -> (B, 6, 14, 14)
        x = self.pool(F.relu(self.conv2(x)))  # (B, 16, 10, 10) -> (B, 16, 5, 5)
        x = torch.flatten(x, 1)  # (B, 400)
        x = F.relu(self.fc1(x))  # (B, 120)
        x = F.relu(self.fc2(x))  # (B, 84)
        return self.fc3(x)  # (B, num_classes)


class SimpleCNN(nn.Module):
    """Two 5x5 convolutions without pooling on a 1x20x20 image, then two linear layers."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 5)
        self.conv2 = nn.Conv2d(3, 10, 5)
        self.fc1 = nn.Linear(10 * 12 * 12, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 20, 20)
        x = F.relu(self.conv1(x))  # (B, 3, 16, 16)
        x = F.relu(self.conv2(x))  # (B, 10, 12, 12)
        x = torch.flatten(x, 1)  # (B, 1440)
        x = F.relu(self.fc1(x))  # (B, 50)
        return self.fc2(x)  # (B, num_classes)


class MiniAlexNet(nn.Module):
    """AlexNet's last two convolutions, its last pooling and its classifier, on 384x13x13 feature maps."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(384, 384, 3, padding=1),  # (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # (B, 256, 6, 6)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 9216)
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 384, 13, 13)
        return self.classifier(self.features(x))


@register_model(
    "lenet",
    input_size=(3, 32, 32),
    description="LeNet-style CIFAR-10 tutorial net: conv 3->6 k5, pool, conv 6->16 k5, pool, fc 400->120->84->classes",
)
def lenet(num_classes: int = 10) -> nn.Module:
    return LeNet(num_classes)


@register_model(
    "simple-cnn", input_size=(1, 20, 20), description="small CNN: conv 1->3 k5, conv 3->10 k5, fc 1440->50->classes"
)
def simple_cnn(num_classes: int = 10) -> nn.Module:
    return SimpleCNN(num_classes)


@register_model(
    "mini-alexnet",
    input_size=(384, 13, 13),
    description="AlexNet's tail on its 384x13x13 feature maps: conv 384->384, conv 384->256, max-pool 3/2, fc 9216->4096->4096->classes",
)
def mini_alexnet(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
    return MiniAlexNet(num_classes, dropout)
