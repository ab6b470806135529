"""Grad-CAM (Selvaraju et al., 2017): where in an image the evidence for a class lies, as a
convolutional layer sees it.

The layer's feature maps A (C, h, w) are weighed by how much the class score y moves with each
channel on average, a_c = mean over (i, j) of dy/dA[c, i, j]; the map is ReLU(sum_c a_c A[c]),
scaled to 0-1 and stretched to the image's size. By default the layer is the last one whose
output still has a height and width (more than 1x1): its maps are the most about classes, and the
coarsest (5x5 for lenet, 3x3 for airbench, 7x7 for vgg16 on 224x224)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepstep.errors import DeepstepError, did_you_mean
from deepstep.models.shapes import looked_into


@dataclass
class ClassMaps:
    """Grad-CAM maps (N, H, W) in 0-1 at the input's size, and the layer they were taken at."""

    maps: torch.Tensor
    layer: str
    layer_shape: tuple[int, ...]  # one example's feature maps there, (C, h, w)


def spatial_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """The named layers whose output has a height and width above 1x1, in the order a forward pass
    of `example` (N, C, H, W) last calls them, with that output's shape (C, h, w)."""
    calls: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            calls.pop(name, None)  # a layer called twice (a ResNet block's ReLU) counts at its last call
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                calls[name] = tuple(output.shape[1:])

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if name]
    with looked_into(model, handles), torch.no_grad():
        model(example[:1])
    return list(calls.items())


def cam_layer(model: nn.Module, example: torch.Tensor, layer: str | None = None) -> tuple[str, tuple[int, ...]]:
    """The layer Grad-CAM takes its maps at, and their shape (C, h, w) for `example` (N, C, H, W):
    `layer` checked, or the last with a height and width."""
    found = spatial_layers(model, example)
    if not found:
        raise DeepstepError(
            f"{type(model).__name__} has no layer whose output has a height and width, which Grad-CAM needs"
        )
    if layer is None:
        return found[-1]
    names = dict(found)
    if layer not in names:
        why = "its output has no height and width" if layer in dict(model.named_modules()) else "no such layer"
        choices = [name for name, _ in found]
        raise DeepstepError(
            f"--gradcam-layer {layer!r}: {why}{did_you_mean(layer, choices)}; "
            f"the last layers with one: {', '.join(choices[-6:])} (`deepstep summary RUN` lists every layer)"
        )
    return layer, names[layer]


def grad_cam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None = None) -> ClassMaps:
    """Grad-CAM maps of `images` (N, C, H, W), normalised as the model takes them, for the class
    indices `targets` (N,), at the named `layer` (default: the last with a height and width).
    The model runs in fp32 in eval mode; its weights are left as they were."""
    layer, shape = cam_layer(model, images, layer)
    module = dict(model.named_modules())[layer]
    taken: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        taken[:] = [output]
        return output.clone()  # later in-place ops (a ReLU's) change the copy, not the maps kept

    with looked_into(model, [module.register_forward_hook(keep)]), torch.enable_grad():
        x = images.detach().float().requires_grad_(True)  # so the maps have a gradient even with frozen weights
        scores = model(x).float().gather(1, targets.view(-1, 1).to(x.device)).sum()  # images apart in eval mode
        (grads,) = torch.autograd.grad(scores, taken[0])
    maps = taken[0].detach().float()  # (N, C, h, w)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = F.relu((weights * maps).sum(dim=1, keepdim=True))  # (N, 1, h, w)
    cam = F.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)
    peak = cam.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return ClassMaps((cam / peak).cpu(), layer, shape)
