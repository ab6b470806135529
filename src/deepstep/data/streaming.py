"""Images read from disk every epoch with per-image torchvision transforms, for datasets too
big to hold decoded in memory: the classic presets (train: random resized crop + flip, or the
eval preset; eval: resize the short side, center-crop, to tensor, normalise), batched by a
DataLoader with worker processes."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from deepstep.data.decode import DECODE_ERRORS, describe_error, open_image, to_model_mode, upright
from deepstep.data.images import channel_moments
from deepstep.data.sources import ImageSplit
from deepstep.errors import DeepstepError


def eval_transform(size: tuple[int, int], resize: int | None, mean: list[float], std: list[float]):
    """Resize the short side to `resize` (default: the crop's larger side), center-crop, normalise."""
    import torchvision.transforms.v2 as T

    return T.Compose(
        [
            T.PILToTensor(),
            T.Resize(resize or max(size), antialias=True),
            T.CenterCrop(size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ]
    )


def train_transform(
    size: tuple[int, int], resize: int | None, mean: list[float], std: list[float], augment: bool, cutout: int = 0
):
    """With augment: a random resized crop and a horizontal flip, and with `cutout` a square of that
    side erased to 0 (the mean colour, once normalised) at a random place inside; else the eval preset."""
    import torchvision.transforms.v2 as T

    if not augment:
        return eval_transform(size, resize, mean, std)
    erase = []
    if cutout:  # RandomErasing's box of this area and aspect ratio 1 is the cutout x cutout square
        share = cutout * cutout / (size[0] * size[1])
        erase = [T.RandomErasing(p=1.0, scale=(share, share), ratio=(1.0, 1.0), value=0)]
    return T.Compose(
        [
            T.PILToTensor(),
            T.RandomResizedCrop(size, antialias=True),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
            *erase,
        ]
    )


class ImageFiles(torch.utils.data.Dataset):
    """(image tensor, label) per file; an unreadable file gives (None, reason) instead of failing."""

    def __init__(self, split: ImageSplit, transform, channels: int):
        self.files = [str(f) for f in split.files]
        self.labels = split.labels
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            with open_image(self.files[i]) as image:
                image = to_model_mode(upright(image), self.channels)
                return self.transform(image), int(self.labels[i])
        except DECODE_ERRORS as err:
            return None, f"{self.files[i]}: {describe_error(err)}"


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    good = [(x, y) for x, y in items if x is not None]
    bad = [reason for x, reason in items if x is None]
    if not good:
        return None, None, bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad


@contextlib.contextmanager
def _no_worker_count_warning() -> Iterator[None]:
    """Without DataLoader's warning, two lines each time a loader is made or iterated, that there
    are more workers than cores: the training log says so once, in one line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield


class FileBatches:
    """Mini-batches streamed from image files: same interface as ImageBatches."""

    def __init__(
        self,
        split: ImageSplit,
        *,
        batch_size: int,
        transform,
        channels: int,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        workers: int = 2,
        strict: bool = False,
        channels_last: bool = False,
    ):
        if split.files is None:
            raise ValueError("FileBatches streams files; in-memory datasets use ImageBatches")
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.strict = strict
        self.channels_last = channels_last
        self.skipped: list[str] = []
        with _no_worker_count_warning():
            self.loader = torch.utils.data.DataLoader(
                ImageFiles(split, transform, channels),
                batch_size=batch_size,
                shuffle=shuffle,
                generator=self.generator,
                num_workers=workers,
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                drop_last=shuffle and len(split) % batch_size == 1,
                multiprocessing_context="spawn" if workers > 0 else None,
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        with _no_worker_count_warning():
            batches = iter(self.loader)
        for x, y, bad in batches:
            if bad:
                if self.strict:
                    raise DeepstepError(f"{bad[0]}; leave out --strict to skip bad images with a warning")
                self.skipped.extend(bad)
            if x is None:
                continue
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


def _sampled(
    split: ImageSplit, size: tuple[int, int], resize: int | None, channels: int, count: int, seed: int
) -> Iterator[np.ndarray]:
    """A seeded sample of up to `count` readable images of `split` as the model sees them, uint8
    (C, H, W), one at a time; unreadable ones are left out."""
    from deepstep.data.decode import read_image

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(split), size=min(count, len(split)), replace=False)
    read = 0
    for i in picks:
        try:
            image = read_image(Path(split.files[i]), size, channels, resize)
        except DECODE_ERRORS:
            continue
        read += 1
        yield image
    if not read:
        raise DeepstepError(f"none of {len(picks)} images sampled from the train part could be read")


def sample_images(
    split: ImageSplit, size: tuple[int, int], resize: int | None, channels: int, count: int = 1000, seed: int = 0
) -> np.ndarray:
    """A seeded sample of up to `count` readable images of `split` as the model sees them, uint8
    (N, C, H, W); unreadable ones are left out."""
    return np.stack(list(_sampled(split, size, resize, channels, count, seed)))


def sample_stats(
    split: ImageSplit, size: tuple[int, int], resize: int | None, channels: int, count: int = 1000, seed: int = 0
):
    """Mean and std per channel of a seeded sample of up to `count` images, as the model sees them,
    summed one image at a time: the sample as one float64 array is 6 GB at 512x512."""
    images = _sampled(split, size, resize, channels, count, seed)
    return channel_moments((image[None] for image in images), channels)
