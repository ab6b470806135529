"""deepstep's benchmark suite: one command, a table on screen and a JSON file.

    python -m bench.run            # full: all of CIFAR-10 from ../shared/data (45 minutes on 2 cores)
    python -m bench.run --quick    # smoke run on the shipped cifar10-sample (under 5 minutes)
    python -m bench.run --only tutorial

Each benchmark runs its contenders on the same data in the same process session, so that
their ratio is what to read: absolute times on a shared machine drift by +-30%.
Results go to bench/results/<time>.json; the run folders the benchmarks train into are removed
at the end (--keep-runs keeps them in bench/results/<time>-runs/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from deepstep.cli.common import key_value
from deepstep.engine.backends import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
cifar_archive = SHARED_CIFAR  # --cifar replaces it
RESULTS = ROOT / "bench" / "results"
runs_root = RESULTS / "runs"  # main() gives each invocation its own folder of run folders


class Skip(Exception):
    """A benchmark that cannot run here, with the reason."""


def cifar_folder(quick: bool) -> tuple[str, Path]:
    """(--data value, unpacked ImageFolder path): the sample when quick, else all of CIFAR-10."""
    from deepstep.data.sources import data_cache_dir, open_image_source

    if quick:
        spec = "cifar10-sample"
    else:
        if not cifar_archive.is_file():
            raise Skip(
                f"{cifar_archive} is missing: the full benchmarks need ../shared/data, or --cifar naming "
                "the archive (or use --quick)"
            )
        spec = str(cifar_archive)
    source = open_image_source(spec, data_cache_dir())
    return spec, source.root


def bench_tutorial(quick: bool, seeds: int = 1) -> dict:
    """The PyTorch CIFAR-10 tutorial loop against `deepstep train --recipe tutorial`, both trained
    once for each of the seeds 0 .. seeds - 1. The accuracy bar is read on the means: one seed's
    test accuracy moves by a point or two either way (AMX CPU, seeds 0-3: deepstep minus the
    tutorial loop -1.71, -0.03, +0.15, +0.75 points)."""
    import deepstep
    from bench.tutorial_loop import run as tutorial_loop

    spec, folder = cifar_folder(quick)
    rows = []
    for seed in range(seeds):
        out = runs_root / f"tutorial-run-{int(time.time())}-seed{seed}"
        start = time.perf_counter()
        run = deepstep.train(data=spec, recipe="tutorial", out=str(out), verbose=False, seed=seed)
        deepstep_wall = time.perf_counter() - start
        deepstep_acc = run.evaluate(verbose=False)["accuracy"]
        tutorial = tutorial_loop(str(folder), seed=seed)
        rows += [
            {
                "contender": "tutorial loop (ImageFolder + DataLoader, batch 4)",
                "seed": seed,
                "train_s": tutorial["train_seconds"],
                "test_acc": tutorial["test_accuracy"],
            },
            {
                "contender": "deepstep train --recipe tutorial",
                "seed": seed,
                "train_s": run.info["result"]["train_seconds"],
                "test_acc": deepstep_acc,
                "wall_s_with_decode": deepstep_wall,
            },
        ]

    def mean(key: str, contender: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["contender"].startswith(contender))

    return {
        "rows": rows,
        "seeds": seeds,
        "speedup": mean("train_s", "tutorial") / mean("train_s", "deepstep"),
        "accuracy_gap_points": 100 * (mean("test_acc", "deepstep") - mean("test_acc", "tutorial")),
        "data": spec,
    }


def _decoded(spec: str):
    """The train part of `spec` as deepstep decodes and caches it: (uint8 images, labels, mean, std)."""
    from deepstep.data.images import channel_stats
    from deepstep.data.sources import data_cache_dir, open_image_source
    from deepstep.tasks.image_classification import Preprocessing, load_split

    data_dir = data_cache_dir()
    source = open_image_source(spec, data_dir)
    pixels = load_split(
        source, "train", Preprocessing(3, (32, 32), None, [], []), data_dir, strict=False, log=print, progress=False
    )
    mean, std = channel_stats(pixels.images)
    return pixels.images, pixels.labels, mean, std


def take_turns(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each contender's epoch seconds, one epoch a turn for `rounds` turns, in an order that rotates
    every round, so that the machine's drift over minutes falls on all of them alike rather than on
    whoever ran last."""
    seconds: dict[str, list[float]] = {key: [] for key in contenders}
    names = list(contenders)
    for turn in range(rounds):
        shift = turn % len(names)
        for key in names[shift:] + names[:shift]:
            seconds[key].append(contenders[key]())
    return seconds


def _deepstep_epoch(spec: str, mean, std, *, model_name: str, batch_size: int, precision: str) -> float:
    import deepstep

    out = runs_root / f"overhead-{model_name}-{batch_size}-{precision}-{time.time_ns()}"
    run = deepstep.train(
        data=spec,
        model=model_name,
        batch_size=batch_size,
        precision=precision,
        epochs=1,
        val_split=0.0,
        lr=0.01,
        optimizer="sgd",
        momentum=0.9,
        mean=mean,
        std=std,
        out=str(out),
        verbose=False,
    )
    return run.metrics[0]["seconds"]


def bench_overhead(quick: bool) -> dict:
    """Epochs of deepstep train against the hand-written floor loop (and Lightning, if installed),
    on the same decoded images: lenet on all of CIFAR-10 (the sample with --quick), resnet-cifar on
    the shipped sample (a resnet epoch at batch 4 on 50,000 images would take minutes per row).

    The contenders take turns, one epoch each (see take_turns), and each one's fastest epoch counts
    (as `timeit` takes the best run): on a shared 2-core machine an epoch's time varies by up to 20%."""
    from bench.floor import floor_epoch, lightning_epoch
    from deepstep.engine.precision import cpu_has_fast_bf16

    try:
        import lightning  # noqa: F401
    except ImportError:
        has_lightning = False
    else:
        has_lightning = True
    full_spec = "cifar10-sample" if quick else cifar_folder(quick)[0]
    # Best of 5 at batch 128, where an epoch takes seconds and the 1.10x bar is closer than the machine's
    # drift; best of 3 at batch 4, where one turn of three contenders already takes a minute.
    rounds_at = {128: 1, 4: 1} if quick else {128: 5, 4: 3}
    rows, skipped = [], []
    for model, spec in (("lenet", full_spec), ("resnet-cifar", "cifar10-sample")):
        images, labels, mean, std = _decoded(spec)
        data = (images, labels, mean, std)
        for batch_size in (128, 4):
            for precision in ("32", "bf16"):
                if precision == "bf16" and not cpu_has_fast_bf16():
                    skipped.append(f"{model} b{batch_size} bf16")
                    continue
                common = {"model_name": model, "batch_size": batch_size, "precision": precision}
                contenders = {
                    "floor": partial(floor_epoch, *data, **common),
                    "deepstep": partial(_deepstep_epoch, spec, mean, std, **common),
                }
                if has_lightning:
                    contenders["lightning"] = partial(lightning_epoch, *data, **common)
                seconds = take_turns(contenders, rounds_at[batch_size])
                floor_s, deepstep_s = min(seconds["floor"]), min(seconds["deepstep"])
                lightning_s = min(seconds["lightning"]) if has_lightning else None
                rows.append(
                    {
                        "model": model,
                        "images": len(labels),
                        "batch": batch_size,
                        "precision": precision,
                        "floor_s": floor_s,
                        "deepstep_s": deepstep_s,
                        "deepstep/floor": deepstep_s / floor_s,
                        # the same ratio from the middle epochs: one lucky epoch moves the best-of alone
                        "deepstep/floor median": statistics.median(seconds["deepstep"])
                        / statistics.median(seconds["floor"]),
                        "lightning_s": lightning_s,
                        "lightning/deepstep": lightning_s / deepstep_s if lightning_s else None,
                        "epochs_s": seconds,
                    }
                )
                print_table("overhead (so far)", {"rows": rows[-1:]})
    result = {
        "rows": rows,
        "note": f"best of {rounds_at[128]} (batch 128) and {rounds_at[4]} (batch 4) turn(s) of one epoch each, "
        "contenders alternating; lightning_s is empty when lightning is not installed (pip install -e '.[bench]')",
    }
    if skipped:  # emulated bf16 is 5-10x slower than fp32: nobody trains so, and --precision auto does not
        result["skipped"] = f"{', '.join(skipped)}: this CPU has no AMX/AVX-512-BF16"
    return result


INFERENCE_ROUNDS = 11


def bench_inference(quick: bool) -> dict:
    """Images/s of deepstep's predict path (checkpoint loading and kernel choice included, fp32, its
    default) on 1,000 image files against a bare loop that reads the same files with PIL and calls
    the model at batch 64, both under inference mode."""
    import numpy as np
    from PIL import Image

    import deepstep
    from deepstep.data.folders import find_images
    from deepstep.engine.run_dir import RunDir
    from deepstep.tasks.image_classification import load_trained, predict_run

    spec, folder = cifar_folder(quick)
    files = sorted(find_images(Path(folder) / "test"))[:1000]
    out = runs_root / f"inference-run-{int(time.time())}"
    run = deepstep.train(data=spec, model="lenet", epochs=1, out=str(out), verbose=False)
    trained = load_trained(RunDir.open(run.path))
    model, prep = trained.model, trained.prep
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    deepstep_s, bare_s = [], []
    # A pass takes a quarter of a second here, less than the machine's swings: 11 alternating rounds,
    # after one that puts the files in the page cache for both, and the medians compared.
    for _ in range(INFERENCE_ROUNDS + 1):
        start = time.perf_counter()
        predict_run(run.path, files, top_k=1, batch_size=64, log=lambda m: None)  # its own copy of the model
        deepstep_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(files), 64):
                batch = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[i : i + 64]])
                x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - mean) / std
                torch.softmax(model(x), dim=1)
        bare_s.append(time.perf_counter() - start)
    deepstep_median, bare_median = statistics.median(deepstep_s[1:]), statistics.median(bare_s[1:])
    rows = [
        {"contender": "bare: PIL + model call, batch 64", "images_per_s": len(files) / bare_median},
        {"contender": "deepstep predict path, batch 64", "images_per_s": len(files) / deepstep_median},
    ]
    return {
        "rows": rows,
        "deepstep/bare": bare_median / deepstep_median,
        "images": len(files),
        "seconds": {"deepstep": [round(t, 3) for t in deepstep_s[1:]], "bare": [round(t, 3) for t in bare_s[1:]]},
    }


PHOTO_SIZE = (500, 375)  # width, height: a small camera photo


def bench_photos(quick: bool) -> dict:
    """Images/s of deepstep's predict path on photo-size JPEGs (the sample's test images scaled to
    500x375, quality 90) with mobilenet_v3_small at 224x224, batch 64: decoding in threads, as
    predict chooses for such files, against decoding in one thread; medians of alternating rounds."""
    from PIL import Image

    import deepstep
    from deepstep.data.folders import find_images
    from deepstep.hardware import available_cores
    from deepstep.tasks import image_classification

    _, folder = cifar_folder(quick=True)  # the shipped sample: the photos are made from its images
    sources = sorted(find_images(Path(folder) / "test"))
    count = 64 if quick else 256
    sources = sources[:: max(1, len(sources) // count)][:count]  # every class
    photos = runs_root / "photos"
    files = []
    for i, source in enumerate(sources):
        for part in ("test", "train") if i % 4 == 0 else ("test",):  # a few to train the run on
            path = photos / part / source.parent.name / f"{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.open(source).convert("RGB").resize(PHOTO_SIZE, Image.Resampling.BICUBIC).save(path, quality=90)
            if part == "test":
                files.append(path)
    out = runs_root / f"photos-run-{int(time.time())}"
    options = {"model": "mobilenet_v3_small", "epochs": 1, "batch_size": 16, "val_split": 0.0}
    run = deepstep.train(data=str(photos), out=str(out), verbose=False, **options)

    def predict(threshold: float) -> float:
        image_classification.PARALLEL_DECODE_SECONDS = threshold
        start = time.perf_counter()
        image_classification.predict_run(run.path, files, top_k=1, batch_size=64, log=lambda m: None)
        return time.perf_counter() - start

    chosen = image_classification.PARALLEL_DECODE_SECONDS
    try:
        predict(chosen)  # puts the files in the page cache for both
        seconds = take_turns(
            {"threads": partial(predict, chosen), "one": partial(predict, math.inf)}, 3 if quick else 7
        )
    finally:
        image_classification.PARALLEL_DECODE_SECONDS = chosen
    threads, one = statistics.median(seconds["threads"]), statistics.median(seconds["one"])
    return {
        "rows": [
            {"contender": f"predict, decoding in {available_cores()} threads", "images_per_s": len(files) / threads},
            {"contender": "predict, decoding in one thread", "images_per_s": len(files) / one},
        ],
        "threads/one": one / threads,
        "photos": len(files),
        "seconds": {key: [round(t, 3) for t in value] for key, value in seconds.items()},
    }


SHARED_SERIES = ROOT.parent / "shared" / "data" / "timeseries"


def _bare_sequence_epoch(x: torch.Tensor, y: torch.Tensor, model_name: str, horizon: int) -> float:
    """Seconds of one epoch of the shortest loop over the windows: forward, MSE on the change from
    the last value (as deepstep's forecasting step), backward, Adam."""
    import torch.nn.functional as F

    from deepstep.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=horizon, input_features=x.shape[2])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    order = torch.randperm(len(x))
    for i in range(0, len(x), 256):
        index = order[i : i + 256]
        loss = F.mse_loss(model(x[index]) + x[index, -1:, 0], y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def _deepstep_sequence_epoch(options: dict, model_name: str) -> float:
    import deepstep

    out = runs_root / f"sequences-{model_name}-{time.time_ns()}"
    run = deepstep.train(
        **options, model=model_name, batch_size=256, epochs=1, val_size=0.1, out=str(out), verbose=False
    )
    return run.metrics[0]["seconds"]


def bench_sequences(quick: bool) -> dict:
    """Windows/s of an epoch of deepstep train (LSTM and GRU, hidden 64, batch 256, fp32) against a
    bare loop over the same windows, median of 5 epochs each taking turns (one with --quick):
    pollution.csv with all weather columns (the airline series with --quick)."""
    from deepstep.config import resolve_config
    from deepstep.data.series import origins, windows
    from deepstep.tasks.forecasting import prepare

    if quick:
        options = {
            "data": str(SHARED_SERIES / "airline-passengers.csv"),
            "target": "Passengers",
            "lookback": 24,
            "horizon": 12,
        }
    else:
        options = {
            "data": str(SHARED_SERIES / "pollution.csv"),
            "target": "pm2.5",
            "features": ["DEWP", "TEMP", "PRES", "cbwd", "Iws", "Is", "Ir"],
            "fill": "interpolate",
            "lookback": 24,
            "horizon": 1,
        }
    if not Path(options["data"]).is_file():
        raise Skip(f"{options['data']} is missing: this benchmark needs ../shared/data/timeseries")
    rounds = 1 if quick else 5
    rows = []
    for model_name in ("lstm", "gru"):
        config = resolve_config(
            {}, {**options, "model": model_name, "batch_size": 256, "epochs": 1}, task="forecasting"
        )
        data = prepare(config)
        starts = origins(0, data.spans.val_start, lookback=config.lookback, horizon=config.horizon, stride=1)
        x, y = (
            torch.from_numpy(a) for a in windows(data.scaled, starts, lookback=config.lookback, horizon=config.horizon)
        )
        contenders = {
            "bare": partial(_bare_sequence_epoch, x, y, model_name, config.horizon),
            "deepstep": partial(_deepstep_sequence_epoch, options, model_name),
        }
        contenders["bare"]()  # untimed: a process's first epoch pays a one-time set-up (7x slower with --quick)
        seconds = take_turns(contenders, rounds)
        bare_s, deepstep_s = statistics.median(seconds["bare"]), statistics.median(seconds["deepstep"])
        rows.append(
            {
                "model": model_name,
                "windows": len(x),
                "bare_windows_per_s": len(x) / bare_s,
                "deepstep_windows_per_s": len(x) / deepstep_s,
                "time deepstep/bare": deepstep_s / bare_s,  # under 1: deepstep is faster
                "epochs_s": seconds,
            }
        )
    return {"rows": rows, "note": f"median of {rounds} epoch(s) each, contenders alternating"}


TARGETS = (0.80, 0.85, 0.90, 0.92, 0.93, 0.94)


def bench_time_to_accuracy(quick: bool, recipe: str = "cifar-fast", **options) -> dict:
    """Seconds of training for `recipe` (default cifar-fast: resnet-cifar) to first reach 80, 85, 90,
    92, 93 and 94% validation accuracy, read from the run's own metrics.csv, and its test accuracy, measured
    once at the end (without TTA, then with flip and flip-translate TTA). `options` go to train as
    given (--val-split 0: all 50,000 training images, as airbench94 trains; no validation curve then).
    --quick: 5 epochs on the shipped sample."""
    import deepstep

    spec, _ = cifar_folder(quick)
    out = runs_root / f"time-to-accuracy-{int(time.time())}"
    options = {key: value for key, value in options.items() if value is not None}
    settings = ({"epochs": 5} if quick else {}) | options
    run = deepstep.train(data=spec, recipe=recipe, out=str(out), verbose=False, **settings)
    elapsed, reached = 0.0, {}
    for row in run.metrics:
        elapsed += row["seconds"]
        for target in TARGETS:
            if row.get("val_acc") is not None and row["val_acc"] >= target and f"{target:.0%}" not in reached:
                reached[f"{target:.0%}"] = {"seconds": round(elapsed, 1), "epoch": int(row["epoch"])}
    test = run.evaluate(verbose=False)["accuracy"]
    test_flip = run.evaluate(force=True, tta="flip", verbose=False)["accuracy"]
    test_translate = run.evaluate(force=True, tta="flip-translate", verbose=False)["accuracy"]
    rows = [{"val_accuracy": f"{t:.0%}", **reached.get(f"{t:.0%}", {"seconds": None, "epoch": None})} for t in TARGETS]
    return {
        "rows": rows,
        "recipe": recipe,
        "options": options,
        "device": run.info["device"]["type"],
        "precision": run.info["device"].get("precision"),
        "train_s": round(elapsed, 1),
        "epoch_s": [round(row["seconds"], 2) for row in run.metrics],
        "test_acc": test,
        "test_acc_flip_tta": test_flip,
        "test_acc_flip_translate_tta": test_translate,
        "data": spec,
    }


# (input channels, output channels, output side) of 3x3 convs: airbench's three late layers and
# resnet-cifar's 4x4 ones, then neighbours on each side of the rule in engine/backends.py
CONV_SHAPES = [(256, 256, 3), (256, 256, 7), (128, 128, 4), (64, 256, 7), (32, 32, 4), (256, 256, 8), (64, 64, 15)]


def bench_conv_weight_grad(quick: bool) -> dict:
    """Milliseconds of one bf16 weight gradient of a 3x3 conv (250 images, channels_last) by oneDNN's
    kernel and by deepstep's im2col + matmul (engine/backends.py), in alternating calls, with each
    one's largest error against the fp32 gradient as a fraction of its largest value, and what
    deepstep uses for that layer on this CPU. Needs no data; --quick: the first two shapes."""
    import torch.nn.functional as F

    from deepstep.engine import backends
    from deepstep.engine.precision import Precision

    torch.manual_seed(0)
    images, rounds = 250, 5 if quick else 15
    rows = []
    for c_in, c_out, side in CONV_SHAPES[:2] if quick else CONV_SHAPES:
        x = torch.randn(images, c_in, side, side).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(c_out, c_in, 3, 3) * (9 * c_in) ** -0.5
        weight = weight.contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(images, c_out, side, side).contiguous(memory_format=torch.channels_last)
        reference = torch.autograd.grad(F.conv2d(x, weight, padding=1), weight, grad)[0]
        x16, grad16 = x.bfloat16(), grad.bfloat16()
        weight16 = weight.detach().bfloat16().requires_grad_()
        outputs = {  # the forward passes, once; each round times the weight gradient alone
            "onednn": F.conv2d(x16, weight16, padding=1),
            "matmul": backends._MatmulWeightGrad.apply(x16, weight16, None, (1, 1), backends.Columns()),
        }
        seconds, grads = {k: [] for k in outputs}, {}
        for _ in range(rounds + 1):  # the first round warms up and is not counted
            for name, out in outputs.items():
                start = time.perf_counter()
                grads[name] = torch.autograd.grad(out, weight16, grad16, retain_graph=True)[0]
                seconds[name].append(time.perf_counter() - start)
        ms = {k: statistics.median(v[1:]) * 1e3 for k, v in seconds.items()}
        error = {k: float((g.float() - reference).abs().max() / reference.abs().max()) for k, g in grads.items()}
        # what deepstep train does with such a layer, asked of its own kernel choice and layer
        conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        backends.apply_kernels(conv, backends.choose_cpu_kernels(conv, images, Precision("bf16", "cpu", "")))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            uses_matmul = type(conv(x).grad_fn).__name__ == "_MatmulWeightGradBackward"
        rows.append(
            {
                "layer": f"{c_in}->{c_out}, {side}x{side} out",
                "onednn_ms": ms["onednn"],
                "matmul_ms": ms["matmul"],
                "onednn/matmul": ms["onednn"] / ms["matmul"],
                "error_onednn": error["onednn"],
                "error_matmul": error["matmul"],
                "deepstep_uses": "matmul" if uses_matmul else "oneDNN",
            }
        )
    return {"rows": rows, "images": images, "rounds": rounds}


def bench_hardware_limit(quick: bool) -> dict:
    """How near the machine's limit a training step runs: GFLOP/s of one step (forward, loss,
    backward, SGD step) of the Muon recipe's net (airbench, width 64, 250 images, the precision
    `--precision auto` picks here and deepstep's kernel choice for it) against a 2,048 x 2,048
    matrix product in the same precision, the fastest work this CPU does. Floating-point
    operations as torch.utils.flop_counter counts them (convolutions and matrix products).
    Needs no data."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from bench.floor import _setup
    from deepstep.engine.precision import resolve_precision

    rounds, images = (3 if quick else 10), 250
    auto = resolve_precision("auto", torch.device("cpu"))
    model, precision, kernels = _setup("airbench", images, auto.name, classes=10, seed=0)
    x = torch.randn(images, 3, 32, 32)
    x = x.contiguous(memory_format=torch.channels_last if kernels.channels_last else torch.contiguous_format)
    y = torch.randint(0, 10, (images,))
    with FlopCounterMode(display=False) as counter:  # in fp32: the same operations, whatever the precision
        F.cross_entropy(model(x), y).backward()
    step_flops = counter.get_total_flops()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    dtype = torch.bfloat16 if precision.name == "bf16" else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    step(), a @ b  # warm-up: kernel choice, allocations
    step_s, matmul_s = [], []
    for _ in range(rounds):  # alternating, so that the machine's drift falls on both alike
        for work, seconds in ((step, step_s), (lambda: a @ b, matmul_s)):
            start = time.perf_counter()
            work()
            seconds.append(time.perf_counter() - start)
    matmul_flops = 2 * 2048**3
    step_rate = step_flops / statistics.median(step_s) / 1e9
    matmul_rate = matmul_flops / statistics.median(matmul_s) / 1e9
    return {
        "rows": [
            {"work": f"airbench training step, {images} images", "gflop": step_flops / 1e9, "gflop_per_s": step_rate},
            {"work": "2048 x 2048 matrix product", "gflop": matmul_flops / 1e9, "gflop_per_s": matmul_rate},
        ],
        "precision": precision.name,
        "kernels": kernels.describe(),
        "step/matmul": step_rate / matmul_rate,
        "images_per_s": images / statistics.median(step_s),
        "rounds": rounds,
    }


BENCHMARKS: dict[str, Callable[[bool], dict]] = {
    "time_to_accuracy": bench_time_to_accuracy,
    "sequences": bench_sequences,
    "tutorial": bench_tutorial,
    "overhead": bench_overhead,
    "inference": bench_inference,
    "photos": bench_photos,
    "conv_weight_grad": bench_conv_weight_grad,
    "hardware_limit": bench_hardware_limit,
}


def print_table(name: str, result: dict) -> None:
    print(f"\n== {name}")
    rows = result.get("rows", [])
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], dict | list)))
        widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns))
        for r in rows:
            print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))
    for key, value in result.items():
        if key != "rows":
            print(f"{key}: {_fmt(value)}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run on the shipped sample")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    parser.add_argument(
        "--recipe", default="cifar-fast", help="the recipe time_to_accuracy trains (default cifar-fast)"
    )
    parser.add_argument(
        "--val-split", type=float, metavar="F", help="time_to_accuracy: train's --val-split (default the recipe's)"
    )
    parser.add_argument("--compile", action="store_true", help="time_to_accuracy: train with --compile")
    parser.add_argument("--epochs", type=int, metavar="N", help="time_to_accuracy: train's --epochs")
    parser.add_argument(
        "--model-arg",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="time_to_accuracy: train's --model-arg (e.g. width=128)",
    )
    parser.add_argument("--seed", type=int, help="time_to_accuracy: train's --seed")
    parser.add_argument(
        "--micro-batch", type=int, metavar="N", help="time_to_accuracy: train's --micro-batch (e.g. 256 on a CPU)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="seeds the tutorial comparison trains each side with (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--cifar",
        type=Path,
        metavar="ARCHIVE",
        help="the CIFAR-10 JPEG archive (default: ../shared/data/cifar10-jpeg.tar.gz beside the repository)",
    )
    parser.add_argument(
        "--keep-runs", action="store_true", help="keep the benchmarks' run folders (checkpoints, curves)"
    )
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be 1 or more, got {args.seeds}")
    global cifar_archive, runs_root
    cifar_archive = args.cifar or SHARED_CIFAR
    # deepstep's training sets this process-wide on a CPU; set from the start, every contender runs with it
    freed_memory_kept = keep_freed_memory()
    results = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "freed_memory_kept": freed_memory_kept,
        },
        "quick": args.quick,
        "benchmarks": {},
    }
    stamp = results["time"].replace(":", "")
    runs_root = RESULTS / f"{stamp}-runs"
    for name in args.only or BENCHMARKS:
        try:
            extra = {
                "time_to_accuracy": {
                    "recipe": args.recipe,
                    "val_split": args.val_split,
                    "compile": args.compile or None,
                    "seed": args.seed,
                    "epochs": args.epochs,
                    "micro_batch": args.micro_batch,
                    "model_args": dict(args.model_arg) if args.model_arg else None,
                },
                "tutorial": {"seeds": args.seeds or (1 if args.quick else 3)},
            }.get(name, {})
            result = BENCHMARKS[name](args.quick, **extra)
        except Skip as reason:
            print(f"\n== {name}: skipped: {reason}")
            result = {"skipped": str(reason)}
        else:
            print_table(name, result)
        results["benchmarks"][name] = result
    out = RESULTS / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")
    if args.keep_runs:
        print(f"run folders: {runs_root}")
    else:
        shutil.rmtree(runs_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
