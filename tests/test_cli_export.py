import json

import numpy as np
import onnxruntime
import torch

from deepstep.cli import main


def test_onnx_export_matches_pytorch_and_records_what_a_consumer_needs(trained_run, capsys):
    assert main(["export", str(trained_run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["check"]["max_abs_diff"] < 1e-4
    path = trained_run / "export" / "model.onnx"
    assert record["path"] == str(path)
    side = json.loads((trained_run / "export" / "model.onnx.json").read_text())
    assert side["classes"] == ["circle", "square", "stripes"]
    assert side["preprocessing"]["crop"] == [32, 32] and len(side["preprocessing"]["mean"]) == 3
    # the file works alone: any batch size, outputs as PyTorch's
    from deepstep.api import load_run
    from deepstep.engine.run_dir import RunDir
    from deepstep.tasks.image_classification import load_trained

    model = load_trained(RunDir.open(load_run(trained_run).path)).model
    x = torch.randn(5, 3, 32, 32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [got] = session.run(None, {"input": x.numpy()})
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_torchscript_export_to_a_chosen_file(trained_run, tmp_path, capsys):
    out = tmp_path / "lenet.pt"
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(out)]) == 0
    assert "max abs difference from PyTorch" in capsys.readouterr().out
    loaded = torch.jit.load(str(out))
    assert loaded(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert json.loads((tmp_path / "lenet.pt.json").read_text())["format"] == "torchscript"


def test_export_of_a_missing_run_is_one_line(capsys):
    assert main(["export", "no-such-run"]) == 2
    assert "run folder no-such-run does not exist" in capsys.readouterr().err
