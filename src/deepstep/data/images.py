"""In-memory images: decode once (in parallel) into a uint8 tensor cached on disk, then
batch by indexing, with augmentation and normalisation done on whole chunks of images."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deepstep.data.batches import BatchesWrapper
from deepstep.data.decode import decode_files, prepare_image
from deepstep.data.sources import ImageSplit
from deepstep.errors import DeepstepError
from deepstep.hardware import available_cores

CACHE_VERSION = 1
DECODE_CHUNK = 1000  # files per task sent to a decode worker


@dataclass
class Pixels:
    """A split decoded to model size: images (N, C, H, W) uint8, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[tuple[str, str]]  # (file, reason) for files that could not be decoded


def load_pixels(
    split: ImageSplit,
    *,
    size: tuple[int, int],
    channels: int,
    cache_dir: Path,
    cache_name: str,
    resize: int | None = None,
    strict: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Pixels:
    """Decode `split` at `size` x `channels`, or load it from the cache (about a second).

    `cache_name` must identify the split's content (source name, split and fingerprint).
    """
    height, width = size
    shape = f"{height}x{width}x{channels}" + (f"-r{resize}" if resize else "")
    cache_file = cache_dir / "decoded" / f"{cache_name}-{shape}-v{CACHE_VERSION}.safetensors"
    pixels = _read_cache(cache_file)
    if pixels is None or len(pixels.labels) + len(pixels.skipped) != len(split):
        pixels = _decode(split, size, channels, resize, workers, progress, cache_name)
        _write_cache(cache_file, pixels)
    if strict and pixels.skipped:
        file, reason = pixels.skipped[0]
        raise DeepstepError(
            f"{file}: {reason}; {len(pixels.skipped)} bad image(s) in all. Remove or fix them, "
            "or leave out --strict to skip bad images with a warning"
        )
    return pixels


def _read_cache(path: Path) -> Pixels | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return Pixels(tensors["images"], tensors["labels"], [tuple(s) for s in json.loads(meta.get("skipped", "[]"))])
    except (SafetensorError, KeyError, OSError, ValueError):
        return None  # a damaged cache is rebuilt, never trusted


def _write_cache(path: Path, pixels: Pixels) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {"images": pixels.images.contiguous(), "labels": pixels.labels},
            tmp,
            metadata={"skipped": json.dumps(pixels.skipped), "version": str(CACHE_VERSION)},
        )
        os.replace(tmp, path)  # two processes building the same cache: the last rename wins, both valid
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _decode(
    split: ImageSplit,
    size: tuple[int, int],
    channels: int,
    resize: int | None,
    workers: int | None,
    progress: bool,
    what: str,
) -> Pixels:
    if split.pixels is not None:
        images = _from_array(split.pixels, size, channels, resize)
        return Pixels(images, torch.from_numpy(split.labels.copy()), [])
    paths = [str(p) for p in split.files]
    chunks = [paths[i : i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    workers = min(workers or available_cores(), len(chunks))
    from tqdm import tqdm

    bar = tqdm(total=len(paths), desc=f"decoding {what}", unit="img", disable=not progress, leave=False)
    results = None
    if workers > 1:
        try:
            context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                results = []
                for result in pool.map(decode_files, chunks, repeat(size), repeat(channels), repeat(resize)):
                    results.append(result)
                    bar.update(len(result[0]))
        except (BrokenProcessPool, OSError, RuntimeError):
            results = None  # e.g. a script without `if __name__ == "__main__":`: decode here instead
            bar.reset()
    if results is None:
        results = []
        for chunk in chunks:
            results.append(decode_files(chunk, size, channels, resize))
            bar.update(len(chunk))
    bar.close()
    images = np.concatenate([r[0] for r in results]) if results else np.zeros((0, channels, *size), np.uint8)
    bad_index = []
    skipped = []
    for chunk_number, (_, bad) in enumerate(results):
        for i, reason in bad:
            bad_index.append(chunk_number * DECODE_CHUNK + i)
            skipped.append((paths[chunk_number * DECODE_CHUNK + i], reason))
    keep = np.setdiff1d(np.arange(len(paths)), np.asarray(bad_index, dtype=np.int64))
    return Pixels(torch.from_numpy(images[keep]), torch.from_numpy(split.labels[keep].copy()), skipped)


def _from_array(pixels: np.ndarray, size: tuple[int, int], channels: int, resize: int | None) -> torch.Tensor:
    """torchvision's arrays (N, H, W[, C]) -> (N, C, H, W) at the model's size and channels."""
    native_channels = 1 if pixels.ndim == 3 else pixels.shape[3]
    if pixels.shape[1:3] == size and native_channels == channels and resize is None:
        array = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(array))
    from PIL import Image

    out = np.empty((len(pixels), channels, *size), dtype=np.uint8)
    for i, image in enumerate(pixels):
        out[i] = prepare_image(Image.fromarray(image), size, channels, resize)
    return torch.from_numpy(out)


def channel_stats(images: torch.Tensor, values: int = 2**24) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units, summed in chunks of
    about `values` numbers (128 MiB in float64), whatever the images' size."""
    chunk = max(1, values // max(1, images[0].numel())) if len(images) else 1
    return channel_moments((images[start : start + chunk] for start in range(0, len(images), chunk)), images.shape[1])


def channel_moments(chunks: Iterable[torch.Tensor | np.ndarray], channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std, in [0, 1] units, of uint8 images (N, C, H, W) that come in chunks,
    from running float64 sums, so that no more than a chunk is ever converted at once."""
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for images in chunks:
        # a decoded image may be a read-only array, which torch would warn of: convert it in numpy
        x = torch.from_numpy(images.astype(np.float64)) if isinstance(images, np.ndarray) else images.double()
        x.div_(255)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 ((x / 255) - mean) / std, in two in-place passes."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (-mean / std).view(1, -1, 1, 1)
    return images.to(torch.float32).mul_(scale).add_(shift)


def random_crop_flip(
    images: torch.Tensor, padding: int, generator: torch.Generator, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """Random crop after reflect padding, and horizontal flip, on a whole batch: a random half of
    the images, or those where `flips` (N,) bool is true.

    Images are grouped by their (dy, dx) shift, so the crop is one slab copy per shift
    rather than a per-image Python loop.
    """
    n, _, height, width = images.shape
    span = 2 * padding + 1
    shifts = torch.randint(0, span * span, (n,), generator=generator)
    if flips is None:
        flips = torch.rand(n, generator=generator) < 0.5
    shifts, flips = shifts.to(images.device), flips.to(images.device)
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    out = torch.empty_like(images)
    order = torch.argsort(shifts)
    start = 0
    for shift, count in enumerate(torch.bincount(shifts, minlength=span * span).tolist()):
        if count:
            index = order[start : start + count]
            dy, dx = divmod(shift, span)
            out[index] = padded[index, :, dy : dy + height, dx : dx + width]
            start += count
    flipped = flips.nonzero().squeeze(1)
    out[flipped] = out[flipped].flip(3)  # only half the batch is copied, not all of it twice
    return out


def cutout(images: torch.Tensor, size: int, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017), as airbench96 places it: a size x size square of each image
    (N, C, H, W), at a random place wholly inside it, set to `fill` (C,), the mean colour, which
    normalising makes about 0. On the whole batch at once."""
    n, _, height, width = images.shape
    top = torch.randint(0, height - size + 1, (n, 1, 1, 1), generator=generator).to(images.device)
    left = torch.randint(0, width - size + 1, (n, 1, 1, 1), generator=generator).to(images.device)
    rows = torch.arange(height, device=images.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, 1, width)
    square = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)  # (N, 1, H, W)
    return torch.where(square, fill.view(1, -1, 1, 1).to(images.device, images.dtype), images)


MIX_SEED = 0x6D6978  # added to --seed for the mixing's generator, so its draws are not the order's


class MixedBatches(BatchesWrapper):
    """Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) on whole batches, as timm's Mixup
    in its batch mode: each image of a batch is mixed with the image at the mirrored place (the
    batch is already in shuffled order), by a share `lam` drawn once a batch from Beta(alpha,
    alpha), and its label becomes the same mixture of the two one-hot labels, (B, classes) float.
    Mixup blends the whole images, lam x this + (1 - lam) x the other; CutMix pastes a box of the
    other image over about (1 - lam) of the area, and lam becomes the share the box left, once
    the box is clipped to the image. With both, each batch is one or the other at even odds.

    It mixes the global batch before micro-batches or ranks' slices are cut from it, so they stay
    parts of one mixed batch; its draws come from a generator of its own, saved for resume."""

    OWN = ("classes", "mixup", "cutmix", "generator")

    def __init__(self, batches: Any, classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0):
        super().__init__(batches)
        self.classes, self.mixup, self.cutmix = classes, mixup, cutmix
        self.generator = torch.Generator().manual_seed(seed + MIX_SEED)

    def state_dict(self) -> dict[str, torch.Tensor]:
        inner = self.batches.state_dict() if hasattr(self.batches, "state_dict") else {}
        return {**inner, "mix_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.generator.set_state(state.pop("mix_generator"))
        if hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state)

    def _draw(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.generator))

    def _share(self, alpha: float) -> float:
        """lam ~ Beta(alpha, alpha), reproducibly: torch has no seeded Beta, numpy's is seeded here."""
        return float(np.random.default_rng(self._draw(2**62)).beta(alpha, alpha))

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch (B, C, H, W), labels (B,) -> the mixed batch and its (B, classes) labels."""
        cut = self.cutmix > 0 and (self.mixup == 0 or self._draw(2) == 1)
        lam = self._share(self.cutmix if cut else self.mixup)
        if cut:
            height, width = x.shape[2:]
            side = (1 - lam) ** 0.5  # the box's sides are this share of the image's
            cy, cx = self._draw(height), self._draw(width)
            half_h, half_w = int(height * side) // 2, int(width * side) // 2
            top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
            left, right = max(cx - half_w, 0), min(cx + half_w, width)
            x = x.clone()  # the batch's own images are left as they were
            x[:, :, top:bottom, left:right] = x[:, :, top:bottom, left:right].flip(0)
            lam = 1 - (bottom - top) * (right - left) / (height * width)
        else:
            x = torch.lerp(x.flip(0), x, lam)  # lam x + (1 - lam) x mirrored
        one_hot = F.one_hot(y, self.classes).to(x.dtype)  # x: normalised float batches
        return x, torch.lerp(one_hot.flip(0), one_hot, lam)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.batches:
            yield self.mix(x, y)


class ImageBatches:
    """Mini-batches (x float32 normalised, y int64) from uint8 images held in memory.

    Each epoch draws a new order from its own generator; images are gathered and augmented in
    uint8 a chunk at a time, and each batch is a slice of that chunk, normalised on its own.

    `alternate_flip` (airbench's derandomised flip): each image is flipped in the first epoch or
    not at random, and then in every other epoch, so that any two epochs in a row show it both
    ways. Which epoch it is comes from `set_epoch` (the fit loop calls it, counting from 1).

    `cutout`: with `augment`, a cutout x cutout square of each image set to the mean colour, after
    the crop and flip.

    `window` (progressive resizing by cropping): in epochs 1..`window_epochs` each batch is a random
    window x window part of its images, one place per batch, so those epochs cost about
    (window / side)^2 of a full one; later epochs, and evaluation, see whole images.
    """

    def __init__(
        self,
        pixels: Pixels,
        *,
        batch_size: int,
        mean: list[float],
        std: list[float],
        shuffle: bool = False,
        augment: bool = False,
        crop_padding: int | None = None,
        alternate_flip: bool = False,
        cutout: int = 0,
        window: int | None = None,
        window_epochs: int = 0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        chunk_bytes: int = 64 * 2**20,
    ):
        self.device = torch.device(device)
        self.images = pixels.images.to(self.device)
        if channels_last and not augment and self.images.ndim == 4:
            # Stored NHWC once: gathering keeps the layout, so batches need no transposing copy.
            # (Not when augmenting: cropping is faster on NCHW, 0.5 against 0.85 s an epoch.)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = pixels.labels.to(self.device)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.shuffle = shuffle
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.channels_last = channels_last
        # Which images the first epoch mirrors: fixed by the seed alone (as the validation split is),
        # whatever state a resume gives the order-and-crop generator.
        self.first_flips = None
        if alternate_flip and augment:
            first = torch.rand(len(self.images), generator=torch.Generator().manual_seed(seed)) < 0.5
            self.first_flips = first.to(self.device)
        self.epoch = 1
        self.cutout = cutout if augment else 0
        self.fill = (self.mean * 255).round().to(self.images.dtype)  # the mean colour, in the images' own values
        self.window, self.window_epochs = window, window_epochs
        # Crop padding: by default an eighth of the side (4 pixels at 32x32, as in the classic CIFAR
        # recipes); reflect padding needs it below the side.
        side = min(self.images.shape[2:]) if self.images.ndim == 4 else 1
        default = max(1, round(side / 8))
        self.padding = min(default if crop_padding is None else crop_padding, side - 1)
        # Sized as float32 (16 MB of uint8): kept as it was when chunks were normalised whole, since
        # the chunk size fixes how the augmentation draws fall, and so a seed's results.
        image_bytes = 4 * self.images[0].numel() if len(self.images) else 1
        self.chunk = max(1, chunk_bytes // (image_bytes * batch_size)) * batch_size

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator that draws the order and the augmentation: saved for exact resume."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def set_epoch(self, epoch: int) -> None:
        """Which epoch (from 1) the next pass is: the alternating flip depends on it."""
        self.epoch = epoch

    def _window(self, images: torch.Tensor) -> torch.Tensor:
        """A random window x window part of every image in the batch, at one place (a view)."""
        height, width = images.shape[2:]
        top, left = (
            int(torch.randint(0, d + 1, (1,), generator=self.generator))
            for d in (height - self.window, width - self.window)
        )
        return images[:, :, top : top + self.window, left : left + self.window]

    def __len__(self) -> int:
        n = len(self.images)
        full, rest = divmod(n, self.batch_size)
        # A trailing batch of one image is dropped when shuffling: batch norm cannot train on it.
        return full + (1 if rest > 1 or (rest == 1 and not self.shuffle) else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.device)
            n = len(self) * self.batch_size if n % self.batch_size == 1 else n
        else:
            order = None
        for start in range(0, n, self.chunk):
            stop = min(start + self.chunk, n)
            index = slice(start, stop) if order is None else order[start:stop]
            x, y = self.images[index], self.labels[index]
            if self.augment:
                flips = None
                if self.first_flips is not None:  # flipped in odd epochs where first_flips, in even ones where not
                    flips = self.first_flips[index] ^ (self.epoch % 2 == 0)
                x = random_crop_flip(x, padding=self.padding, generator=self.generator, flips=flips)
                if self.cutout:
                    x = cutout(x, self.cutout, self.fill, self.generator)
            for b in range(0, stop - start, self.batch_size):
                # Normalised a batch at a time, while it is in the cache: a whole chunk in float32
                # spills to memory (measured 0.33 -> 0.12 s an epoch of CIFAR-10 on 2 cores).
                part = x[b : b + self.batch_size]
                if self.window is not None and self.epoch <= self.window_epochs:
                    part = self._window(part)
                batch = normalize(part, self.mean, self.std)
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                yield batch, y[b : b + self.batch_size]
