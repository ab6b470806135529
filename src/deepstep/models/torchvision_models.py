"""ImageNet architectures from torchvision, with the classifier sized to the data's classes."""

from __future__ import annotations

from torch import nn

from deepstep.models.registry import register_model


def _torchvision(name: str, num_classes: int) -> nn.Module:
    import torchvision.models

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


@register_model("alexnet", input_size=(3, 224, 224), description="torchvision AlexNet (5 conv, 3 fc)")
def alexnet(num_classes: int = 1000) -> nn.Module:
    return _torchvision("alexnet", num_classes)


@register_model("vgg11", input_size=(3, 224, 224), description="torchvision VGG-11 (8 conv, 3 fc)")
def vgg11(num_classes: int = 1000) -> nn.Module:
    return _torchvision("vgg11", num_classes)


@register_model("vgg16", input_size=(3, 224, 224), description="torchvision VGG-16 (13 conv, 3 fc)")
def vgg16(num_classes: int = 1000) -> nn.Module:
    return _torchvision("vgg16", num_classes)


@register_model("resnet18", input_size=(3, 224, 224), description="torchvision ResNet-18 (residual, batch norm)")
def resnet18(num_classes: int = 1000) -> nn.Module:
    return _torchvision("resnet18", num_classes)


@register_model(
    "mobilenet_v3_small",
    input_size=(3, 224, 224),
    description="torchvision MobileNetV3-Small (fast on CPU; fine-tuning)",
)
def mobilenet_v3_small(num_classes: int = 1000) -> nn.Module:
    return _torchvision("mobilenet_v3_small", num_classes)
