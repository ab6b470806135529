"""Mini-batches of tensors held in memory (windows, padded sequences): batched by indexing,
shuffled by a generator of their own whose state is saved for an exact resume. And the base of
the wrappers that change batches on their way to training (mixing, ranks' slices)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class TensorBatches:
    """Batches of aligned tensors (same first dimension), e.g. (x, y) or (x, lengths, y)."""

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        if len({len(t) for t in tensors}) != 1:
            raise ValueError("tensors must have the same first dimension")
        self.device = torch.device(device)
        self.tensors = [t.to(self.device) for t in tensors]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)
            else:
                index = order[start : start + self.batch_size]
                yield tuple(t[index] for t in self.tensors)


class BatchesWrapper:
    """Batches made from other batches, one for one: the same length, and the wrapped batches'
    other attributes read and set through it (state_dict, set_epoch, channels_last, ...), so the
    training loop treats the wrapper as the batches themselves. Subclasses name their own
    attributes in `OWN` and define __iter__."""

    OWN: tuple[str, ...] = ()

    def __init__(self, batches: Any):
        object.__setattr__(self, "batches", batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getattr__(self, name: str) -> Any:  # only called for what the wrapper itself lacks
        return getattr(self.batches, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.batches, name, value)


def first_batch(batches: Any) -> tuple[torch.Tensor, ...]:
    """The first batch an epoch of `batches` will give, drawn without moving them on: their
    generator is put back as it was, so training then draws this very batch again."""
    state = batches.state_dict()
    try:
        return next(iter(batches))
    finally:
        batches.load_state_dict(state)
