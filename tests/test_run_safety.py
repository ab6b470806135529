"""A run folder is never lost or shared: one trainer at a time, a failed save keeps the last good
checkpoint, and nothing deepstep loads from a run folder is unpickled."""

import errno
import hashlib
import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import deepstep.engine.checkpoint as checkpoint_module
from conftest import train_lenet
from deepstep.cli import main


def test_a_second_trainer_of_a_locked_run_folder_is_refused(image_folder, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/busy") == 0
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Path("runs/busy/.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        assert main(["train", "--out", "runs/busy", "--resume", "--epochs", "2", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"deepstep train: error: runs/busy is being trained by process {holder.pid} (lock runs/busy/.lock); "
            "wait for it to finish or stop it, or use another --out"
        )
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over_and_released_at_the_end(image_folder, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/stale") == 0
    assert not Path("runs/stale/.lock").exists()  # released when training ended
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    Path("runs/stale/.lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    assert main(["train", "--out", "runs/stale", "--resume", "--epochs", "2", "--quiet"]) == 0
    assert f"took over a stale lock of process {gone.pid}" in capsys.readouterr().out
    assert not Path("runs/stale/.lock").exists()


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(image_folder, monkeypatch, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/full") == 0
    before = Path("runs/full/checkpoints/last.json").read_text()
    original = checkpoint_module._save_tensors

    def no_space(path, tensors):
        if ".state." in path.name:  # the weights file is written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, tensors)

    with monkeypatch.context() as scoped:
        scoped.setattr(checkpoint_module, "_save_tensors", no_space)
        assert main(["train", "--out", "runs/full", "--resume", "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("No space left on device; the previous one (epoch 1) is kept")
    assert Path("runs/full/checkpoints/last.json").read_text() == before
    folder = Path("runs/full/checkpoints")
    best, last = (json.loads((folder / f"{kind}.json").read_text()) for kind in ("best", "last"))
    named = {best["weights"]["file"], last["weights"]["file"], last["state_tensors"]["file"]}
    assert {p.name for p in folder.glob("*.safetensors")} == named  # no half-saved leftovers
    assert main(["train", "--out", "runs/full", "--resume", "--epochs", "2", "--quiet"]) == 0


def test_an_out_that_cannot_be_a_folder_and_a_full_disk_elsewhere_are_one_line_errors(
    image_folder, monkeypatch, capsys
):
    Path("taken").write_text("a file")
    assert train_lenet(image_folder, "--epochs", "1", out="taken") == 2
    assert (
        capsys.readouterr().err.strip()
        == "deepstep train: error: --out taken is a file, not a folder: choose another --out"
    )
    assert train_lenet(image_folder, "--epochs", "1", out="taken/run") == 2
    assert "--out taken/run: cannot make the run folder (Not a directory)" in capsys.readouterr().err

    import deepstep.plots

    def no_space(fig, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(deepstep.plots, "_save", no_space)
    assert train_lenet(image_folder, "--epochs", "1", out="runs/plots") == 1
    assert capsys.readouterr().err.strip() == "deepstep train: error: runs/plots/curves.png: No space left on device"
    assert Path("runs/plots/checkpoints/best.json").exists()  # the finished epoch's checkpoint is kept


def test_a_folder_of_other_files_is_not_made_a_run_folder(image_folder, capsys):
    photos = Path("photos")
    photos.mkdir()
    for name in ("grid.png", "holiday.jpg", "notes.txt", "z.csv"):  # grid.png: a name a run writes
        (photos / name).write_text(name)
    assert train_lenet(image_folder, "--epochs", "1", out="photos") == 2
    assert capsys.readouterr().err == (
        "deepstep train: error: --out photos holds other files (grid.png, holiday.jpg, notes.txt, ...): "
        "a run gets a folder of its own; choose a new or empty --out\n"
    )
    assert {p.name: p.read_text() for p in photos.iterdir()} == {
        n: n for n in ("grid.png", "holiday.jpg", "notes.txt", "z.csv")
    }
    Path("empty").mkdir()
    Path("empty/.DS_Store").write_text("")  # hidden files do not count
    assert train_lenet(image_folder, "--epochs", "1", out="empty") == 0


class _Exploit:
    def __reduce__(self):
        return (Path("pwned").write_text, ("the pickle ran",))


def test_a_pickle_disguised_as_a_checkpoint_never_runs(image_folder, capsys):
    assert train_lenet(image_folder, "--epochs", "1", out="runs/bait") == 0
    pointer = Path("runs/bait/checkpoints/best.json")
    record = json.loads(pointer.read_text())
    weights = Path("runs/bait/checkpoints", record["weights"]["file"])
    weights.write_bytes(pickle.dumps(_Exploit()))
    record["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # even with a matching checksum
    pointer.write_text(json.dumps(record))
    assert main(["evaluate", "runs/bait"]) == 2
    assert main(["predict", "runs/bait", str(next(Path(image_folder, "test").rglob("*.png")))]) == 2
    assert main(["export", "runs/bait", "--format", "onnx"]) == 2
    assert not Path("pwned").exists()
    assert "runs/bait/checkpoints" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_checkpoint_starts_again_in_the_same_folder(seasonal_csv, monkeypatch, capsys):
    import deepstep.engine.fit as fit_module

    def interrupted(*args, **kwargs):  # Ctrl-C during the first epoch
        raise KeyboardInterrupt

    train = ["train", "--data", str(seasonal_csv), "--target", "Sales", "--lookback", "12", "--horizon", "3"]
    args = [*train, "--test-size", "12", "--epochs", "2", "--hidden", "4", "--out", "runs/f"]
    with monkeypatch.context() as patch:
        patch.setattr(fit_module, "fit", interrupted)
        assert main(args) == 130
    assert Path("runs/f/run.json").is_file() and not Path("runs/f/checkpoints/last.json").exists()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "runs/f has no checkpoint to resume: its run stopped before its first one" in capsys.readouterr().err
    assert main(args) == 0  # nothing finished was there to lose
    assert "runs/f: its earlier run stopped before its first checkpoint; starting it again" in capsys.readouterr().out
    assert Path("runs/f/checkpoints/last.json").is_file()
    assert main(args) == 2  # now it holds a checkpoint, and is kept
    assert "already holds a run" in capsys.readouterr().err
