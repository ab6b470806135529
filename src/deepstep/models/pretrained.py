"""ImageNet-pretrained torchvision models: their weights file, their own pre-processing and
their label names, all read from torchvision's weights metadata.

Weights are torchvision's `.pth` files in the torch hub cache (`$TORCH_HOME/hub/checkpoints`),
downloaded there when absent. They are pickles, so they are only ever loaded with
`weights_only=True`: a file that needs more than tensors is refused, never run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from deepstep.errors import DeepstepError, did_you_mean, reason_of


@dataclass(frozen=True)
class PretrainedSpec:
    """A torchvision model with ImageNet weights: the weights enum member and what it says."""

    name: str
    weights: Any  # a torchvision WeightsEnum member

    @property
    def categories(self) -> list[str]:
        return list(self.weights.meta["categories"])

    @property
    def parameters(self) -> int:
        return int(self.weights.meta["num_params"])

    @property
    def multiply_adds(self) -> int:
        """Of one forward pass of one image: torchvision's "_ops", which it gives in G multiply-adds
        (vgg16 15.47, resnet50 4.09, mobilenet_v3_small 0.06); 1 G where it does not say."""
        return int(self.weights.meta.get("_ops", 1.0) * 1e9)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """resize (short side), crop (height, width), mean, std: the weights' own transforms."""
        preset = self.weights.transforms()
        crop = list(preset.crop_size) * (2 if len(preset.crop_size) == 1 else 1)
        return {
            "resize": int(preset.resize_size[0]),
            "crop": (int(crop[0]), int(crop[1])),
            "mean": [float(m) for m in preset.mean],
            "std": [float(s) for s in preset.std],
        }

    @property
    def accuracy(self) -> float | None:
        metrics = self.weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
        return metrics.get("acc@1")

    @property
    def file(self) -> Path:
        """Where torchvision's download puts (and looks for) the weights file."""
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(self.weights.url).path).name


def pretrained_names() -> list[str]:
    """Every torchvision classification model that has ImageNet weights."""
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def get_pretrained_spec(name: str) -> PretrainedSpec:
    import torchvision.models

    names = pretrained_names()
    if name not in names:
        raise DeepstepError(
            f"no ImageNet weights for model {name!r}{did_you_mean(name, names)}; "
            "`deepstep models --pretrained` lists the models that have them"
        )
    return PretrainedSpec(name, torchvision.models.get_model_weights(name).DEFAULT)


@contextlib.contextmanager
def _weights_only_loading() -> Iterator[None]:
    # torch.hub loads with weights_only=False; this makes every torch.load inside tensors-only.
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def _download(spec: PretrainedSpec) -> None:
    """Fetch the weights file into the hub cache when it is not there, checked against the hash in
    its name, as torchvision would; done here so that every torch version prints the same: one line
    on stderr once the file is in place (torch.hub's own "Downloading" line went to stdout in some
    versions, into `--json` output, and to stderr in others, before an offline error)."""
    path = spec.file
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    hashed = torch.hub.HASH_REGEX.search(path.name)
    torch.hub.download_url_to_file(
        spec.weights.url, str(path), hash_prefix=hashed.group(1) if hashed else None, progress=sys.stderr.isatty()
    )
    print(f"downloaded the ImageNet weights of {spec.name} to {path}", file=sys.stderr)


def load_pretrained(name: str) -> tuple[nn.Module, PretrainedSpec]:
    """torchvision's model `name` with its ImageNet weights (1000 outputs), in eval mode.

    Downloads the weights into the torch hub cache when absent; offline, a one-line error names
    the exact file and folder to put it in.
    """
    import torchvision.models

    spec = get_pretrained_spec(name)
    path = spec.file
    try:
        _download(spec)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise DeepstepError(
            f"the ImageNet weights of {name} are not in {path} and cannot be downloaded ({reason}); "
            f"put {path.name} from {spec.weights.url} into {path.parent} (or point TORCH_HOME at a folder "
            "whose hub/checkpoints holds it)"
        ) from None
    except OSError as err:  # after the network's errors (OSErrors too): the cache folder cannot be written
        raise DeepstepError(
            f"cannot save the ImageNet weights of {name} to {path}: {err.strerror or err}; point TORCH_HOME at "
            "a folder you can write to"
        ) from None
    except RuntimeError as err:  # the bytes that came do not match the hash in the file's name; nothing was kept
        raise DeepstepError(
            f"the download of {spec.weights.url} was damaged ({reason_of(err)}); run the command again"
        ) from None
    try:
        with _weights_only_loading():
            model = torchvision.models.get_model(name, weights=spec.weights)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as err:
        first = reason_of(err)
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            first = "it holds more than tensors, and deepstep loads weights files with weights_only=True only"
        raise DeepstepError(
            f"{path} is not a usable {name} weights file: {first}; delete it to download it again"
        ) from None
    return model.eval(), spec


def classifier_head(model: nn.Module, num_outputs: int) -> tuple[str, nn.Module]:
    """The last Linear or Conv2d layer with `num_outputs` outputs: the classifier to replace."""
    found = None
    for name, module in model.named_modules():
        outputs = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
        if isinstance(module, nn.Linear | nn.Conv2d) and outputs == num_outputs:
            found = (name, module)
    if found is None:
        raise DeepstepError(f"found no classifier layer with {num_outputs} outputs in {type(model).__name__}")
    return found


def replace_head(model: nn.Module, num_classes: int, old_outputs: int = 1000) -> str:
    """Swap the classifier for a freshly initialised one with `num_classes` outputs; returns its name."""
    name, old = classifier_head(model, old_outputs)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return name


class BackboneFreeze:
    """Freeze everything but the head: no gradients, and batch-norm statistics left as they are
    (its layers stay in eval mode even while the model trains). `set_epoch` unfreezes after
    `unfreeze_after` epochs (None: never)."""

    def __init__(self, model: nn.Module, head: str, unfreeze_after: int | None = None):
        self.model = model
        self.head = head
        self.unfreeze_after = unfreeze_after
        self.frozen = False
        self._train = model.train
        model.train = self._train_keeping_frozen_norms  # type: ignore[method-assign]

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = set(map(id, self.model.get_submodule(self.head).parameters()))
        return [p for p in self.model.parameters() if id(p) not in head]

    def set_epoch(self, epoch: int) -> None:
        """Called before each (1-based) epoch."""
        frozen = self.unfreeze_after is None or epoch <= self.unfreeze_after
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)
        self.frozen = frozen
        self.model.train(self.model.training)

    def _train_keeping_frozen_norms(self, mode: bool = True) -> nn.Module:
        self._train(mode)
        if self.frozen:
            for name, module in self.model.named_modules():
                is_head = name == self.head or name.startswith(self.head + ".")
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_head:
                    module.eval()
        return self.model
