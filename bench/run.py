"""deepstep's benchmark suite: one command, a table on screen and a JSON file.

    python -m bench.run            # full: all of CIFAR-10 from ../shared/data (minutes)
    python -m bench.run --quick    # smoke run on the shipped cifar10-sample (under 5 minutes)
    python -m bench.run --only tutorial

Each benchmark runs its contenders on the same data in the same process session, so that
their ratio is what to read: absolute times on a shared machine drift by +-30%.
Results go to bench/results/<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


class Skip(Exception):
    """A benchmark that cannot run here, with the reason."""


def cifar_folder(quick: bool) -> tuple[str, Path]:
    """(--data value, unpacked ImageFolder path): the sample when quick, else all of CIFAR-10."""
    from deepstep.data.sources import default_data_dir, open_image_source

    if quick:
        spec = "cifar10-sample"
    else:
        if not SHARED_CIFAR.is_file():
            raise Skip(f"{SHARED_CIFAR} is missing: the full benchmarks need ../shared/data (or use --quick)")
        spec = str(SHARED_CIFAR)
    source = open_image_source(spec, default_data_dir())
    return spec, source.root


def bench_tutorial(quick: bool) -> dict:
    """The PyTorch CIFAR-10 tutorial loop against `deepstep train --recipe tutorial`."""
    import deepstep
    from bench.tutorial_loop import run as tutorial_loop

    spec, folder = cifar_folder(quick)
    out = ROOT / "bench" / "results" / f"tutorial-run-{int(time.time())}"
    start = time.perf_counter()
    run = deepstep.train(data=spec, recipe="tutorial", out=str(out), verbose=False)
    deepstep_wall = time.perf_counter() - start
    deepstep_seconds = run.info["result"]["train_seconds"]
    deepstep_acc = run.evaluate(verbose=False)["accuracy"]
    tutorial = tutorial_loop(str(folder))
    return {
        "rows": [
            {
                "contender": "tutorial loop (ImageFolder + DataLoader, batch 4)",
                "train_s": tutorial["train_seconds"],
                "test_acc": tutorial["test_accuracy"],
            },
            {
                "contender": "deepstep train --recipe tutorial",
                "train_s": deepstep_seconds,
                "test_acc": deepstep_acc,
                "wall_s_with_decode": deepstep_wall,
            },
        ],
        "speedup": tutorial["train_seconds"] / deepstep_seconds,
        "accuracy_gap_points": 100 * (deepstep_acc - tutorial["test_accuracy"]),
        "data": spec,
    }


BENCHMARKS: dict[str, Callable[[bool], dict]] = {"tutorial": bench_tutorial}


def print_table(name: str, result: dict) -> None:
    print(f"\n== {name}")
    rows = result.get("rows", [])
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run on the shipped sample")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    args = parser.parse_args(argv)
    results = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "quick": args.quick,
        "benchmarks": {},
    }
    for name in args.only or BENCHMARKS:
        try:
            result = BENCHMARKS[name](args.quick)
        except Skip as reason:
            print(f"\n== {name}: skipped: {reason}")
            result = {"skipped": str(reason)}
        else:
            print_table(name, result)
        results["benchmarks"][name] = result
    out = ROOT / "bench" / "results" / f"{results['time'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
