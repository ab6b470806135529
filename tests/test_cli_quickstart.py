from pathlib import Path

from PIL import Image

from deepstep.cli import main


def test_quickstart_trains_tests_once_predicts_and_names_every_picture_it_drew(capsys):
    assert main(["quickstart", "--epochs", "1", "--out", "runs/q", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "== 2/4 test, once" in out and "test accuracy " in out
    listed = {}
    for line in out.split("== 4/4 plots\n")[1].splitlines()[:-1]:
        label, path = line.strip().rsplit(" ", 1)
        listed[label.strip()] = Path(path)
    assert set(listed) >= {"training curves", "confusion matrix", "prediction", "where it looked", "feature maps"}
    for label, path in listed.items():
        if label != "surest mistakes" or path.suffix == ".png":
            assert path.parent == Path("runs/q") and Image.open(path).size[0] >= 250, label
    assert Path("runs/q/test.json").is_file() and out.splitlines()[-1].startswith("run folder: runs/q ")
