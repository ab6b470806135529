"""deepstep quickstart: the whole workflow offline on the CIFAR-10 sample shipped with deepstep.

Trains the LeNet-style tutorial net (train + validate every epoch), evaluates it once on the
sample's test part, predicts one test image and shows where the net looked in it (Grad-CAM) and
what each layer made of it (feature maps), draws an image grid, and prints where it all is.
"""

from __future__ import annotations

import argparse

from deepstep.cli.common import formatter, progress_enabled

RECIPE = {
    "data": "cifar10-sample",
    "model": "lenet",
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.02,
    "momentum": 0.9,
    "schedule": "cosine",
    "augment": True,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="the whole workflow offline on the shipped CIFAR-10 sample (about a minute)",
        description=__doc__,
        epilog="""examples:
  deepstep quickstart                       # 20 epochs, about 30 seconds on 2 CPU cores
  deepstep quickstart --epochs 5 --out runs/first-look
""",
        formatter_class=formatter,
    )
    parser.add_argument("--epochs", type=int, default=20, help="default 20")
    parser.add_argument("--out", metavar="DIR", help="run folder (default runs/lenet-cifar10-sample[-N])")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.config import resolve_config
    from deepstep.data.sources import data_cache_dir, open_image_source
    from deepstep.tasks.image_classification import (
        draw_feature_maps,
        evaluate_run,
        predict_run,
        show_images,
        train,
    )

    progress = progress_enabled(args)
    config = resolve_config({}, {**RECIPE, "epochs": args.epochs, "out": args.out})
    print("== 1/4 train + validate: LeNet on cifar10-sample (4,050 train / 450 val images)")
    run_path = train(config, progress=progress)

    print("\n== 2/4 test, once: the sample's 1,000 test images, never seen in training")
    result = evaluate_run(run_path, "test", progress=progress)
    print(f"test accuracy {result['accuracy']:.2%} (chance is 10%), loss {result['loss']:.4f}")

    print("\n== 3/4 predict one test image")
    test_files = open_image_source("cifar10-sample", data_cache_dir()).splits["test"].files
    image = test_files[len(test_files) // 2]
    prediction = predict_run(
        run_path, [image], top_k=5, plot=run_path / "prediction.png", gradcam=run_path / "gradcam.png"
    )[0]
    ranked = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in prediction["top_k"])
    print(f"{image.parent.name}/{image.name}: predicted {prediction['label']} ({ranked})")

    print("\n== 4/4 plots")
    grid = show_images("cifar10-sample", split="train", n=32, out=run_path / "grid.png")
    maps = draw_feature_maps(run_path, image, run_path / "feature-maps.png")
    for label, path in (
        ("training curves", run_path / "curves.png"),
        ("confusion matrix", result["files"]["confusion_png"]),
        ("surest mistakes", result["files"].get("mistakes_png", "none: every test image right")),
        ("prediction", run_path / "prediction.png"),
        ("where it looked", run_path / "gradcam.png"),
        ("feature maps", maps),
        ("image grid", grid),
    ):
        print(f"  {label:<17} {path}")
    print(f"run folder: {run_path} (config.yaml, run.json, metrics.csv, checkpoints/, test.json)")
    return 0
