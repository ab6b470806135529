import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_pretrained_weights
from deepstep.cli import main

GOLDEN_RETRIEVER = 207  # an ImageNet class index


def _photo(path: Path, size=(300, 200)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_the_pretrained_list_holds_the_classic_models_with_their_numbers(capsys):
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"vgg16", "resnet18", "alexnet", "mobilenet_v3_small"} <= set(rows)
    assert rows["vgg16"]["parameters"] == 138_357_544
    assert rows["vgg16"]["input_size"] == [3, 224, 224]
    assert rows["vgg16"]["file"].endswith("hub/checkpoints/vgg16-397923af.pth")


def test_the_weights_own_preprocessing_is_used():
    from deepstep.models.pretrained import get_pretrained_spec

    prep = get_pretrained_spec("vgg16").preprocessing
    assert prep["resize"] == 256 and prep["crop"] == (224, 224)
    assert prep["mean"] == pytest.approx([0.485, 0.456, 0.406]) and prep["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_the_cost_torchvision_states_is_in_multiply_adds_as_deepstep_counts_them():
    import torchvision

    from deepstep.models.pretrained import get_pretrained_spec
    from deepstep.models.shapes import multiply_adds, trace_shapes

    layers = trace_shapes(torchvision.models.resnet18(), (3, 224, 224))
    counted = sum(multiply_adds(layer.module, layer.input_shape, layer.output_shape) for layer in layers)
    assert get_pretrained_spec("resnet18").multiply_adds == pytest.approx(counted, rel=0.01)  # 1.81 G


def test_vgg16_predicts_imagenet_label_names_from_a_weights_file(tmp_path, capsys):
    def favour_golden_retriever(state):
        state["classifier.6.bias"][GOLDEN_RETRIEVER] = 1000.0

    write_pretrained_weights("vgg16", favour_golden_retriever)
    photo = _photo(tmp_path / "dog.jpg")
    plot = tmp_path / "dog.png"
    assert (
        main(["predict", "--model", "vgg16", "--pretrained", str(photo), "--top-k", "3", "--json", "--plot", str(plot)])
        == 0
    )
    [result] = json.loads(capsys.readouterr().out)
    assert result["label"] == "golden retriever"
    assert [t["label"] for t in result["top_k"]][0] == "golden retriever" and len(result["top_k"]) == 3
    assert plot.stat().st_size > 0


def test_pretrained_probabilities_sum_to_one_over_the_1000_classes(tmp_path):
    import deepstep

    write_pretrained_weights("mobilenet_v3_small")
    model = deepstep.pretrained("mobilenet_v3_small")
    assert len(model.categories) == 1000 and model.categories[GOLDEN_RETRIEVER] == "golden retriever"
    [result] = model.predict(_photo(tmp_path / "a.png", (64, 500)), top_k=1000)
    assert sum(t["probability"] for t in result["top_k"]) == pytest.approx(1.0, abs=1e-4)
    assert len({t["label"] for t in result["top_k"]}) == 1000
    [again] = model.predict(tmp_path / "a.png", top_k=1, out=tmp_path / "p.csv")  # a column per ImageNet class
    header, row = (line.split(",") for line in (tmp_path / "p.csv").read_text().splitlines())
    assert header[:3] == ["file", "label", "probability"] and len(header) == len(row) == 1003
    assert sum(map(float, row[3:])) == pytest.approx(1.0, abs=1e-3) and row[1] == again["label"]
    assert float(row[2]) == float(row[3 + model.categories.index(row[1])])  # the class said, and its column


def test_missing_weights_offline_name_the_file_and_folder(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["predict", "--model", "vgg16", "--pretrained", str(_photo(tmp_path / "x.jpg"))]) == 2
    err = capsys.readouterr().err.strip()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert f"are not in {folder / 'vgg16-397923af.pth'}" in err
    assert f"put vgg16-397923af.pth from https://download.pytorch.org/models/vgg16-397923af.pth into {folder}" in err
    assert len(err.splitlines()) == 1


def test_a_download_keeps_json_on_stdout_clean_and_says_where_the_weights_went(tmp_path, monkeypatch, capsys):
    made = write_pretrained_weights("mobilenet_v3_small")
    weights = made.read_bytes()
    made.unlink()
    fetched = []

    def download(url, dst, *args, **kwargs):  # the network, answering with the file
        fetched.append(url)
        Path(dst).write_bytes(weights)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    photo = str(_photo(tmp_path / "x.jpg"))
    assert main(["predict", "--model", "mobilenet_v3_small", "--pretrained", photo, "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 1  # nothing but the JSON, whatever torch.hub prints while it downloads
    assert fetched == ["https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"]
    assert f"downloaded the ImageNet weights of mobilenet_v3_small to {made}" in err
    assert made.read_bytes() == weights
    assert main(["predict", "--model", "mobilenet_v3_small", "--pretrained", photo, "--json"]) == 0
    assert len(fetched) == 1 and "downloaded" not in capsys.readouterr().err  # the second time from the cache


def test_a_download_that_fails_its_hash_check_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    from torch.hub import download_url_to_file

    source = tmp_path / "served.pth"
    source.write_bytes(b"not the weights")

    def download(url, dst, hash_prefix=None, progress=True):  # the real download and hash check, from a local file
        download_url_to_file(source.as_uri(), dst, hash_prefix=hash_prefix, progress=False)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert main(["predict", "--model", "vgg16", "--pretrained", str(_photo(tmp_path / "x.jpg"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "deepstep predict: error: the download of https://download.pytorch.org/models/vgg16-397923af.pth"
    )
    assert "invalid hash value" in err and err.endswith("run the command again") and len(err.splitlines()) == 1
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth").exists()


def test_a_weights_cache_that_cannot_be_written_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "file" / "torch"))
    assert main(["predict", "--model", "vgg16", "--pretrained", str(_photo(tmp_path / "x.jpg"))]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot save the ImageNet weights of vgg16 to {tmp_path / 'file' / 'torch' / 'hub'}" in err
    assert err.endswith("point TORCH_HOME at a folder you can write to") and len(err.splitlines()) == 1


def test_a_wrong_image_path_is_said_before_any_weights_are_fetched(tmp_path, monkeypatch, capsys):
    def fetch(*args, **kwargs):
        raise AssertionError("the weights were fetched for an image that does not exist")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fetch)
    assert main(["predict", "--model", "vgg16", "--pretrained", str(tmp_path / "nothere.jpg")]) == 2
    assert capsys.readouterr().err.strip() == f"deepstep predict: error: {tmp_path / 'nothere.jpg'} does not exist"


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {Path.cwd() / 'pwned'}",))


def test_a_malicious_pickle_in_the_weights_cache_never_runs(tmp_path, capsys):
    import deepstep.models.pretrained as pretrained

    path = pretrained.get_pretrained_spec("mobilenet_v3_small").file
    path.parent.mkdir(parents=True)
    torch.save({"features.0.0.weight": _Exploit()}, path)
    assert main(["predict", "--model", "mobilenet_v3_small", "--pretrained", str(_photo(tmp_path / "x.png"))]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert not (Path.cwd() / "pwned").exists()


def test_predict_needs_model_and_pretrained_together(tmp_path, capsys):
    assert main(["predict", "--model", "vgg16", str(_photo(tmp_path / "x.png"))]) == 2
    assert "--model and --pretrained go together" in capsys.readouterr().err


def test_an_unknown_pretrained_model_suggests_close_names(tmp_path, capsys):
    assert main(["predict", "--model", "vgg61", "--pretrained", str(_photo(tmp_path / "x.png"))]) == 2
    err = capsys.readouterr().err
    assert "no ImageNet weights for model 'vgg61' (did you mean" in err and "'vgg16'" in err


def test_pretrained_prediction_in_bf16_names_its_precision_and_keeps_the_answer(tmp_path, capsys):
    import deepstep
    from deepstep.engine.precision import cpu_has_fast_bf16

    def lean_to_golden_retriever(state):
        state["classifier.3.bias"][GOLDEN_RETRIEVER] = 8.0  # a clear favourite, not a certainty

    write_pretrained_weights("mobilenet_v3_small", lean_to_golden_retriever)
    photos = [_photo(tmp_path / f"{i}.png", (120 + 40 * i, 90)) for i in range(3)]
    model = deepstep.pretrained("mobilenet_v3_small")
    fp32 = model.predict(photos, top_k=3, verbose=False)
    bf16 = model.predict(photos, top_k=3, precision="bf16", verbose=False)
    for a, b in zip(fp32, bf16, strict=True):
        assert a["label"] == b["label"] == "golden retriever" and 0.05 < a["top_k"][0]["probability"] < 0.95
        assert b["top_k"][0]["probability"] == pytest.approx(a["top_k"][0]["probability"], abs=0.02)
    args = ["predict", "--model", "mobilenet_v3_small", "--pretrained", *map(str, photos), "--precision", "auto"]
    args += ["--device", "cpu"]  # the line below is the CPU's; auto would pick a GPU where there is one
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    if cpu_has_fast_bf16():  # 16 images x 56 M multiply-adds a call: enough work for bf16 to pay
        assert lines[0] == "precision bf16 (auto: bf16 autocast, this CPU has AMX/AVX-512-BF16)" and len(lines) == 4
    else:
        assert len(lines) == 3


def test_gradcam_of_a_pretrained_model_weighs_its_last_feature_maps_for_the_class_predicted(
    tmp_path, capsys, monkeypatch
):
    import deepstep.models.gradcam as gradcam

    def favour_golden_retriever(state):
        state["classifier.3.bias"][GOLDEN_RETRIEVER] = 1000.0

    write_pretrained_weights("mobilenet_v3_small", favour_golden_retriever)
    calls = []
    real = gradcam.grad_cam

    def grad_cam(model, x, targets, layer):
        calls.append((targets.tolist(), real(model, x, targets, layer)))
        return calls[-1][1]

    monkeypatch.setattr(gradcam, "grad_cam", grad_cam)
    out = tmp_path / "cam.png"
    photo = str(_photo(tmp_path / "dog.jpg"))
    assert main(["predict", "--model", "mobilenet_v3_small", "--pretrained", photo, "--gradcam", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"grad-cam: {out}" and out.stat().st_size > 10_000
    [(targets, found)] = calls
    assert targets == [GOLDEN_RETRIEVER] and (found.layer, found.layer_shape) == ("features", (576, 7, 7))
