"""Exact resume: a run stopped inside an epoch and resumed ends with the very same weights and
metrics as one that never stopped (fp32, CPU)."""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import deepstep.engine.fit as fit_module
from deepstep.cli import main


def _final(run: str) -> tuple[dict, str]:
    record = json.loads(Path(run, "checkpoints", "last.json").read_text())
    return load_file(str(Path(run, "checkpoints", record["weights"]["file"]))), Path(run, "metrics.csv").read_text()


def _assert_same_run(a: str, b: str) -> None:
    weights_a, metrics_a = _final(a)
    weights_b, metrics_b = _final(b)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    columns = metrics_a.splitlines()[0].split(",")
    kept = [i for i, c in enumerate(columns) if "seconds" not in c and "per_s" not in c]  # timings differ
    rows_a = [[r.split(",")[i] for i in kept] for r in metrics_a.splitlines()]
    rows_b = [[r.split(",")[i] for i in kept] for r in metrics_b.splitlines()]
    assert rows_a == rows_b


def _stop_after_checkpoint(monkeypatch, nth: int) -> None:
    """Make the run stop (as if killed) right after its nth mid-epoch checkpoint is written;
    `monkeypatch` is a scoped context, so the stop ends with it."""
    original, seen = fit_module._save_last, []

    def save_then_stop(training, state, run, meta):
        original(training, state, run, meta)
        if state.step:
            seen.append(state.step)
            if len(seen) == nth:
                raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_save_last", save_then_stop)


@pytest.mark.parametrize(
    ("precision", "extra"),
    [
        ("32", []),
        ("bf16", []),
        ("32", ["--alternate-flip"]),
        ("32", ["--lookahead"]),
        ("32", ["--ema", "0.9"]),
        ("32", ["--mixup", "0.4", "--cutmix", "1"]),
        ("32", ["--cutout", "8"]),
        ("32", ["--optimizer", "muon"]),
        ("32", ["--model", "airbench", "--model-arg", "width=4", "--model-arg", "whiten_bias=norm"]),
    ],
)
def test_an_image_run_stopped_mid_epoch_resumes_to_identical_weights(image_folder, monkeypatch, precision, extra):
    # bf16 autocast on the CPU is as deterministic as fp32: the same kernels on the same inputs.
    # The alternating flip mirrors by the epoch's number: the resumed epoch 2 must know it is the second.
    # Lookahead's slow copy exists from step 10 of 21 on, before the stop at step 11: it must be saved.
    # --ema saves the average as the weights and the trained weights in the state: both must come back.
    # Mixing draws from a generator of its own, saved beside the batches' one.
    # Muon keeps a momentum buffer per filter bank, in its own optimizer class.
    # airbench's whitening bias (whiten_bias=norm) has a schedule of its own, falling to 0 by epoch 3.
    args = ["train", "--data", str(image_folder), "--epochs", "3", "--batch-size", "8", "--augment", *extra]
    args += ["--precision", precision, "--checkpoint-every", "2", "--quiet"]
    assert main([*args, "--out", "runs/whole"]) == 0
    with monkeypatch.context() as scoped:
        _stop_after_checkpoint(scoped, nth=5)  # epoch 2, inside it
        assert main([*args, "--out", "runs/stopped"]) == 130
    state = json.loads(Path("runs/stopped/checkpoints/last.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 4
    assert main(["train", "--out", "runs/stopped", "--resume", "--quiet"]) == 0
    _assert_same_run("runs/whole", "runs/stopped")


def test_a_forecast_with_dropout_stopped_mid_epoch_resumes_to_identical_weights(seasonal_csv, monkeypatch):
    args = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--lookback", "6", "--epochs", "3"]
    args += [
        "--layers",
        "2",
        "--dropout",
        "0.3",
        "--hidden",
        "8",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "3",
        "--quiet",
        "--device",  # cuDNN's LSTM dropout draws from a generator of its own, which no checkpoint holds
        "cpu",
    ]
    assert main([*args, "--out", "runs/whole"]) == 0
    with monkeypatch.context() as scoped:
        _stop_after_checkpoint(scoped, nth=4)
        assert main([*args, "--out", "runs/stopped"]) == 130
    assert main(["train", "--out", "runs/stopped", "--resume", "--quiet"]) == 0
    _assert_same_run("runs/whole", "runs/stopped")


def test_a_checkpoint_whose_optimizer_groups_differ_from_this_versions_is_refused_in_one_line(
    image_folder, monkeypatch, capsys
):
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--batch-size", "8", "--quiet"]
    assert main([*args, "--out", "runs/groups"]) == 0
    kept = Path("runs/groups/checkpoints/last.json").read_text()
    # as a later version would: the same settings, one more parameter group (each Linear's bias)
    monkeypatch.setattr(torch.nn.Linear, "optimizer_hints", lambda self: [{"params": [self.bias]}], raising=False)
    capsys.readouterr()
    assert main(["train", "--out", "runs/groups", "--resume", "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"deepstep train: error: .*runs/groups: its last checkpoint's optimizer has \d+ parameter groups .*", err
    ), err
    assert Path("runs/groups/checkpoints/last.json").read_text() == kept


def test_a_nan_loss_inside_an_epoch_keeps_the_last_good_checkpoint(image_folder, capsys):
    args = ["train", "--data", str(image_folder), "--epochs", "2", "--batch-size", "8", "--lr", "1e30"]
    assert main([*args, "--checkpoint-every", "1", "--momentum", "0", "--quiet", "--out", "runs/nan"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"epoch 1: the training loss became (nan|inf) by step \d+ of this epoch", err), err
    record = json.loads(Path("runs/nan/checkpoints/last.json").read_text())
    weights = load_file(str(Path("runs/nan/checkpoints", record["weights"]["file"])))
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_run_killed_with_sigkill_at_a_random_step_resumes_to_identical_weights(image_folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    deepstep = [sys.executable, "-m", "deepstep"]
    args = ["train", "--data", str(image_folder), "--epochs", "12", "--batch-size", "4", "--augment"]
    args += ["--precision", "32", "--checkpoint-every", "3", "--quiet"]
    subprocess.run([*deepstep, *args, "--out", "runs/whole"], env=env, check=True, capture_output=True, timeout=300)

    # Kill once the run is some random number of mid-epoch checkpoints in: the kill itself lands
    # wherever the process is then, mid-step or mid-write included.
    rng = random.Random(os.environ.get("DEEPSTEP_KILL_SEED", time.time_ns()))
    target = rng.randint(3, 40)
    victim = subprocess.Popen(
        [*deepstep, *args, "--out", "runs/killed"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pointer, seen, last = Path("runs/killed/checkpoints/last.json"), 0, None
    deadline = time.time() + 300
    while victim.poll() is None and time.time() < deadline:
        try:
            text = pointer.read_text()
        except OSError:
            text = None
        if text and text != last:
            last, seen = text, seen + 1
            if seen >= target:
                victim.send_signal(signal.SIGKILL)
                break
        time.sleep(0.002)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"the run ended before the kill (target {target} checkpoints)"
    subprocess.run(
        [*deepstep, "train", "--out", "runs/killed", "--resume", "--quiet"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    _assert_same_run("runs/whole", "runs/killed")


def test_cudnn_lstm_dropout_which_no_seed_or_checkpoint_holds_gets_a_note_on_cuda_alone():
    from torch import nn

    from deepstep.engine.fit import unrepeatable_note

    stacked = nn.Sequential(nn.LSTM(1, 4, num_layers=2, dropout=0.3), nn.GRU(4, 4, num_layers=2, dropout=0.1))
    note = unrepeatable_note(stacked, torch.device("cuda"))  # only reads the device's type: no GPU needed
    assert note.startswith("note: on CUDA, cuDNN's GRU/LSTM dropout keeps a random state of its own")
    assert unrepeatable_note(stacked, torch.device("cpu")) is None  # the CPU draws from torch's generator
    # dropout applies between stacked layers only: one layer, or none, leaves nothing unseeded
    assert unrepeatable_note(nn.LSTM(1, 4, num_layers=1, dropout=0.3), torch.device("cuda")) is None
    assert unrepeatable_note(nn.LSTM(1, 4, num_layers=2), torch.device("cuda")) is None


def test_a_resumed_optimizer_keeps_its_state_in_the_layout_of_its_parameters():
    # a checkpoint stores tensors contiguous; a channels_last weight's momentum is put back as the weight is
    from deepstep.engine.fit import _laid_out_as_parameters

    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    momentum = torch.randn(conv.weight.shape)
    optimizer.state[conv.weight]["momentum_buffer"] = momentum.clone()
    optimizer.state[conv.bias]["momentum_buffer"] = torch.ones(8)
    _laid_out_as_parameters(optimizer)
    kept = optimizer.state[conv.weight]["momentum_buffer"]
    assert kept.stride() == conv.weight.stride() != momentum.stride() and torch.equal(kept, momentum)
    assert torch.equal(optimizer.state[conv.bias]["momentum_buffer"], torch.ones(8))


def test_a_plateau_schedule_resumes_at_its_lowered_rate(image_folder):
    # the lowered scale lives outside the optimizer's state: `last` must hold it, or the resumed
    # epochs would go back to the full rate
    args = ["train", "--data", str(image_folder), "--batch-size", "8", "--lr", "0.05", "--precision", "32"]
    args += ["--schedule", "plateau", "--plateau-patience", "1", "--plateau-factor", "0.5", "--quiet"]
    assert main([*args, "--epochs", "6", "--out", "runs/whole"]) == 0
    assert main([*args, "--epochs", "3", "--out", "runs/stopped"]) == 0
    assert main(["train", "--out", "runs/stopped", "--resume", "--epochs", "6", "--quiet"]) == 0
    _assert_same_run("runs/whole", "runs/stopped")
    with open("runs/whole/metrics.csv") as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f)]
    assert rates[0] == 0.05 and rates[3] < 0.05  # lowered by epoch 3, so the resumed run had to know it
