"""Image classification: from an image source and a registered model to a trained run,
its one test evaluation, and predictions on new images."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepstep.config import PRECISIONS, TrainConfig, absolute_path, parse_image_size, preset_source
from deepstep.data.batches import first_batch
from deepstep.data.folders import find_images, in_natural_order
from deepstep.data.images import ImageBatches, MixedBatches, Pixels, channel_stats, load_pixels, normalize
from deepstep.data.sources import (
    ImageSource,
    ImageSplit,
    check_image_spec,
    data_cache_dir,
    join_splits,
    open_image_source,
)
from deepstep.data.splits import stratified_split
from deepstep.data.streaming import FileBatches, eval_transform, sample_images, sample_stats, train_transform
from deepstep.engine import distributed
from deepstep.engine.backends import (
    KernelChoice,
    apply_kernels,
    choose_cpu_kernels,
    prepare_cpu,
)
from deepstep.engine.fit import Monitor, Training, fit, resume
from deepstep.engine.loop import Step, evaluate
from deepstep.engine.precision import Precision, pays_off, resolve_device, resolve_precision, supported_by
from deepstep.engine.run_dir import RunDir
from deepstep.errors import DeepstepError, did_you_mean, kind_of
from deepstep.hardware import available_cores
from deepstep.models import check_input, create_model, file_record, get_model_spec
from deepstep.models.registry import in_user_code
from deepstep.models.shapes import activation_bytes, format_size, multiply_adds
from deepstep.tasks.metrics import TOP_K, classification_metrics, save_confusion, save_roc
from deepstep.tasks.runs import (
    build_ema,
    build_lookahead,
    build_plateau,
    check_split,
    class_numbers,
    class_weights,
    describe_class_weights,
    find_lr_report,
    finish,
    load_model,
    now,
    open_run_for_resume,
    optimization,
    prediction_table_path,
    record_test_evaluation,
    run_config,
    same_data_for_all,
    seed_everything,
    start_run,
    test_evaluations,
    weighted_mean,
    write_predictions,
    write_record,
)

TASK = "image-classification"
Log = Callable[[str], None]
PLOT_MAX_IMAGES = 12  # predict --plot draws the first ones; a row each
FEATURE_MAP_ROWS = 32  # summary --image draws at most this many layers' maps, a row each
# predict decodes this much at a time (at least a batch): 21,000 CIFAR images, 440 photos at 224x224
PREDICT_DECODE_BYTES = 64 * 2**20
# Decoding a photo (500x375 JPEG, scaled and cropped for a 224x224 model) takes about 3 ms, mostly
# in Pillow's C code, which lets other threads run: 2 threads decode 504 such files/s against 317
# alone (2-core EPYC). A CIFAR-size JPEG takes about 0.2 ms, mostly Python, and threads slow it
# down (3,615 against 4,750 files/s). So predict decodes in threads when the first files take
# longer than this each.
PARALLEL_DECODE_SECONDS = 1e-3
PROBE_FILES = 8

# Changing these between a run and its resume would make the result meaningless.
RESUME_MUST_MATCH = (
    "monitor",  # the best checkpoint so far was chosen by it
    "data",
    "model",
    "model_args",
    "image_size",
    "batch_size",
    "val_split",
    "test_split",
    "seed",
    "mean",
    "std",
    "augment",
    "crop_padding",
    "alternate_flip",
    "cutout",
    "mixup",
    "cutmix",
    "progressive_crop",
    "progressive_until",
    "resize",
    "pretrained",
    "labels",
)


def classification_step(label_smoothing: float = 0.0, weights: torch.Tensor | None = None, top5: bool = False) -> Step:
    """Cross-entropy on logits (each example's weighted by its class's `weights`, if given); also
    reports the batch accuracy, and with `top5` the share whose label is among the 5 highest
    logits ("acc5"). The labels are class indices (B,), or class shares (B, classes) for mixed
    images (--mixup, --cutmix), whose accuracy counts the larger share as the label."""

    def step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x)  # (B, classes)
        if weights is None:
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        else:
            losses = F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="none")
            loss = weighted_mean(losses, y, weights)
        label = y if y.ndim == 1 else y.argmax(dim=1)
        acc = (logits.argmax(dim=1) == label).float().mean()
        result = {"loss": loss, "output": logits, "acc": acc, "target": label}
        if top5:
            result["acc5"] = (logits.topk(TOP_K, dim=1).indices == label.unsqueeze(1)).any(dim=1).float().mean()
        return result

    return step


TTA_MODES = ("flip", "flip-translate")


def tta_mode(tta: bool | str | None) -> str | None:
    """The test-time augmentation asked for: None, "flip" (also for True) or "flip-translate"."""
    if tta is None or tta is False:
        return None
    if tta is True:
        return "flip"
    if tta not in TTA_MODES:
        raise DeepstepError(f"--tta {tta!r} is not one of {', '.join(TTA_MODES)}" + did_you_mean(str(tta), TTA_MODES))
    return tta


class ViewAveraged(nn.Module):
    """Test-time augmentation: each image's logits averaged over views of it. `flip`: the image and
    its mirror image. `flip-translate` (airbench's level 2): half that, and a quarter each the same
    for the image moved one pixel up-left and one pixel down-right, the uncovered edge reflected."""

    def __init__(self, model: nn.Module, mode: str = "flip"):
        super().__init__()
        self.model = model
        self.mode = mode

    def mirrored(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(x.flip(3))) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if self.mode == "flip":
            return self.mirrored(x)
        height, width = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H + 2, W + 2)
        up_left = padded[:, :, 2:, 2:]
        down_right = padded[:, :, :height, :width]
        return self.mirrored(x) / 2 + (self.mirrored(up_left) + self.mirrored(down_right)) / 4


# ---- model input and pre-processing ------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a model input: converted to `channels`, the short side scaled to
    `resize` (default: just enough to cover the crop), center-cropped to `size`, normalised."""

    channels: int
    size: tuple[int, int]
    resize: int | None
    mean: list[float]
    std: list[float]

    def to_meta(self) -> dict[str, Any]:
        return {
            "input_size": [self.channels, *self.size],
            "resize": self.resize,
            "normalization": {"mean": self.mean, "std": self.std},
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Preprocessing:
        channels, height, width = meta["input_size"]
        norm = meta["normalization"]
        return cls(channels, (height, width), meta.get("resize"), norm["mean"], norm["std"])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, torch.tensor(self.mean), torch.tensor(self.std))

    def describe(self) -> str:
        """What happens to every image file before the model sees it, in words (for the log)."""
        height, width = self.size
        colour = "RGB" if self.channels == 3 else "grey" if self.channels == 1 else f"{self.channels} channels"
        scale = (
            f"scaled to cover {height}x{width} (aspect ratio kept; not scaled when already that size)"
            if self.resize is None
            else f"short side scaled to {self.resize} px"
        )
        return f"each image {colour}, {scale}, center-cropped to {height}x{width}, then normalised"


def model_input(model_name: str, image_size: str | None) -> tuple[int, tuple[int, int]]:
    """(channels, (height, width)) the images are made to, from the model's declared input."""
    spec = get_model_spec(model_name)
    if len(spec.input_size) != 3 or spec.input_size[0] not in (1, 3):
        raise DeepstepError(
            f"{model_name} takes {format_size(spec.input_size)} inputs, not 1- or 3-channel images, so it "
            f"cannot be trained on an image dataset; see its layers with `deepstep summary {model_name}`"
        )
    channels = spec.input_size[0]
    size = parse_image_size(image_size) if image_size else (spec.input_size[1], spec.input_size[2])
    return channels, size


def progressive_epochs(
    config: TrainConfig, model_args: dict[str, Any], channels: int, size: tuple[int, int], data: TrainingData, log: Log
) -> int:
    """How many first epochs train on --progressive-crop windows (0: none), after checking that
    the windows are smaller than the images and that the model takes them."""
    side = config.progressive_crop
    if side is None:
        return 0
    if side >= min(size):
        raise DeepstepError(
            f"--progressive-crop {side} must be smaller than the {size[0]}x{size[1]} model inputs it crops"
        )
    try:
        check_model_fits(config.model, model_args, channels, (side, side))
    except DeepstepError:
        raise DeepstepError(
            f"--progressive-crop {side}: {config.model} cannot take {side}x{side} windows (its layers need "
            f"{size[0]}x{size[1]}); use a net that pools globally, such as resnet-cifar or airbench"
        ) from None
    if not isinstance(data.train, Pixels):
        log("note: --progressive-crop is for images held in memory; streamed ones train whole")
        return 0
    epochs = round(config.progressive_until * config.epochs)
    if epochs == 0:
        log(f"note: --progressive-until {config.progressive_until} of {config.epochs} epoch(s) is none of them")
        return 0
    log(f"progressive crop: epochs 1-{epochs} on random {side}x{side} windows, then {size[0]}x{size[1]}")
    return epochs


@dataclass(frozen=True)
class ModelCost:
    """A model's size, and the work and memory of one image's forward pass."""

    parameters: int
    mult_adds: int
    activation_bytes: int  # its layers' outputs in fp32, as `deepstep summary` counts them


def check_model_fits(model_name: str, model_args: dict[str, Any], channels: int, size: tuple[int, int]) -> ModelCost:
    """Build the model (deepstep's on the meta device: no memory) and push a dummy input through it.

    Returns what it costs; raises a one-line error naming the first layer that does not fit.
    """
    spec = get_model_spec(model_name)
    # deepstep's models on the meta device; the user's on the CPU, as their forward may do what the
    # meta device cannot (branch on a value, call .item())
    device = "cpu" if spec.user else "meta"
    with torch.device(device):
        model = create_model(model_name, **model_args)
    try:
        layers = check_input(model, model_name, (channels, *size), spec.input_size)
        outputs = tuple(model(torch.zeros((2, channels, *size), device=device)).shape) if spec.user else None
    except DeepstepError:
        raise
    except Exception as err:
        if not spec.user:
            raise
        raise DeepstepError(
            f"model {model_name!r} fails on a {channels}x{size[0]}x{size[1]} input: {in_user_code(err, spec.file)}"
        ) from None
    if outputs is not None and outputs != (2, model_args["num_classes"]):
        raise DeepstepError(
            f"model {model_name!r} gives outputs of shape {list(outputs)} for a batch of 2, not [2, {model_args['num_classes']}] "
            f"for the data's {model_args['num_classes']} classes: size its last layer by num_classes"
        )
    return ModelCost(
        sum(p.numel() for p in model.parameters()),
        sum(multiply_adds(layer.module, layer.input_shape, layer.output_shape) for layer in layers),
        sum(activation_bytes(layer) for layer in layers),
    )


# A batch whose activations pass this runs faster in parts on a CPU (they no longer stay in its
# caches). Training steps of 1,024 images in bf16 on the 2-core AMX CPU, whole against 4 parts
# (median of 4 alternating rounds): airbench (1.4 GiB of activations) 403 against 513 img/s,
# resnet-cifar (0.8 GiB) 1,508 against 1,808, lenet (31 MiB) 14,136 against 12,972; airbench as
# whole batches of 256 / 512 / 1,024: 530 / 444 / 407 img/s. The hint's parts stay under 384 MiB.
CPU_PARTS_HINT_BYTES = 512 * 2**20


def micro_batch_hint(batch: int, micro_batch: int, cost: ModelCost, device: torch.device) -> str | None:
    """A note suggesting --micro-batch for big batches (of `batch` examples, as trained) on a CPU, or None."""
    if device.type != "cpu" or micro_batch or batch * cost.activation_bytes < CPU_PARTS_HINT_BYTES:
        return None
    part = 2 ** int(math.log2(max(1, CPU_PARTS_HINT_BYTES * 3 // 4 // cost.activation_bytes)))  # airbench: 256
    return (
        f"note: a batch of {batch} holds {batch * cost.activation_bytes / 2**30:.1f} GiB of "
        f"activations, which run faster in parts on a CPU: try --micro-batch {part} (the same steps; batch norm "
        "then normalises each part on its own)"
    )


# ---- data --------------------------------------------------------------------------------------

Part = Pixels | ImageSplit  # decoded in memory, or files streamed from disk


@dataclass
class TrainingData:
    """The train part, the validation part carved from it, and how images are prepared."""

    source: ImageSource
    train: Part
    val: Part | None
    prep: Preprocessing
    in_memory: bool
    report: dict[str, Any]


def _cache_name(source: ImageSource, split: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name)[:40]
    return f"{safe}-{split}-{source.fingerprint}"


def _labels(part: Part) -> np.ndarray:
    return part.labels.numpy() if isinstance(part, Pixels) else part.labels


def _take(part: Part, indices: np.ndarray) -> Part:
    if isinstance(part, Pixels):
        index = torch.from_numpy(indices)
        return Pixels(part.images[index], part.labels[index], [])
    return part.subset(indices)


def holds_in_memory(choice: str, count: int, channels: int, size: tuple[int, int]) -> bool:
    """auto: decoded images in memory if they need at most a quarter of the machine's RAM."""
    if choice != "auto":
        return choice == "yes"
    needed = count * channels * size[0] * size[1]
    return needed <= total_memory() // 4


def total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def load_split(
    source: ImageSource,
    split: str,
    prep: Preprocessing,
    data_dir: Path,
    *,
    strict: bool,
    log: Log,
    progress: bool,
    workers: int = 0,
) -> Pixels:
    """Split `split` decoded to the model's input (from the cache after the first time)."""
    if split not in source.splits:
        raise DeepstepError(f"{source.name} has no {split!r} split; it has {', '.join(source.splits)}")
    pixels = load_pixels(
        source.splits[split],
        size=prep.size,
        channels=prep.channels,
        resize=prep.resize,
        cache_dir=data_dir,
        cache_name=_cache_name(source, split),
        strict=strict,
        workers=workers or None,
        progress=progress,
    )
    if pixels.skipped:
        first, reason = pixels.skipped[0]
        log(
            f"warning: skipped {len(pixels.skipped)} unreadable image(s) in {source.name} {split} "
            f"(first: {first}: {reason}); --strict makes this an error"
        )
    if len(pixels.labels) == 0:
        raise DeepstepError(f"{source.name} {split}: no readable images")
    return pixels


def carve_validation(part: Part, fraction: float, seed: int) -> tuple[Part, Part | None, dict[str, Any]]:
    """Hold out `fraction` of each class of the train part for validation (seeded)."""
    if fraction <= 0:
        return part, None, {"origin": "none (--val-split 0)", "count": 0}
    keep, held = stratified_split(
        _labels(part),
        fraction,
        seed,
        option=f"--val-split {fraction:g} of the train part",
        instead=", or train without one: --val-split 0",
    )
    info = {
        "origin": f"{fraction:.0%} of each class of the train part (stratified, seed {seed})",
        "fraction": fraction,
        "seed": seed,
        "count": len(held),
        "index_sha256": hashlib.sha256(held.astype(np.int64).tobytes()).hexdigest(),
    }
    return _take(part, keep), _take(part, held), info


def open_training_source(config: TrainConfig) -> ImageSource:
    """The data's files and classes (an archive unpacked, a test part carved), nothing decoded yet."""
    source = open_image_source(config.data, data_cache_dir(config.data_dir), config.test_split, labels=config.labels)
    if len(source.classes) < 2:
        raise DeepstepError(
            f"{config.data} has one class ({source.classes[0]}): a classifier needs at least two, one folder each"
        )
    return source


def prepare_training_data(
    config: TrainConfig, source: ImageSource, channels: int, size: tuple[int, int], log: Log, progress: bool
) -> TrainingData:
    """The train and validation parts as the model will see them, and the normalisation."""
    data_dir = data_cache_dir(config.data_dir)
    if config.workers > available_cores():
        log(f"note: --workers {config.workers} on {available_cores()} cores: the workers take turns on them")
    in_memory = holds_in_memory(config.in_memory, len(source.splits["train"]), channels, size)
    if not in_memory and source.splits["train"].files is None:
        in_memory = True  # a torchvision dataset is in memory already
    shape = Preprocessing(channels, size, config.resize, [], [])
    skipped: list = []
    if in_memory:
        whole = load_split(
            source, "train", shape, data_dir, strict=config.strict, log=log, progress=progress, workers=config.workers
        )
        skipped = whole.skipped
    else:
        whole = source.splits["train"]
    if "val" in source.splits:
        train = whole
        val = (
            load_split(source, "val", shape, data_dir, strict=config.strict, log=log, progress=progress)
            if in_memory
            else source.splits["val"]
        )
        val_info = {"origin": "the folder's val/; --val-split not used", "count": len(_labels(val))}
    else:
        train, val, val_info = carve_validation(whole, config.val_split, config.seed)
    if config.mean is not None:
        mean, std, origin = _per_channel(config.mean, channels), _per_channel(config.std, channels), "given"
    elif in_memory:
        (mean, std), origin = channel_stats(train.images), "computed on the train part"
    else:
        (mean, std), origin = sample_stats(train, size, config.resize, channels), "computed on 1,000 train images"
    prep = Preprocessing(channels, size, config.resize, mean, std)
    report = {
        "spec": config.data,
        "name": source.name,
        "root": str(source.root) if source.root else None,
        "fingerprint": source.fingerprint,
        "classes": source.classes,
        **({"labels": str(source.labels_file)} if source.labels_file else {}),
        "in_memory": in_memory,
        "train": {"count": len(_labels(train))},
        "val": val_info,
        "test": {"origin": source.test_origin, "count": len(source.splits["test"])},
        "skipped": [list(s) for s in skipped],
        "left_out": source.notes,
        "normalization": {"mean": mean, "std": std, "origin": origin},
    }
    return TrainingData(source, train, val, prep, in_memory, report)


def _per_channel(values: list[float], channels: int) -> list[float]:
    if len(values) == channels:
        return list(values)
    if len(values) == 1:
        return list(values) * channels
    raise DeepstepError(
        f"--mean/--std need 1 or {channels} values for this model's {channels}-channel input, got {len(values)}"
    )


def make_batches(
    part: Part,
    prep: Preprocessing,
    *,
    batch_size: int,
    device: torch.device,
    train: bool = False,
    augment: bool = False,
    crop_padding: int | None = None,
    alternate_flip: bool = False,
    cutout: int = 0,
    window: int | None = None,
    window_epochs: int = 0,
    seed: int = 0,
    workers: int = 0,
    strict: bool = False,
) -> ImageBatches | FileBatches:
    """Shuffled (and augmented) batches for training, ordered ones for evaluation."""
    if isinstance(part, Pixels):
        return ImageBatches(
            part,
            batch_size=batch_size,
            mean=prep.mean,
            std=prep.std,
            shuffle=train,
            augment=augment and train,
            crop_padding=crop_padding,
            alternate_flip=alternate_flip,
            cutout=cutout,
            window=window if train else None,
            window_epochs=window_epochs,
            seed=seed,
            device=device,
        )
    transform = (
        train_transform(prep.size, prep.resize, prep.mean, prep.std, augment, cutout)
        if train
        else eval_transform(prep.size, prep.resize, prep.mean, prep.std)
    )
    return FileBatches(
        part,
        batch_size=batch_size,
        transform=transform,
        channels=prep.channels,
        shuffle=train,
        seed=seed,
        device=device,
        workers=workers or available_cores(),
        strict=strict,
    )


# ---- train -------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What a run was started with, as reported at its start and in run.json."""

    device: torch.device
    threads: int | None
    precision: Precision
    kernels: dict[str, Any]
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.device.type,
            "threads": self.threads,
            "precision": self.precision.name,
            "precision_reason": self.precision.reason,
            **self.kernels,
        }


def with_pretrained_preprocessing(config: TrainConfig) -> TrainConfig:
    """--pretrained: the weights' own input size, resize and ImageNet normalisation, where not given."""
    from deepstep.models.pretrained import get_pretrained_spec

    prep = get_pretrained_spec(config.model).preprocessing
    return dataclasses.replace(
        config,
        image_size=config.image_size or "x".join(map(str, prep["crop"])),
        resize=config.resize or prep["resize"],
        mean=config.mean or prep["mean"],
        std=config.std or prep["std"],
    )


DATA_INIT_IMAGES = 5000


def init_from_data(model: nn.Module, data: TrainingData, seed: int) -> str | None:
    """A model with a data-dependent start (airbench's whitening layer) gets a seeded sample of up to
    5,000 normalised train images: the same on every rank, so the ranks start alike. Returns what
    the model says it did, or None for a model without one."""
    init = getattr(model, "init_from_data", None)
    if init is None:
        return None
    prep, train = data.prep, data.train
    if isinstance(train, Pixels):
        count = min(DATA_INIT_IMAGES, len(train.images))
        picks = np.sort(np.random.default_rng(seed).choice(len(train.images), size=count, replace=False))
        images = train.images[torch.from_numpy(picks)]
    else:
        images = torch.from_numpy(sample_images(train, prep.size, prep.resize, prep.channels, DATA_INIT_IMAGES, seed))
    return init(prep.normalize(images))


def build_model(config: TrainConfig, model_args: dict[str, Any], log: Log):
    """The model to train and, with --freeze-backbone, what freezes it.

    --pretrained: torchvision's ImageNet weights with the classifier replaced by a new one sized to
    the data's classes; otherwise fresh weights from the registry.
    """
    if not config.pretrained:
        return create_model(config.model, **model_args), None, []
    from deepstep.models.pretrained import BackboneFreeze, load_pretrained, replace_head

    model, spec = load_pretrained(config.model)
    head = replace_head(model, model_args["num_classes"])
    freeze = BackboneFreeze(model, head, config.unfreeze_after) if config.freeze_backbone else None
    head_ids = set(map(id, model.get_submodule(head).parameters()))
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    log(
        f"pretrained: {spec.weights} (ImageNet acc@1 {spec.accuracy}), new head {head!r} with "
        f"{model_args['num_classes']} outputs"
        + (
            f"; backbone frozen{f' for {config.unfreeze_after} epochs' if config.unfreeze_after is not None else ''}"
            if freeze
            else ""
        )
    )
    return model, freeze, backbone


def train(config: TrainConfig, log: Log = print, progress: bool = True) -> Path:
    """Train and validate; returns the run folder. The test part is not touched."""
    config.validate()
    if config.pretrained:
        config = with_pretrained_preprocessing(config)
    check_image_spec(str(config.data))  # a missing file is named before the model is checked against images
    channels, size = model_input(config.model, config.image_size)
    if config.crop_padding is not None and config.crop_padding >= min(size):
        raise DeepstepError(
            f"--crop-padding {config.crop_padding} is too large for {size[0]}x{size[1]} model inputs: "
            f"at most {min(size) - 1} pixels"
        )
    if config.cutout > min(size):
        raise DeepstepError(
            f"--cutout {config.cutout} is larger than the {size[0]}x{size[1]} model inputs: at most {min(size)} pixels"
        )
    ranks = distributed.from_environment()
    device = distributed.init(ranks, resolve_device(config.device))
    log, progress = distributed.quiet_unless_main(log), progress and ranks.main
    precision = resolve_precision(config.precision, device, preset_source(config, "precision"))
    threads = prepare_cpu(device)
    seed_everything(config.seed)

    if config.resume:  # refuse a meaningless resume before decoding anything
        open_run_for_resume(config, RESUME_MUST_MATCH)
    if not ranks.main:
        distributed.barrier(ranks)  # rank 0 decodes and caches the images first; the others read the cache
    source = open_training_source(config)
    model_args = {"num_classes": len(source.classes), **config.model_args}
    cost = check_model_fits(config.model, model_args, channels, size)  # before minutes of decoding
    data = prepare_training_data(config, source, channels, size, log, progress)
    if ranks.main:
        distributed.barrier(ranks)
    for flag, given, streamed in (  # --augment's options (the first two for images held in memory)
        ("--crop-padding", config.crop_padding is not None, "get a random resized crop"),
        ("--alternate-flip", config.alternate_flip, "are flipped at random"),
        ("--cutout", config.cutout > 0, None),
    ):
        if given and not config.augment:
            log(f"note: {flag} does nothing without --augment")
        elif given and streamed and not isinstance(data.train, Pixels):
            log(f"note: {flag} is for images held in memory; streamed ones {streamed}")
    batch = min(config.batch_size, len(_labels(data.train)))  # a train part smaller than a batch is one batch
    part = min(batch, config.micro_batch or batch)  # what one forward call takes
    precision = pays_off(precision, part * cost.mult_adds, auto=config.precision == "auto")
    if hint := micro_batch_hint(batch, config.micro_batch, cost, device):
        log(hint)
    window_epochs = progressive_epochs(config, model_args, channels, size, data, log)
    if config.compile:
        distributed.check_compiler(device)
    plateau = build_plateau(config, data.val is not None)
    weights = class_weights(config, _labels(data.train), data.source.classes)
    run, changes = (None, []) if config.find_lr else start_run(config, data.source.name, RESUME_MUST_MATCH, ranks, log)

    seed_everything(config.seed)  # the same initial weights whatever the data loading drew
    model, freeze, backbone = build_model(config, model_args, log)
    initialised = None
    if not config.pretrained and not config.resume:  # a resumed run's checkpoint holds what it computed
        initialised = init_from_data(model, data, config.seed)
    model = model.to(device)
    kernels = _choose_kernels(model, precision, batch, device)
    # Before each epoch: --freeze-backbone's freeze, and the model's own (airbench stops its whitening bias)
    epoch_hooks = [hook for hook in (freeze and freeze.set_epoch, getattr(model, "set_epoch", None)) if hook]
    model = distributed.wrap(model, ranks, device, compile=config.compile, freezes=bool(epoch_hooks))
    train_batches = make_batches(
        data.train,
        data.prep,
        batch_size=distributed.global_batch(config.batch_size),
        device=device,
        train=True,
        augment=config.augment,
        crop_padding=config.crop_padding,
        alternate_flip=config.alternate_flip,
        cutout=config.cutout,
        window=config.progressive_crop,
        window_epochs=window_epochs,
        seed=config.seed,
        workers=config.workers,
        strict=config.strict,
    )
    val_batches = None
    if data.val is not None:
        val_batches = make_batches(
            data.val, data.prep, batch_size=max(config.batch_size, 256), device=device, workers=config.workers
        )
    for batches in (train_batches, val_batches):
        if batches is not None:
            batches.channels_last = kernels["channels_last"]
    if config.mixup or config.cutmix:  # the global batch is mixed, before it is cut into ranks' slices
        train_batches = MixedBatches(
            train_batches, len(data.source.classes), mixup=config.mixup, cutmix=config.cutmix, seed=config.seed
        )
    global_batches = train_batches
    if ranks.active:  # each rank trains and validates on its slice of every global batch
        train_batches = distributed.RankSlices(train_batches, ranks)
        val_batches = val_batches and distributed.RankSlices(val_batches, ranks)
    optimizer, scheduler = optimization(config, model, len(train_batches), scaled=backbone, plateau=plateau)
    training = Training(
        model,
        classification_step(config.label_smoothing, None if weights is None else weights.to(device)),
        classification_step(top5=len(data.source.classes) > TOP_K),  # validation's top-5 too, as timm's
        train_batches,
        val_batches,
        optimizer,
        scheduler,
        precision,
        before_epoch=epoch_hooks,
        ranks=ranks,
        checkpoint_every=config.checkpoint_every,
        micro_batch=config.micro_batch,
        clip_grad=config.clip_grad,
        lookahead=build_lookahead(config, model, len(train_batches)),
        plateau=plateau,
        ema=build_ema(config, model),
    )
    meta = {
        "task": TASK,
        "model": {"name": config.model, "args": model_args, **file_record(config.model)},
        "classes": data.source.classes,
        **data.prep.to_meta(),
    }
    setup = Setup(device, threads, precision, kernels, cost.parameters)
    if config.find_lr:
        _log_start(log, config.model, data, setup, None, weights)
        return find_lr_report(config, training, data.source.name, log, progress)

    state = resume(training, run) if config.resume else None

    def describe() -> dict[str, Any]:
        _log_start(log, config.model, data, setup, run, weights)
        if mixing := describe_mixing(config.mixup, config.cutmix):
            log(mixing)
        if initialised:
            log(initialised)
        return {
            "data": data.report,
            "model": {
                **meta["model"],
                "input_size": meta["input_size"],
                "parameters": cost.parameters,
                "description": get_model_spec(config.model).description,
            },
            "device": setup.to_dict(),
        }

    if ranks.main:
        info = write_record(run, config, task=TASK, resumed=state, changes=changes, describe=describe, log=log)
        in_memory = isinstance(data.train, Pixels)  # streamed batches' workers draw on their own
        if in_memory and state is None and (config.augment or config.mixup or config.cutmix):
            out = write_batch_preview(global_batches, data.prep, data.source.classes, run.file("train-batch.png"))
            log(f"augmented training images: {out}")

    monitor = Monitor.named(config.monitor)
    state = fit(
        training,
        epochs=config.epochs,
        run=run,
        meta=meta,
        state=state,
        patience=config.patience,
        monitor=monitor,
        progress=progress,
        log=log,
    )
    skipped = getattr(train_batches, "skipped", [])
    if skipped:
        log(f"warning: skipped {len(skipped)} unreadable image(s) while streaming (first: {skipped[0]})")
    if ranks.main:
        finish(run, info, state, monitor, log)
    distributed.shutdown(ranks)
    return run.path


PREVIEW_IMAGES = 16


def write_batch_preview(
    batches: ImageBatches | MixedBatches, prep: Preprocessing, classes: Sequence[str], out: Path
) -> Path:
    """A picture of the first training images as the model will get them (cropped, flipped,
    mixed), with their labels, for the run folder."""
    from deepstep.plots import plot_image_grid

    x, y = first_batch(batches)
    x, y = x[:PREVIEW_IMAGES].float().cpu(), y[:PREVIEW_IMAGES].cpu()
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (prep.mean, prep.std))
    pixels = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    title = "first training images, as the model gets them"
    return plot_image_grid(list(pixels), batch_labels(y, classes), out, title=title)


def batch_labels(targets: torch.Tensor, classes: Sequence[str]) -> list[str]:
    """Each example's label in words: its class, or a mixed image's two classes and shares."""
    if targets.ndim == 1:
        return [classes[int(t)] for t in targets]
    labels = []
    for shares, which in zip(*targets.topk(2, dim=1), strict=True):
        parts = [f"{classes[int(c)]} {float(v):.0%}" for c, v in zip(which, shares, strict=True) if v >= 0.005]
        labels.append("\n".join(parts) if len(parts) > 1 else classes[int(which[0])])
    return labels


def describe_mixing(mixup: float, cutmix: float) -> str | None:
    """A line for the log on how training batches are mixed, or None when they are not."""
    ways = [
        f"{name} (share ~ Beta({alpha:g}, {alpha:g}))"
        for name, alpha in (("mixup", mixup), ("cutmix", cutmix))
        if alpha
    ]
    if not ways:
        return None
    either = " or ".join(ways) + (", at even odds for each batch" if len(ways) == 2 else "")
    return f"mixing: each training batch's images and labels mixed by {either}; validation sees plain images"


def _choose_kernels(model: nn.Module, precision: Precision, batch_size: int, device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        choice = choose_cpu_kernels(model, batch_size, precision)
    else:  # cuDNN's own heuristics pick kernels; channels_last feeds its tensor cores in bf16/fp16
        choice = KernelChoice(
            onednn=torch.backends.mkldnn.enabled, channels_last=device.type == "cuda" and precision.name != "32"
        )
    apply_kernels(model, choice)
    layout = "channels_last" if choice.channels_last else "contiguous"
    kernels = choice.describe() if device.type == "cpu" else f"{device.type}'s own convolution kernels, {layout}"
    return {"kernels": kernels, "channels_last": choice.channels_last}


def _log_start(
    log: Log, model_name: str, data: TrainingData, setup: Setup, run: RunDir | None, weights: torch.Tensor | None
) -> None:
    r, prep = data.report, data.prep
    named = f" (classes from {Path(r['labels']).name})" if r.get("labels") else ""
    log(
        f"data: {r['name']}{named}: {r['train']['count']} train / {r['val']['count']} val ({r['val']['origin']}) / "
        f"{r['test']['count']} test ({r['test']['origin']}; not used in training)"
        + ("" if data.in_memory else "; streamed from disk")
    )
    for note in r["left_out"]:
        log(f"note: {note}")
    log(f"model: {model_name}, {setup.parameters:,} parameters, input {format_size((prep.channels, *prep.size))}")
    log(f"pre-processing: {prep.describe()}")
    norm = r["normalization"]
    log(f"normalisation: mean {norm['mean']} std {norm['std']} ({norm['origin']})")
    if weights is not None:
        log(describe_class_weights(weights, data.source.classes))
    log(
        f"device: {setup.device.type}"
        + (f", {setup.threads} threads" if setup.threads else "")
        + f"; precision {setup.precision.name} ({setup.precision.reason}); {setup.kernels['kernels']}"
    )
    log(f"run folder: {run.path}" if run is not None else "run folder: none (--find-lr)")


# ---- a trained run -----------------------------------------------------------------------------


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with the pre-processing its inputs need."""

    model: nn.Module
    record: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.record["classes"]

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_meta(self.record)


def load_trained(run: RunDir, checkpoint: str = "best") -> TrainedModel:
    return TrainedModel(*load_model(run, checkpoint))


# ---- evaluate ----------------------------------------------------------------------------------


def evaluate_run(
    run_path: str | Path,
    split: str = "test",
    *,
    force: bool = False,
    checkpoint: str = "best",
    tta: bool | str | None = None,
    data_dir: str | None = None,
    data: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    log: Log = print,
    progress: bool = True,
    gradcam: bool = False,
    labels: str | None = None,
) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix on `split`: test, val, or "all", every
    image of other data given as `data` (all its parts; not recorded as a test evaluation), in class
    folders or named by the CSV `labels` (as train's --labels);
    with `tta` ("flip" or "flip-translate"), each image's logits are averaged over views of it.
    `data`: where the run's data is now, if it moved since training. `precision`: "32" (fp32,
    also when None), "bf16", "16" or "auto", as training's --precision; the kernels are chosen
    as training chooses them for that precision. `device`: as train's --device (auto when None).
    `gradcam`: also draw the mistakes under their Grad-CAM maps for the class said.

    The test split is measured once per run; a second measurement needs `force` and is recorded.
    """
    run = RunDir.open(run_path)
    tta = tta_mode(tta)
    check_split(split, data)
    history = test_evaluations(run, split, force, lambda e: f"accuracy {e['accuracy']:.2%}")
    info = run.read_json("run.json")
    config = run_config(run, data)
    if labels or split == "all":  # other data has its own labels CSV, or class folders
        config = dataclasses.replace(config, labels=absolute_path("labels", labels))
    trained = load_trained(run, checkpoint)
    on, batch_size = resolve_device(device or "auto"), 256
    chosen = inference_precision(precision, trained.model, on, lambda: batch_size * _run_cost(trained), "evaluate")
    part = _evaluation_part(info, config, trained.prep, split, data_dir, log, progress)
    batches = make_batches(part, trained.prep, batch_size=batch_size, device=on, workers=config.workers)
    model, batches.channels_last = _ready_for_inference(trained.model, chosen, batch_size, on, log)
    if tta:
        model = ViewAveraged(model, tta)
    means, kept = evaluate(model, classification_step(), batches, chosen, keep=("output", "target"))
    probs, targets = torch.softmax(kept["output"].float(), dim=1).numpy(), kept["target"].numpy()
    report = _classification_report(probs, targets, trained.classes)
    result = {
        "split": split,
        **({"data": str(config.data)} if split == "all" else {}),
        "checkpoint": checkpoint,
        "tta": tta,
        "device": {"type": on.type, "precision": chosen.name, "precision_reason": chosen.reason},
        "epoch": trained.record["epoch"],
        "images": len(kept["target"]),
        "accuracy": report.pop("accuracy"),
        "loss": means["loss"],
        **report,
        "time": now(),
    }
    title = f"{split}: accuracy {result['accuracy']:.2%} ({result['images']} images)"
    title += (f" with {tta} TTA" if tta else "") + (f", in {chosen.name}" if chosen.name != "32" else "")
    matrix = np.asarray(result["confusion_matrix"])
    result["files"] = save_confusion(run.path, split, matrix, trained.classes, title)
    result["files"].update(save_roc(run.path, split, probs, targets, trained.classes, result.get("roc_auc")))
    result["mistakes"] = most_confident_mistakes(kept["output"], kept["target"], trained.classes)
    if result["mistakes"] and not getattr(batches, "skipped", None):  # skipped files would shift the images
        images = mistake_images(part, result["mistakes"], trained.prep)
        out = run.path / f"mistakes_{split}.png"
        result["files"]["mistakes_png"] = str(plot_mistakes(images, result["mistakes"], out, split))
        if gradcam:  # the maps for the class wrongly said: where the evidence that misled the model lies
            index = {name: i for i, name in enumerate(trained.classes)}  # a run's class names are unique
            found = draw_gradcam(
                trained.model,
                trained.prep,
                images,
                [f"is {m['label']}" for m in result["mistakes"]],
                [{"label": f"said {m['predicted']}", "probability": m["probability"]} for m in result["mistakes"]],
                [index[m["predicted"]] for m in result["mistakes"]],
                run.path / f"mistakes_gradcam_{split}.png",
                None,
                on,
                "the class said",
            )
            result["files"]["mistakes_gradcam_png"] = str(found)
    run.write_json(f"{split}.json", result)
    if split == "test":
        record_test_evaluation(
            run,
            history,
            {key: result[key] for key in ("time", "checkpoint", "tta", "device", "epoch", "accuracy", "loss")},
        )
    return result


MISTAKES_SHOWN = 16


def most_confident_mistakes(
    logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], count: int = MISTAKES_SHOWN
) -> list[dict[str, Any]]:
    """The `count` wrongly classified images with the highest loss, the most wrong first (fastai's
    top losses, among the mistakes): each one's place in the evaluated part, its label, what the
    model said, and the probabilities of both."""
    probs = torch.softmax(logits.float(), dim=1)
    said = probs.argmax(dim=1)
    wrong = (said != labels).nonzero().squeeze(1)
    losses = F.cross_entropy(logits.float()[wrong], labels[wrong], reduction="none")
    order = wrong[losses.argsort(descending=True, stable=True)][:count].tolist()
    return [
        {
            "image": i,
            "label": classes[int(labels[i])],
            "predicted": classes[int(said[i])],
            "probability": round(float(probs[i, said[i]]), 6),
            "label_probability": round(float(probs[i, labels[i]]), 6),
        }
        for i in order
    ]


def mistake_images(part: Part, mistakes: list[dict[str, Any]], prep: Preprocessing) -> list[np.ndarray]:
    """The mistakes' images (C, H, W) uint8, at the model's input size, as it saw them."""
    from deepstep.data.decode import prepare_image

    images = []
    for m in mistakes:
        i = m["image"]
        if isinstance(part, Pixels):
            images.append(part.images[i].numpy())
        elif part.files is not None:
            images.append(read_for_model(part.files[i], prep))
        else:
            images.append(prepare_image(part.open(i), prep.size, prep.channels, prep.resize))
    return images


def plot_mistakes(images: list[np.ndarray], mistakes: list[dict[str, Any]], out: Path, split: str) -> Path:
    """The mistakes' images, each titled with its label and what the model said with its probability."""
    from deepstep.plots import plot_image_grid

    labels = [f"is {m['label']}\nsaid {m['predicted']} {m['probability']:.0%}" for m in mistakes]
    title = f"{split}: the {len(mistakes)} mistakes with the highest loss"
    return plot_image_grid(images, labels, out, title=title)


def inference_precision(
    requested: str | None, model: nn.Module, device: torch.device, mult_adds: Callable[[], int], command: str
) -> Precision:
    """`requested` resolved as training resolves its --precision, for forward calls of `mult_adds()`
    multiply-adds (asked for `auto` only); fp32, `command`'s default, when None."""
    if requested is None:
        return Precision("32", device.type, f"fp32, {command}'s default")
    if requested not in PRECISIONS:
        raise DeepstepError(f"--precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    auto = requested == "auto"
    precision = supported_by(resolve_precision(requested, device), model, auto=auto)
    return pays_off(precision, mult_adds(), auto=True) if auto else precision


def _run_cost(trained: TrainedModel) -> int:
    """Multiply-adds of one forward pass of one image through a trained run's model."""
    model, prep = trained.record["model"], trained.prep
    return check_model_fits(model["name"], model["args"], prep.channels, prep.size).mult_adds


def _ready_for_inference(
    model: nn.Module, precision: Precision, batch_size: int, device: torch.device, log: Log
) -> tuple[nn.Module, bool]:
    """The model on `device` with the kernels training would choose for `precision` and batches of
    `batch_size`; whether inputs should be channels_last. Says the precision when it is not fp32."""
    model = model.to(device)
    channels_last = _choose_kernels(model, precision, batch_size, device)["channels_last"]
    if precision.name != "32":
        log(f"precision {precision.name} ({precision.reason})")
    return model, channels_last


def _evaluation_part(info, config: TrainConfig, prep: Preprocessing, split, data_dir, log, progress) -> Part:
    """The test part, the validation part rebuilt exactly as training carved it, or every image
    of other data (`split` "all")."""
    data_dir = data_cache_dir(data_dir, config.data_dir)
    source = open_image_source(
        config.data, data_dir, config.test_split, carve_test=split != "all", labels=config.labels
    )
    if split == "all":
        if source.fingerprint == info["data"]["fingerprint"]:
            raise DeepstepError(same_data_for_all(config.data))
        parts = [source.splits[name] for name in ("train", "val", "test") if name in source.splits]
        source.splits = {"all": join_splits(parts)}
    elif source.fingerprint != info["data"]["fingerprint"]:
        where = f"; its test part: {source.test_origin}" if split == "test" else ""  # a carved part is a fifth
        log(
            f"warning: the data at {config.data} changed since this run was trained "
            f"(fingerprint {info['data']['fingerprint']} -> {source.fingerprint}){where}"
        )
    in_memory = info["data"].get("in_memory", True)
    renumber = torch.from_numpy(class_numbers(config.data, source.classes, info["data"]["classes"]))

    def part(name: str) -> Part:
        if in_memory:
            loaded = load_split(source, name, prep, data_dir, strict=False, log=log, progress=progress)
            return dataclasses.replace(loaded, labels=renumber[loaded.labels])
        split = source.splits[name]
        return dataclasses.replace(split, labels=renumber.numpy()[split.labels])

    if split in ("test", "all") or "val" in source.splits:
        return part(split)
    _, val, val_info = carve_validation(part("train"), config.val_split, config.seed)
    if val is None:
        raise DeepstepError("this run was trained with --val-split 0: it has no validation part to evaluate")
    if val_info["index_sha256"] != info["data"]["val"].get("index_sha256"):
        raise DeepstepError(
            "the validation part cannot be rebuilt as it was in training (the data changed); "
            "evaluate --split test instead, or --split all to score every image of other data"
        )
    return val


def _classification_report(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """classification_metrics' report (precision, recall and F1 per class and their macro means; ROC
    AUC for two classes), with each class's accuracy (its recall; None for a class without images)."""
    report = classification_metrics(probs, labels, classes)
    report["per_class_accuracy"] = {
        c: (scores["recall"] if scores["support"] else None) for c, scores in report["per_class"].items()
    }
    return report


# ---- predict -----------------------------------------------------------------------------------


class ImageFile(NamedTuple):
    """One image to predict: a file, or a Pillow image given in Python (`image`, the `index`-th input)."""

    path: Path | None
    found: bool  # found in a folder given, not named: left out with a warning if unreadable (unless strict)
    image: Any = None  # PIL.Image.Image
    index: int | None = None

    def name(self) -> str:
        return str(self.path) if self.path is not None else f"image {self.index}"


def image_files(inputs: Sequence[Any]) -> list[ImageFile]:
    """Files as given, the images inside given folders (in natural order: 2.png before 10.png), and
    Pillow images as they are."""
    from PIL import Image

    files: list[ImageFile] = []
    for index, item in enumerate(inputs):
        if isinstance(item, Image.Image):
            files.append(ImageFile(None, False, item, index))
            continue
        if not isinstance(item, str | os.PathLike):
            raise DeepstepError(f"predict takes image files, folders or PIL images; input {index} is {_what(item)}")
        if isinstance(item, str) and item.split("://")[0] in ("http", "https", "ftp", "s3", "gs"):
            raise DeepstepError(f"{item} is a web address: deepstep reads local files; download it first (curl -O URL)")
        path = item if isinstance(item, Path) else Path(item)
        try:  # one stat per file, not is_dir() and is_file(): 3 against 12 us, 5% of predicting a small JPEG
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise DeepstepError(f"{path} does not exist") from None
        except OSError as err:
            raise DeepstepError(f"{path} cannot be read: {err.strerror or err}") from None
        if stat.S_ISDIR(mode):
            found = in_natural_order(find_images(path))
            if not found:
                raise DeepstepError(f"{path} holds no images to predict")
            files.extend(ImageFile(f, True) for f in found)
        elif stat.S_ISREG(mode):
            files.append(ImageFile(path, False))
        else:
            raise DeepstepError(f"{path} is not a file or folder of images")
    if not files:
        raise DeepstepError("give at least one image file or folder to predict")
    return files


def _what(item: Any) -> str:
    """What an input that is not an image is, and how to make an image of it where there is a way."""
    kind = kind_of(item)
    if isinstance(item, np.ndarray):
        return f"{kind}: make a PIL image of it, Image.fromarray(a) for a uint8 height x width x 3 array"
    if isinstance(item, torch.Tensor):
        return f"{kind}: make a PIL image of it, torchvision.transforms.functional.to_pil_image(t)"
    return kind


def read_for_model(path: Path, prep: Preprocessing) -> np.ndarray:
    from deepstep.data.decode import DECODE_ERRORS, describe_error, read_image

    try:
        return read_image(path, prep.size, prep.channels, prep.resize)
    except DECODE_ERRORS as err:
        why = describe_error(err)
        what = "; give a JPEG, PNG, BMP, GIF, WebP or TIFF image" if why == "not an image Pillow can read" else ""
        raise DeepstepError(f"{path}: {why}{what}") from None


def prepare_given(file: ImageFile, prep: Preprocessing) -> np.ndarray:
    """A Pillow image given in Python, made a model input as a file would be."""
    from deepstep.data.decode import DECODE_ERRORS, describe_error, prepare_image

    try:
        return prepare_image(file.image, prep.size, prep.channels, prep.resize)
    except DECODE_ERRORS as err:  # a lazily opened image whose file is broken
        raise DeepstepError(f"{file.name()}: {describe_error(err)}") from None


class ImageReader:
    """Reads image files for a model, in threads (one contiguous slice of the files each) once the
    first files show that decoding them is slow enough to gain from it; use it as a context. A file
    found in a folder that cannot be read is left out and noted in `skipped` (as training skips
    one), unless `strict`; one named is an error."""

    def __init__(self, prep: Preprocessing, workers: int | None = None, strict: bool = False):
        self.prep = prep
        self.workers = workers or available_cores()
        self.pool: ThreadPoolExecutor | None = None
        self.probed = self.workers == 1
        self.strict = strict
        self.skipped: list[str] = []  # "file: why", in the files' order

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def read(self, files: Sequence[ImageFile]) -> tuple[np.ndarray, list[ImageFile]]:
        """The files read, as one uint8 array (N, C, H, W), and which files they are, in order."""
        images: list[tuple[ImageFile, np.ndarray | str]] = []  # the image, or why it was left out
        if not self.probed:
            start = time.perf_counter()
            images = self._serial(files[:PROBE_FILES])
            per_file = (time.perf_counter() - start) / max(1, len(images))
            self.probed, files = True, files[PROBE_FILES:]
            if per_file > PARALLEL_DECODE_SECONDS:
                self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="deepstep-decode")
        if self.pool is not None and len(files) > 1:
            size = -(-len(files) // self.workers)
            for part in self.pool.map(self._serial, [files[i : i + size] for i in range(0, len(files), size)]):
                images.extend(part)
        else:
            images.extend(self._serial(files))
        self.skipped += [image for _, image in images if isinstance(image, str)]
        read = [(file, image) for file, image in images if not isinstance(image, str)]
        shape = (0, self.prep.channels, *self.prep.size)
        return np.stack([image for _, image in read]) if read else np.empty(shape, np.uint8), [f for f, _ in read]

    def _serial(self, files: Sequence[ImageFile]) -> list[tuple[ImageFile, np.ndarray | str]]:
        images: list[tuple[ImageFile, np.ndarray | str]] = []
        for file in files:
            try:
                if file.image is not None:
                    images.append((file, prepare_given(file, self.prep)))
                else:
                    images.append((file, read_for_model(file.path, self.prep)))
            except DeepstepError as err:
                if self.strict or not file.found:
                    raise
                images.append((file, str(err)))
        return images


def checked_top_k(top_k: int | None) -> int:
    """--top-k as given, checked, or 5 when not given (None, so that a sequence run can tell it was)."""
    if top_k is None:
        return 5
    if top_k < 1:
        raise DeepstepError(f"--top-k must be at least 1, got {top_k}")
    return top_k


def predict_run(
    run_path: str | Path,
    inputs: Sequence[str | Path],
    *,
    top_k: int | None = None,
    checkpoint: str = "best",
    plot: str | Path | None = None,
    batch_size: int = 64,
    tta: bool | str | None = None,
    precision: str | None = None,
    device: str | None = None,
    log: Log = print,
    strict: bool = False,
    gradcam: str | Path | None = None,
    gradcam_layer: str | None = None,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Class and softmax probabilities for each image, with the run's own pre-processing.
    `precision`: as evaluate's (fp32 when None); `device`: as train's (auto when None); `strict`:
    an unreadable image in a folder is an error, not left out with a warning; `top_k`: how many
    classes per image (default 5); `gradcam`: a picture of the first images' Grad-CAM maps, at
    `gradcam_layer` (default: the last layer whose output has a height and width); `out`: a CSV
    of every image's class and every class's probability."""
    top_k = checked_top_k(top_k)
    out = prediction_table_path(out) if out is not None else None
    run = RunDir.open(run_path)
    on = resolve_device(device or "auto")
    trained = load_trained(run, checkpoint)
    files = image_files(inputs)
    chosen = inference_precision(precision, trained.model, on, lambda: batch_size * _run_cost(trained), "predict")
    return classify_files(
        trained.model,
        trained.classes,
        trained.prep,
        files,
        top_k=top_k,
        plot=plot,
        batch_size=batch_size,
        tta=tta,
        precision=chosen,
        device=on,
        log=log,
        strict=strict,
        gradcam=gradcam,
        gradcam_layer=gradcam_layer,
        out=out,
    )


def predict_pretrained(
    model_name: str,
    inputs: Sequence[str | Path],
    *,
    top_k: int | None = None,
    plot: str | Path | None = None,
    batch_size: int = 16,
    tta: bool | str | None = None,
    precision: str | None = None,
    device: str | None = None,
    log: Log = print,
    strict: bool = False,
    gradcam: str | Path | None = None,
    gradcam_layer: str | None = None,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """ImageNet top-k label names and probabilities from torchvision's pretrained `model_name`,
    with the weights' own pre-processing (resize the short side, center-crop, normalise).
    `top_k`, `precision`, `device`, `strict`, `gradcam`, `gradcam_layer`, `out`: as `predict_run`'s."""
    from deepstep.models.pretrained import load_pretrained

    top_k = checked_top_k(top_k)
    out = prediction_table_path(out) if out is not None else None
    files = image_files(inputs)  # a wrong path or device is said before the weights are loaded (or downloaded)
    on = resolve_device(device or "auto")
    model, spec = load_pretrained(model_name)
    chosen = inference_precision(precision, model, on, lambda: batch_size * spec.multiply_adds, "predict")
    p = spec.preprocessing
    prep = Preprocessing(3, p["crop"], p["resize"], p["mean"], p["std"])
    return classify_files(
        model,
        spec.categories,
        prep,
        files,
        top_k=top_k,
        plot=plot,
        batch_size=batch_size,
        tta=tta,
        precision=chosen,
        device=on,
        log=log,
        strict=strict,
        gradcam=gradcam,
        gradcam_layer=gradcam_layer,
        out=out,
    )


def classify_files(
    model: nn.Module,
    classes: Sequence[str],
    prep: Preprocessing,
    files: Sequence[Path],
    *,
    top_k: int,
    plot: str | Path | None,
    batch_size: int,
    tta: bool | str | None,
    precision: Precision,
    device: torch.device,
    log: Log,
    strict: bool = False,
    gradcam: str | Path | None = None,
    gradcam_layer: str | None = None,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Softmax over the model's outputs for each image file (from `image_files`, which checks
    each path once): the top-k classes, best first; with `out`, every class's probability too
    ("probabilities"), written to that CSV (write_predictions). An unreadable file found in a folder is left
    out with a warning, unless `strict`. The model runs on `device` with the kernels
    training would choose for `precision`, all batches in one autocast region, so that it casts
    the weights once. The files are decoded in parts of up to `PREDICT_DECODE_BYTES`, so a folder
    of any size fits in memory. `gradcam`: a picture of the first images with the Grad-CAM map
    of their top class (at `gradcam_layer`, by default the last with a height and width)."""
    tta = tta_mode(tta)
    top_k = min(top_k, len(classes))
    model, channels_last = _ready_for_inference(model, precision, batch_size, device, log)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    plain = model
    model = ViewAveraged(model, tta) if tta else model
    drawn = plot is not None or gradcam is not None
    if gradcam is not None:  # a wrong --gradcam-layer is said before any image is read
        from deepstep.models.gradcam import cam_layer

        cam_layer(plain, torch.zeros(1, prep.channels, *prep.size, device=device), gradcam_layer)
    image_bytes = prep.channels * prep.size[0] * prep.size[1]
    chunk = max(1, PREDICT_DECODE_BYTES // (image_bytes * batch_size)) * batch_size  # files decoded at once
    results, shown = [], []  # shown: (image, its name) for the ones the plot draws
    predicted: list[int] = []  # the class index each image shown was given
    with torch.inference_mode(), precision.autocast(), ImageReader(prep, strict=strict) as reader:
        for first in range(0, len(files), chunk):
            images, read = reader.read(files[first : first + chunk])
            if drawn and len(shown) < PLOT_MAX_IMAGES:
                more = PLOT_MAX_IMAGES - len(shown)
                shown.extend(zip(images[:more], [f.name() for f in read[:more]], strict=True))
            for start in range(0, len(images), batch_size):
                x = prep.normalize(torch.from_numpy(images[start : start + batch_size]))
                x = x.to(device, non_blocking=True).contiguous(memory_format=layout)
                probs = torch.softmax(model(x).float(), dim=1)
                values, indices = probs.topk(top_k, dim=1)
                batch = read[start : start + batch_size]
                every = probs.tolist() if out is not None else [None] * len(batch)
                for file, p, idx, full in zip(batch, values.tolist(), indices.tolist(), every, strict=True):
                    ranked = [{"label": classes[i], "probability": q} for i, q in zip(idx, p, strict=True)]
                    where = {"file": str(file.path)} if file.path is not None else {"file": None, "image": file.index}
                    results.append({**where, "label": ranked[0]["label"], "top_k": ranked})
                    if full is not None:
                        results[-1]["probabilities"] = dict(zip(classes, full, strict=True))
                    if len(predicted) < len(shown):
                        predicted.append(idx[0])
    if reader.skipped:
        if not results:
            raise DeepstepError(f"none of the {len(files)} image file(s) could be read (first: {reader.skipped[0]})")
        log(
            f"warning: skipped {len(reader.skipped)} unreadable image(s) of {len(files)} "
            f"(first: {reader.skipped[0]}); --strict makes this an error"
        )
    if out is not None:
        write_predictions(results, classes, out)
    if plot is not None:
        from deepstep.plots import plot_predictions

        plot_predictions(
            [(image, name, r["top_k"]) for (image, name), r in zip(shown, results, strict=False)], Path(plot)
        )
    if gradcam is not None:  # the maps of the model as it is, without TTA
        draw_gradcam(
            plain,
            prep,
            [image for image, _ in shown],
            [name for _, name in shown],
            [r["top_k"][0] for r in results[: len(shown)]],
            predicted,
            Path(gradcam),
            gradcam_layer,
            device,
        )
    return results


def draw_gradcam(
    model: nn.Module,
    prep: Preprocessing,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    tops: Sequence[dict[str, Any]],
    targets: Sequence[int],
    out: Path,
    layer: str | None,
    device: torch.device,
    target: str = "the predicted class",
) -> Path:
    """The `images` (uint8, as the model saw them), each titled with its name and `tops` entry
    ({"label", "probability"}), beside its Grad-CAM map for the class index in `targets`, taken
    in fp32 at `layer` (None: the last with a height and width); `target` says what class that is."""
    from deepstep.models.gradcam import grad_cam
    from deepstep.plots import plot_gradcam

    x = prep.normalize(torch.from_numpy(np.stack(images))).to(device)
    found = grad_cam(model, x, torch.tensor(list(targets)), layer)
    items = list(zip(images, names, tops, found.maps.numpy(), strict=True))
    return plot_gradcam(items, out, f"{found.layer} ({format_size(found.layer_shape)})", target)


def draw_feature_maps(
    run_path: str | Path, image: Any, out: str | Path, *, channels: int = 8, checkpoint: str = "best"
) -> Path:
    """A picture of what each convolution and pooling layer of a trained run's model makes of one
    image file, prepared as predict prepares it: the first `channels` feature maps of each."""
    from deepstep.models.shapes import feature_maps
    from deepstep.plots import picture_path, plot_feature_maps

    if channels < 1:
        raise DeepstepError(f"--channels must be at least 1, got {channels}")
    out = picture_path(out)
    run = RunDir.open(run_path)
    task = run.read_json("run.json").get("task", "image-classification")
    if task != "image-classification":
        raise DeepstepError(f"feature maps are drawn for image runs; {run.path} is {task}")
    if isinstance(image, str | os.PathLike) and os.path.isdir(image):
        raise DeepstepError(f"{image} is a folder: give one image file")
    [file] = image_files([image])  # a missing file or a web address: one line
    trained = load_trained(run, checkpoint)
    prep = trained.prep
    pixels = prepare_given(file, prep) if file.image is not None else read_for_model(file.path, prep)  # (C, H, W)
    layers = feature_maps(trained.model, prep.normalize(torch.tensor(pixels)[None])[0])
    layers = [(name, module, maps) for name, module, maps in layers if maps[0].numel() > 1]  # 1x1: one number, no map
    if not layers:
        raise DeepstepError(f"{run.path}'s model has no convolution or pooling layer to show the feature maps of")
    calls = len(layers)
    if calls > FEATURE_MAP_ROWS:  # a deep net (mobilenet: 50+ convolutions): evenly spaced, the last kept
        layers = [layers[round(i * (calls - 1) / (FEATURE_MAP_ROWS - 1))] for i in range(FEATURE_MAP_ROWS)]
    rows = [
        (f"{name}\n{type(module).__name__}\n{format_size(tuple(maps.shape))}", maps.numpy())
        for name, module, maps in layers
    ]
    name = file.path.name if file.path is not None else "the image given"
    which = (
        "each convolution and pooling"
        if calls == len(layers)
        else f"{len(layers)} of its {calls} convolutions and poolings, evenly spaced"
    )
    title = (
        f"{trained.record['model']['name']} on {name}: the first {channels} feature maps of {which} "
        "(each coloured over its own range)"
    )
    return plot_feature_maps(pixels, rows, out, title, channels)


# ---- show --------------------------------------------------------------------------------------


def show_images(
    data: str,
    *,
    split: str = "train",
    n: int = 16,
    out: str | Path = "grid.png",
    data_dir: str | None = None,
    test_split: float = 0.2,
    seed: int = 0,
    labels: str | None = None,
) -> Path:
    """A labelled grid of `n` images drawn at random (seeded) from a split (`labels`: as train's)."""
    if n < 1:
        raise DeepstepError(f"--n must be at least 1, got {n}")
    source = open_image_source(data, data_cache_dir(data_dir), test_split, labels=labels)
    if split not in source.splits:
        raise DeepstepError(f"{source.name} has no {split!r} split; it has {', '.join(source.splits)}")
    part = source.splits[split]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(part), size=min(n, len(part)), replace=False)
    images, labels, skipped = [], [], []
    from deepstep.data.decode import DECODE_ERRORS, describe_error, to_model_mode

    for i in picks:
        try:
            with part.open(int(i)) as image:
                images.append(np.asarray(to_model_mode(image, 3)))
        except DECODE_ERRORS as err:
            skipped.append(f"{part.name(int(i))}: {describe_error(err)}")
            continue
        labels.append(source.classes[int(part.labels[i])])
    if skipped:  # said, as training says it, rather than leave a grid short of what was asked for
        print(f"warning: skipped {len(skipped)} unreadable image(s) (first: {skipped[0]})", file=sys.stderr)
    if not images:
        raise DeepstepError(f"none of the {len(picks)} image(s) drawn from {source.name} {split} could be read")
    from deepstep.plots import plot_image_grid

    return plot_image_grid(images, labels, Path(out), title=f"{source.name}: {split} ({len(images)} of {len(part)})")
