import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepstep.cli import main


def test_predict_gives_the_label_and_sorted_probabilities(trained_run, image_folder, capsys):
    image = image_folder / "test" / "square" / "000.png"
    assert main(["predict", str(trained_run), str(image), "--top-k", "3", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    probs = [t["probability"] for t in result["top_k"]]
    assert result["file"] == str(image) and result["label"] == result["top_k"][0]["label"]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5  # 3 of 3 classes
    assert {t["label"] for t in result["top_k"]} == {"circle", "square", "stripes"}


def test_predict_matches_evaluate_on_the_test_images(trained_run, image_folder, capsys):
    assert main(["predict", str(trained_run), str(image_folder / "test"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    correct = sum(r["label"] in r["file"].split("/")[-2] for r in results)
    assert main(["evaluate", str(trained_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == correct / len(results) and len(results) == 18


def test_out_writes_each_image_s_class_and_every_class_s_probability_as_csv(
    trained_run, image_folder, tmp_path, capsys
):
    import csv

    out = tmp_path / "predictions.csv"
    argv = ["predict", str(trained_run), str(image_folder / "test"), "--top-k", "1", "--out", str(out), "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "label", "probability", "circle", "square", "stripes"]
    assert [(r["file"], r["label"]) for r in rows] == [(r["file"], r["label"]) for r in results] and len(rows) == 18
    for row, result in zip(rows, results, strict=True):
        chances = {c: float(row[c]) for c in ("circle", "square", "stripes")}
        assert abs(sum(chances.values()) - 1) < 1e-4 and max(chances, key=chances.get) == row["label"]
        assert float(row["probability"]) == chances[row["label"]]
        assert chances[row["label"]] == pytest.approx(result["top_k"][0]["probability"], abs=1e-6)
    for wrong, message in (
        (tmp_path, "is a folder: give the table's file name"),
        (tmp_path / "p.txt", "end the name with .csv"),
    ):
        assert main(["predict", str(trained_run), str(image_folder / "test"), "--out", str(wrong)]) == 2
        assert message in capsys.readouterr().err


def test_a_folder_s_images_are_predicted_in_natural_order(trained_run, image_folder, tmp_path, capsys):
    import shutil

    names = ["frame10.png", "frame2.png", "frame1.png", "b/frame3.png", "a/frame20.png", "a/frame3.png"]
    for name in names:
        (tmp_path / "frames" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image_folder / "test" / "square" / "000.png", tmp_path / "frames" / name)
    assert main(["predict", str(trained_run), str(tmp_path / "frames"), "--json"]) == 0
    listed = [r["file"].split("frames/")[1] for r in json.loads(capsys.readouterr().out)]
    assert listed == ["a/frame3.png", "a/frame20.png", "b/frame3.png", "frame1.png", "frame2.png", "frame10.png"]


def test_grey_rgba_and_palette_images_are_converted_not_refused(trained_run, tmp_path, capsys):
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    assert (
        main(
            [
                "predict",
                str(trained_run),
                str(tmp_path / "grey.png"),
                str(tmp_path / "rgba.png"),
                str(tmp_path / "palette.gif"),
                "--json",
            ]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_options_may_stand_between_the_images(trained_run, image_folder, capsys):
    first, second = sorted((image_folder / "test" / "circle").glob("*.png"))[:2]
    assert main(["predict", str(trained_run), str(first), "--top-k", "2", str(second)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(first), str(second)]
    assert all(line.count("%") == 2 for line in lines)


def test_a_text_file_passed_to_predict_is_a_one_line_error(trained_run, tmp_path, capsys, monkeypatch):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert main(["predict", str(trained_run), str(text)]) == 2
    err = capsys.readouterr().err
    assert f"{text}: not an image Pillow can read; give a JPEG, PNG" in err and err.count("\n") == 1
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    Image.new("1", (200, 200)).save(tmp_path / "big.png")  # a PNG: no hint to give a PNG
    assert main(["predict", str(trained_run), str(tmp_path / "big.png")]) == 2
    assert capsys.readouterr().err.endswith("(decompression-bomb guard); scale it down\n")
    assert main(["predict", str(trained_run), "https://example.com/cat.jpg"]) == 2
    assert "https://example.com/cat.jpg is a web address: deepstep reads local files" in capsys.readouterr().err


def test_the_plot_draws_each_image_beside_its_probabilities(trained_run, image_folder, tmp_path, capsys):
    out = tmp_path / "prediction.png"
    assert (
        main(["predict", str(trained_run), str(image_folder / "test" / "circle" / "000.png"), "--plot", str(out)]) == 0
    )
    assert out.stat().st_size > 10_000 and Image.open(out).size[0] > 600
    assert "circle/000.png" in capsys.readouterr().out
    one_row = Image.open(out).size[1]
    assert main(["predict", str(trained_run), str(image_folder / "test"), "--plot", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"plot: {out} (the first 12 of 18 images)"
    assert 11 * one_row < Image.open(out).size[1] < 13 * one_row


def test_a_plot_named_without_a_type_is_written_as_png_and_said_to_be(trained_run, image_folder, tmp_path, capsys):
    image = str(image_folder / "test" / "circle" / "000.png")
    assert main(["predict", str(trained_run), image, "--plot", str(tmp_path / "pred")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"plot: {tmp_path / 'pred.png'}"
    assert (tmp_path / "pred.png").is_file()
    assert main(["predict", str(trained_run), image, "--plot", str(tmp_path)]) == 2  # a folder: before predicting
    assert "is a folder: give a picture's file name" in capsys.readouterr().err


def test_gradcam_draws_the_first_images_under_their_maps_and_keeps_json_on_stdout(
    trained_run, image_folder, tmp_path, capsys
):
    out = tmp_path / "cam.png"
    assert main(["predict", str(trained_run), str(image_folder / "test"), "--gradcam", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"grad-cam: {out} (the first 12 of 18 images)"
    width, height = Image.open(out).size
    assert width > 800 and 4 * 150 < height < 4 * 200  # 3 pairs a row: 4 rows of 12 images
    one = str(image_folder / "test" / "circle" / "000.png")
    assert main(["predict", str(trained_run), one, "--gradcam", str(tmp_path / "one"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["file"] == one  # nothing else on stdout
    assert (tmp_path / "one.png").is_file()


def test_gradcam_takes_a_layer_by_its_name_and_names_the_close_ones_for_a_wrong_one(
    trained_run, image_folder, tmp_path, capsys, monkeypatch
):
    import deepstep.models.gradcam as gradcam

    image = str(image_folder / "test" / "circle" / "000.png")
    taken = []
    real = gradcam.grad_cam
    monkeypatch.setattr(gradcam, "grad_cam", lambda *a: taken.append(real(*a)) or taken[-1])
    assert main(["predict", str(trained_run), image, "--gradcam", str(tmp_path / "a.png")]) == 0
    assert (
        main(["predict", str(trained_run), image, "--gradcam", str(tmp_path / "b.png"), "--gradcam-layer", "conv1"])
        == 0
    )
    assert [(t.layer, t.layer_shape) for t in taken] == [
        ("pool", (16, 5, 5)),
        ("conv1", (6, 28, 28)),
    ]  # pool: its second call
    capsys.readouterr()
    assert (
        main(["predict", str(trained_run), image, "--gradcam", str(tmp_path / "c.png"), "--gradcam-layer", "conv3"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("deepstep predict: error: --gradcam-layer 'conv3': no such layer (did you mean 'conv")
    assert err.count("\n") == 1 and not (tmp_path / "c.png").exists()
    assert main(["predict", str(trained_run), image, "--gradcam-layer", "conv1"]) == 2
    assert "--gradcam-layer goes with --gradcam OUT.png" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--tta", "--tta-translate"])
def test_predict_with_tta_still_gives_a_distribution(flag, trained_run, image_folder, capsys):
    assert main(["predict", str(trained_run), str(image_folder / "test" / "circle"), flag, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 6 and all(abs(sum(t["probability"] for t in r["top_k"]) - 1) < 1e-5 for r in results)


def test_predict_runs_in_the_precision_asked_for_with_the_kernels_training_would_pick(
    trained_run, image_folder, capsys, monkeypatch
):
    import torch

    from deepstep.engine.precision import cpu_has_fast_bf16
    from deepstep.tasks import image_classification

    seen = []
    real = image_classification._ready_for_inference

    def spy(model, precision, *args):
        model, channels_last = real(model, precision, *args)
        seen.append((precision.name, channels_last, torch.is_autocast_enabled("cpu")))
        return model, channels_last

    monkeypatch.setattr(image_classification, "_ready_for_inference", spy)
    folder = str(image_folder / "test")
    results = {}
    for name in ("32", "bf16"):
        assert main(["predict", str(trained_run), folder, "--precision", name, "--device", "cpu", "--json"]) == 0
        captured = capsys.readouterr()
        results[name] = json.loads(captured.out)  # --json: the precision line goes to stderr
        if name == "32":
            assert captured.err == ""
        elif cpu_has_fast_bf16():
            assert captured.err == "precision bf16 (--precision bf16)\n"
        else:  # asked for, bf16 runs anyway, and the line says what that costs on this CPU
            assert captured.err.startswith("precision bf16 (--precision bf16; this CPU has no AMX/AVX-512-BF16")
    # batches of 64: oneDNN's channels_last kernels, as training would pick for them
    assert [s[:2] for s in seen] == [("32", True), ("bf16", True)] and not any(s[2] for s in seen)
    for fp32, bf16 in zip(results["32"], results["bf16"], strict=True):
        assert bf16["top_k"][0]["probability"] == pytest.approx(fp32["top_k"][0]["probability"], abs=0.02)


def test_predict_in_bf16_runs_every_batch_in_one_autocast_region_so_weights_are_cast_once(
    trained_run, image_folder, monkeypatch
):
    import torch

    from deepstep.engine.precision import Precision
    from deepstep.tasks import image_classification

    entered, outputs = [], []
    real_autocast, real_ready = Precision.autocast, image_classification._ready_for_inference

    def counting_autocast(self):
        entered.append(self.name)
        return real_autocast(self)

    def ready(model, *args):
        model.register_forward_hook(lambda module, inputs, output: outputs.append(output.dtype))
        return real_ready(model, *args)

    monkeypatch.setattr(Precision, "autocast", counting_autocast)
    monkeypatch.setattr(image_classification, "_ready_for_inference", ready)
    results = image_classification.predict_run(
        trained_run, [image_folder / "test"], batch_size=4, precision="bf16", log=lambda m: None
    )
    assert len(results) == 18 and outputs == [torch.bfloat16] * 5  # 18 images in batches of 4
    assert entered == ["bf16"]  # autocast keeps its weight casts for the region: one region, one cast


def test_predict_decodes_a_bounded_part_of_the_files_at_a_time_so_any_folder_fits_in_memory(
    trained_run, image_folder, monkeypatch
):
    from deepstep.tasks import image_classification

    read, read_at_each_call = [], []
    real_read, real_ready = image_classification.read_for_model, image_classification._ready_for_inference

    def counting_read(path, prep):
        read.append(path)
        return real_read(path, prep)

    def ready(model, *args):
        model.register_forward_hook(lambda module, inputs, output: read_at_each_call.append(len(read)))
        return real_ready(model, *args)

    monkeypatch.setattr(image_classification, "read_for_model", counting_read)
    monkeypatch.setattr(image_classification, "_ready_for_inference", ready)
    monkeypatch.setattr(image_classification, "PREDICT_DECODE_BYTES", 2 * 4 * 3 * 32 * 32)  # two batches of 4
    results = image_classification.predict_run(trained_run, [image_folder / "test"], batch_size=4, plot="p.png")
    assert read_at_each_call == [8, 8, 16, 16, 18] and len(results) == 18
    assert [r["file"] for r in results] == [str(f) for f in read]  # each file read once, answered in order
    assert Image.open("p.png").size[1] > 12 * 150  # the plot still draws the first 12, from the first parts


def test_files_slow_to_decode_are_read_in_threads_in_order_and_a_broken_one_is_still_one_line(
    trained_run, image_folder, tmp_path, monkeypatch, capsys
):
    import threading

    from deepstep.tasks import image_classification

    files = sorted((image_folder / "test").rglob("*.png"))
    assert main(["predict", str(trained_run), *map(str, files), "--json"]) == 0
    serial = json.loads(capsys.readouterr().out)
    reader = {}  # file -> the thread that read it
    real_read = image_classification.read_for_model

    def noting_read(path, prep):
        reader[path] = threading.current_thread().name
        return real_read(path, prep)

    monkeypatch.setattr(image_classification, "read_for_model", noting_read)
    monkeypatch.setattr(image_classification, "PARALLEL_DECODE_SECONDS", 0.0)  # every file counts as slow
    monkeypatch.setattr(image_classification, "available_cores", lambda: 3)
    assert main(["predict", str(trained_run), *map(str, files), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == serial
    probed = image_classification.PROBE_FILES  # timed in the main thread; the rest go to the pool
    assert [reader[f] for f in files[:probed]] == ["MainThread"] * probed
    assert all(reader[f].startswith("deepstep-decode") for f in files[probed:]) and len(files) > probed
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    assert main(["predict", str(trained_run), *map(str, files[:12]), str(broken), *map(str, files[12:])]) == 2
    assert capsys.readouterr().err.startswith(f"deepstep predict: error: {broken}: ")


@pytest.mark.parametrize("threaded", [False, True])
def test_an_unreadable_image_in_a_folder_is_skipped_with_a_warning_unless_strict(
    threaded, trained_run, image_folder, tmp_path, monkeypatch, capsys
):
    from deepstep.tasks import image_classification

    if threaded:  # the same in the decoding threads: the files stay in order
        monkeypatch.setattr(image_classification, "PARALLEL_DECODE_SECONDS", 0.0)
        monkeypatch.setattr(image_classification, "available_cores", lambda: 3)
    folder = tmp_path / "photos"
    folder.mkdir()
    good = sorted((image_folder / "test").rglob("*.png"))[:12]
    for i, f in enumerate(good):
        (folder / f"{i:02d}.png").write_bytes(f.read_bytes())
    (folder / "03b.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "09b.png").write_bytes(good[0].read_bytes()[:100])  # cut short
    assert main(["predict", str(trained_run), *map(str, good), "--json"]) == 0
    expected = [r["top_k"] for r in json.loads(capsys.readouterr().out)]
    assert main(["predict", str(trained_run), str(folder), "--json"]) == 0
    out, err = capsys.readouterr()
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(folder / f"{i:02d}.png") for i in range(12)]
    assert [r["top_k"] for r in results] == expected
    assert err == (
        f"warning: skipped 2 unreadable image(s) of 14 (first: {folder / '03b.jpg'}: not an image Pillow can read; "
        "give a JPEG, PNG, BMP, GIF, WebP or TIFF image); --strict makes this an error\n"
    )
    assert main(["predict", str(trained_run), str(folder), "--strict"]) == 2
    assert capsys.readouterr().err.startswith(f"deepstep predict: error: {folder / '03b.jpg'}: not an image")
    assert main(["predict", str(trained_run), str(folder / "09b.png"), str(folder)]) == 2  # named: refused
    assert capsys.readouterr().err.startswith(f"deepstep predict: error: {folder / '09b.png'}: ")
    for f in folder.glob("??.png"):
        f.unlink()
    assert main(["predict", str(trained_run), str(folder)]) == 2
    assert capsys.readouterr().err.startswith("deepstep predict: error: none of the 2 image file(s) could be read")


def test_the_python_api_takes_pil_images_as_it_takes_their_files_and_names_what_it_cannot_take(
    trained_run, image_folder
):
    import deepstep
    from deepstep.errors import DeepstepError

    run = deepstep.load_run(trained_run)
    first, second = sorted((image_folder / "test" / "square").glob("*.png"))[:2]
    from_files = run.predict([first, second], verbose=False)
    given = run.predict([Image.open(first), second], verbose=False)
    assert [r["top_k"] for r in given] == [r["top_k"] for r in from_files]
    assert given[0]["file"] is None and given[0]["image"] == 0 and given[1]["file"] == str(second)
    (alone,) = run.predict(Image.open(first).convert("L"), verbose=False)  # grey, converted as a file is
    assert alone["image"] == 0 and len(alone["top_k"]) == 3
    pixels = np.asarray(Image.open(first))
    with pytest.raises(DeepstepError, match=r"input 0 is a numpy.ndarray: make a PIL image of it, Image.fromarray"):
        run.predict(pixels)
    with pytest.raises(DeepstepError, match=r"input 1 is None$"):
        run.predict([first, None])


def test_the_python_api_hands_out_the_trained_model_which_gives_what_predict_says(trained_run, image_folder):
    import deepstep
    from deepstep.errors import DeepstepError

    run = deepstep.load_run(trained_run)
    model = run.load_model()
    assert not model.training and type(model).__name__ == "LeNet"
    image = image_folder / "test" / "stripes" / "000.png"
    (predicted,) = run.predict([image], top_k=3)
    norm = run.info["data"]["normalization"]
    x = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0]
    classes = run.info["data"]["classes"]
    assert {
        t["label"]: pytest.approx(probs[classes.index(t["label"])].item(), abs=1e-5) for t in predicted["top_k"]
    } == {t["label"]: t["probability"] for t in predicted["top_k"]}
    from safetensors.torch import load_file

    (last_file,) = (trained_run / "checkpoints").glob("last-*[0-9].safetensors")
    saved, last = load_file(last_file), run.load_model("last").state_dict()
    assert saved.keys() == last.keys() and all(torch.equal(saved[k], last[k]) for k in saved)
    with pytest.raises(DeepstepError, match="checkpoint must be 'best' or 'last', got 'first'"):
        run.load_model("first")
