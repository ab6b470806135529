"""deepstep export: a trained run's model (images or sequences) as ONNX or TorchScript, checked
against PyTorch after export, with its input, output and pre-processing written beside it (FILE.json)."""

from __future__ import annotations

import argparse

from deepstep.cli.common import add_model_file, formatter, print_json

EXAMPLES = """\
examples:
  deepstep export runs/lenet-cifar10-sample                        # -> RUN/export/model.onnx
  deepstep export runs/lenet-cifar10-sample --out lenet.pt                # TorchScript, as the name says
  deepstep export runs/lstm-airline-passengers      # raw values in, the forecast in the data's units out

ONNX needs onnx and onnxruntime: pip install 'deepstep[export]'.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run's model to ONNX or TorchScript",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run folder written by `deepstep train`")
    parser.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        help="default: torchscript for an --out ending in .pt or .pth, else onnx",
    )
    parser.add_argument("--out", metavar="FILE", help="default RUN/export/model.onnx (or model.pt)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--json", action="store_true", help="print the export record as JSON")
    add_model_file(parser, "a run of your own model")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.export import export_run

    record = export_run(args.run_dir, args.format, args.out, args.checkpoint)
    if args.json:
        print_json(record)
    else:
        check = record["check"]
        print(f"{record['format']}: {record['path']}")
        print(f"checked on a batch of {check['batch']}: max abs difference from PyTorch {check['max_abs_diff']:.2e}")
        print(f"input, output and pre-processing: {record['path']}.json")
    return 0
