"""The floor: the shortest correct training loop a PyTorch user would write for images already
decoded into a uint8 tensor. No framework, no metrics, no checkpoints; the same kernels and
memory format deepstep picks, so that deepstep / floor measures deepstep's own overhead.

Also the same loop under PyTorch Lightning's Trainer (when `lightning` is installed: it is a
benchmark-only dependency, `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from deepstep.engine.backends import apply_kernels, choose_cpu_kernels, set_cpu_threads
from deepstep.engine.precision import Precision
from deepstep.models import create_model


def _setup(model_name: str, batch_size: int, precision: str, classes: int, seed: int):
    torch.manual_seed(seed)
    set_cpu_threads()
    model = create_model(model_name, num_classes=classes)
    prec = Precision(precision, "cpu", "bench")
    kernels = choose_cpu_kernels(model, batch_size, prec)
    apply_kernels(model, kernels)
    return model, prec, kernels


def floor_epoch(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    *,
    model_name: str,
    batch_size: int,
    precision: str,
    lr: float = 0.01,
    seed: int = 0,
) -> float:
    """Seconds for one epoch of forward, loss, backward, SGD step over `images` (N, C, H, W) uint8."""
    model, prec, kernels = _setup(model_name, batch_size, precision, int(labels.max()) + 1, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    memory_format = torch.channels_last if kernels.channels_last else torch.contiguous_format
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(images))
    for i in range(0, len(images), batch_size):
        index = order[i : i + batch_size]
        x = ((images[index].float() / 255 - mean_t) / std_t).contiguous(memory_format=memory_format)
        with prec.autocast():
            loss = F.cross_entropy(model(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def lightning_epoch(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    *,
    model_name: str,
    batch_size: int,
    precision: str,
    lr: float = 0.01,
    seed: int = 0,
) -> float:
    """Seconds for one epoch of the same loop under Lightning's Trainer (a TensorDataset + DataLoader,
    as its docs do it), timed from the epoch's start, not the Trainer's set-up; raises ImportError
    when lightning is not installed."""
    import lightning as L

    model, _, kernels = _setup(model_name, batch_size, precision, int(labels.max()) + 1, seed)
    memory_format = torch.channels_last if kernels.channels_last else torch.contiguous_format
    x_all = (
        (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    ).contiguous(memory_format=memory_format)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_all, labels), batch_size=batch_size, shuffle=True
    )

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds = time.perf_counter() - self.start

    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(Module(), data)
    return timer.seconds
