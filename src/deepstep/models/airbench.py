"""An airbench-style network for 32x32 images (after Keller Jordan's airbench94, 2024).

whitening conv 2x2 (fixed) -> GELU -> 3 x [conv, max-pool, BN, GELU, conv, BN, GELU] -> max-pool
-> linear; block widths w, 4w, 4w with `width` = w (airbench94: 64, 256, 256).

The first layer is not learned: `init_from_data` sets it from the training images, so that it
whitens their 2x2 patches (each output channel is one principal direction of the patches,
scaled to unit variance, and its negative: 2 x 12 channels for 3-channel images). The network
then starts from decorrelated inputs, which is much of why airbench trains in so few epochs.
As in airbench94, every 3x3 conv starts with identity filters for its first channels, and the
batch norms learn only their shift (scale fixed at 1), and the whitening layer's bias learns for
the first 3 epochs only (`whiten_bias_epochs`; from then on the backward pass stops before the
first block, which saves its input gradient). It learns as the other biases do, or with
`whiten_bias="norm"` (airbench94's Muon version) as the norm shifts learn (`--norm-lr-scale`), its
rate falling to 0 over those epochs. `--recipe cifar-airbench` holds the rest of its training
(batch 1024, the norm shifts at 64x the learning rate, Lookahead, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from deepstep.models.registry import register_model

WHITEN_PATCH = 2  # the whitening layer's kernel: 2x2 patches
WHITEN_BIAS = ("base", "norm")  # how its bias learns: as the other biases, or as the norm shifts (`optimizer_hints`)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 conv whose first `c_in` filters start as the identity (dirac): each block starts close
    to passing its input through, an implicit residual connection."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BN with its scale fixed at 1 (only the shift is learned) and running statistics that follow
    the last batches closely (momentum 0.4), as airbench94's."""
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


class ConvGroup(nn.Sequential):
    """conv 3x3, max-pool 2 (before the normalisation, so it runs on a quarter of the pixels),
    BN, GELU, conv 3x3, BN, GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            conv3x3(c_in, c_out),
            nn.MaxPool2d(2),
            batch_norm(c_out),
            nn.GELU(),
            conv3x3(c_out, c_out),
            batch_norm(c_out),
            nn.GELU(),
        )


def whitening_weights(images: torch.Tensor, patch: int, eps: float = 5e-4, chunk: int = 500) -> torch.Tensor:
    """Conv weights (2 * C*patch*patch, C, patch, patch) that whiten the patch x patch patches of
    `images` (N, C, H, W): the eigenvectors of the patches' second-moment matrix divided by the
    square root of their eigenvalues, largest first, followed by their negatives."""
    channels = images.shape[1]
    size = channels * patch * patch
    moment = torch.zeros(size, size, dtype=torch.float64)
    count = 0
    for start in range(0, len(images), chunk):  # in chunks: all patches of 5,000 images would be 230 MB
        x = images[start : start + chunk].to(torch.float64)
        # (N, C, H', W', p, p) -> (N * H' * W', C * p * p), in the conv weight's (C, p, p) order
        patches = x.unfold(2, patch, 1).unfold(3, patch, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, size)
        moment += patches.T @ patches
        count += len(patches)
    values, vectors = torch.linalg.eigh(moment / count)  # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    scaled = (vectors.T / torch.sqrt(values.clamp(min=0) + eps).unsqueeze(1)).reshape(size, channels, patch, patch)
    return torch.cat([scaled, -scaled]).to(torch.float32)


class Airbench(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        width: int = 64,
        in_channels: int = 3,
        scale: float = 1 / 9,
        whiten_bias_epochs: int = 3,
        whiten_bias: str = "base",
    ):
        super().__init__()
        if width < 1:  # torch makes a width of 0 into empty layers, and -4 into a RuntimeError
            raise ValueError(f"width is a number of channels >= 1, got {width}")
        if whiten_bias_epochs < 0:
            raise ValueError(f"whiten_bias_epochs is a number of epochs >= 0, got {whiten_bias_epochs}")
        if whiten_bias not in WHITEN_BIAS:
            raise ValueError(f"whiten_bias is one of {', '.join(WHITEN_BIAS)}, got {whiten_bias!r}")
        self.whiten_bias_epochs, self.whiten_bias = whiten_bias_epochs, whiten_bias
        whiten_width = 2 * in_channels * WHITEN_PATCH * WHITEN_PATCH  # each direction and its negative
        self.whiten = nn.Conv2d(in_channels, whiten_width, kernel_size=WHITEN_PATCH, bias=True)  # (B, 24, 31, 31)
        self.whiten.weight.requires_grad_(False)  # set by init_from_data; its bias is learned
        self.act = nn.GELU()
        self.block1 = ConvGroup(whiten_width, width)  # (B, w, 15, 15)
        self.block2 = ConvGroup(width, 4 * width)  # (B, 4w, 7, 7)
        self.block3 = ConvGroup(4 * width, 4 * width)  # (B, 4w, 3, 3)
        self.pool = nn.AdaptiveMaxPool2d(1)  # (B, 4w, 1, 1)
        self.flatten = nn.Flatten()  # (B, 4w)
        self.fc = nn.Linear(4 * width, num_classes, bias=False)
        self.scale = scale  # small logits at the start keep the first steps stable

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> str:
        """Set the whitening layer from normalised training images (N, C, H, W); says what it did."""
        self.whiten.weight.copy_(whitening_weights(images, WHITEN_PATCH))
        self.whiten.bias.zero_()
        return f"whitening layer set from the {WHITEN_PATCH}x{WHITEN_PATCH} patches of {len(images):,} training images"

    def optimizer_hints(self) -> list[dict]:
        """For `engine.optim.parameter_groups`: with whiten_bias="norm", the whitening bias trains as
        the norm shifts do (at --norm-lr-scale x the rate, decayed as much per step as the weights),
        its rate falling linearly to 0 by the end of its last epoch."""
        if self.whiten_bias == "base":
            return []
        return [{"params": [self.whiten.bias], "norm_bias": True, "stop_epoch": self.whiten_bias_epochs}]

    def set_epoch(self, epoch: int) -> None:
        """Called by training before each (1-based) epoch: the whitening bias learns only in the first
        `whiten_bias_epochs` epochs (airbench94: 3)."""
        self.whiten.bias.requires_grad_(epoch <= self.whiten_bias_epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.act(self.whiten(x)))))
        return self.fc(self.flatten(self.pool(x))) * self.scale


@register_model(
    "airbench",
    input_size=(3, 32, 32),
    description="airbench94-style net for 32x32 images: fixed whitening layer set from the data, "
    "conv-pool-BN-GELU blocks; width, whiten_bias_epochs and whiten_bias (base or norm) options",
)
def airbench(
    num_classes: int = 10, width: int = 64, whiten_bias_epochs: int = 3, whiten_bias: str = "base"
) -> nn.Module:
    return Airbench(num_classes, width, whiten_bias_epochs=whiten_bias_epochs, whiten_bias=whiten_bias)
