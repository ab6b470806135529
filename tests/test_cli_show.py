from pathlib import Path

import yaml
from PIL import Image

from deepstep.cli import main


def test_show_saves_a_labelled_grid(image_folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["show", str(image_folder), "--split", "test", "--n", "9", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 300 and f"grid: {out}" in capsys.readouterr().out


def test_show_takes_the_data_as_train_does_too_and_says_what_it_could_not_draw(image_folder, tmp_path, capsys):
    broken = image_folder / "test" / "circle" / "broken.png"
    broken.write_bytes(b"\x89PNG not a png")
    out = tmp_path / "grid.png"
    assert main(["show", "--data", str(image_folder), "--split", "test", "--n", "19", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"warning: skipped 1 unreadable image(s) (first: {broken}: not an image Pillow can read)\n"
    assert captured.out == f"grid: {out}\n"
    assert main(["show", str(image_folder), "--data", str(image_folder)]) == 2
    assert (
        capsys.readouterr().err
        == f"deepstep show: error: give the data once: {image_folder} or --data {image_folder}\n"
    )
    assert main(["show"]) == 2
    assert "give the data to show: `deepstep show cifar10-sample`" in capsys.readouterr().err


def test_a_picture_named_without_a_type_is_a_png_and_said_to_be(image_folder, tmp_path, capsys):
    assert main(["show", str(image_folder), "--out", str(tmp_path / "grid")]) == 0
    assert f"grid: {tmp_path / 'grid.png'}" in capsys.readouterr().out
    assert Image.open(tmp_path / "grid.png").format == "PNG"


def test_a_picture_that_cannot_be_written_where_asked_is_one_line(image_folder, tmp_path, capsys):
    where = tmp_path / "out"
    where.mkdir()
    (where / "a-file").write_text("not a folder")
    (where / "a-folder").mkdir()
    for out, says in [
        ("a-file/grid.png", "cannot write there (a file is in the way of its folder); choose another path"),
        ("a-folder", "a-folder is a folder: give a picture's file name, e.g."),
        ("grid.jpgx", "matplotlib cannot write .jpgx pictures; end the name with .png"),
    ]:
        assert main(["show", str(image_folder), "--out", str(where / out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert sorted(p.name for p in where.rglob("*")) == ["a-file", "a-folder"]  # nothing written


def test_a_run_folder_given_as_data_is_named_as_one_with_the_data_it_trained_on(trained_run, image_folder, capsys):
    assert main(["train", "--data", str(trained_run)]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"runs/tiny is a deepstep run folder, not data; it trained on {image_folder}: give that\n")
    assert err.count("\n") == 1
    assert main(["train", "--data", "runs"]) == 2  # their curves.png would have been images of a class "tiny"
    assert capsys.readouterr().err.endswith(
        "runs holds deepstep run folders (tiny), not class folders of images: give the data a run trained on\n"
    )


def test_show_of_a_run_in_python_or_by_its_folder_draws_the_data_it_trained_on(
    trained_run, image_folder, tmp_path, monkeypatch
):
    import deepstep
    import deepstep.tasks

    out = deepstep.show(deepstep.load_run(trained_run), split="test", n=9, out=tmp_path / "run.png")
    assert main(["show", str(trained_run), "--split", "test", "--n", "9", "--out", str(tmp_path / "folder.png")]) == 0
    assert main(["show", str(image_folder), "--split", "test", "--n", "9", "--out", str(tmp_path / "data.png")]) == 0
    drawn = Image.open(tmp_path / "data.png").tobytes()
    assert Image.open(out).tobytes() == drawn == Image.open(tmp_path / "folder.png").tobytes()
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    config["data-dir"] = str(tmp_path / "cache")  # as a run trained with --data-dir
    (trained_run / "config.yaml").write_text(yaml.safe_dump(config))
    asked = []
    monkeypatch.setattr(deepstep.tasks, "show", lambda data, **options: asked.append(options) or Path("x.png"))
    deepstep.show(deepstep.load_run(trained_run))
    assert main(["show", str(trained_run)]) == 0
    assert [options["data_dir"] for options in asked] == [str(tmp_path / "cache")] * 2


def test_show_of_a_missing_split_names_the_ones_there(image_folder, capsys):
    assert main(["show", str(image_folder), "--split", "val"]) == 2
    assert "has no 'val' split; it has train, test" in capsys.readouterr().err


def test_a_flat_grey_image_is_drawn_at_its_own_brightness(tmp_path):
    import numpy as np

    from deepstep.plots import plot_image_grid

    out = plot_image_grid([np.full((1, 20, 20), 128, dtype=np.uint8)], ["grey"], tmp_path / "grey.png")
    picture = Image.open(out).convert("L")
    centre = picture.getpixel((picture.width // 2, picture.height // 2))
    assert abs(centre - 128) <= 2  # not black (a flat image stretched to its own range) nor white


def test_a_label_the_fonts_cannot_draw_gets_one_note_not_a_warning_per_glyph(tmp_path, capsys, recwarn):
    import numpy as np

    from deepstep.plots import plot_image_grid

    hieroglyphs = "\U00013000\U00013001"  # Egyptian: in no font a plotting machine has
    images = [np.zeros((3, 8, 8), dtype=np.uint8)] * 2
    plot_image_grid(images, [hieroglyphs, hieroglyphs], tmp_path / "grid.png")
    err = capsys.readouterr().err.strip()
    assert err == (
        f"note: {tmp_path / 'grid.png'}: the plot's fonts lack {hieroglyphs}, drawn as boxes; "
        "install a font that has them (e.g. Noto Sans CJK) to see them"
    )
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


def test_show_draws_a_series_columns_with_their_gaps(tmp_path, capsys):
    from deepstep.data.series import read_columns

    csv_path = tmp_path / "s.csv"
    rows = [
        f"{i + 1},2000-{i % 12 + 1:02d}-01,{'' if i == 3 else i * 2.5},{i % 4},{'NE' if i % 2 else 'SW'}"
        for i in range(12)
    ]
    csv_path.write_text("No,Month,Sales,Stock,wind\n" + "\n".join(rows) + "\n")
    name, table, text = read_columns(str(csv_path))
    assert name == "s" and list(table.columns) == ["Sales", "Stock"] and text == ["wind"]  # No only numbers the rows
    assert str(table.index[0].date()) == "2000-01-01" and table["Sales"].isna().sum() == 1  # the gap stays
    out = tmp_path / "series.png"
    assert main(["show", str(csv_path), "--out", str(out)]) == 0
    shown = capsys.readouterr()
    assert shown.out.strip() == f"series: {out}" and Image.open(out).size[1] > 300
    assert shown.err == "note: wind holds text, not drawn (train reads it one-hot with --features)\n"
    assert main(["show", str(csv_path), "--split", "test"]) == 2
    assert "--split does not apply to" in capsys.readouterr().err


def test_show_draws_labelled_sequences_with_the_classes_taking_turns(sequence_folder, tmp_path, monkeypatch, capsys):
    import deepstep.plots

    drawn = {}

    def record(sequences, labels, out, title="", feature_names=None):
        drawn.update(sequences=sequences, labels=labels, title=title)
        out.write_bytes(b"png")
        return out

    real = tmp_path / "real.png"
    assert main(["show", str(sequence_folder), "--n", "6", "--out", str(real)]) == 0
    assert capsys.readouterr().out.strip() == f"sequences: {real}" and Image.open(real).size[0] > 500
    monkeypatch.setattr(deepstep.plots, "plot_sequence_grid", record)
    assert main(["show", str(sequence_folder), "--n", "5", "--out", str(tmp_path / "q.png")]) == 0
    assert [label.split(" #")[0] for label in drawn["labels"]] == ["-1", "1", "-1", "1", "-1"]
    assert all(s.shape[1] == 2 for s in drawn["sequences"]) and drawn["title"].startswith("moves: 5 of 60 sequences")


def test_a_long_test_span_gets_a_close_up_of_its_first_steps(tmp_path):
    import numpy as np
    import pandas as pd

    from deepstep.plots import ZOOM, plot_forecast

    def draw(n, test_start, name):
        times = list(pd.date_range("2014-01-01", periods=n, freq="h"))
        values = np.sin(np.arange(n) / 4.0)
        one_step = [(i, values[i : i + 1] + 0.1) for i in range(test_start, n)]
        return Image.open(plot_forecast(times, values, test_start, {"model": one_step}, tmp_path / name))

    short, long = draw(200, 150, "short.png"), draw(4 * ZOOM, ZOOM, "long.png")
    assert short.size == (1100, 450) and long.size == (1100, 750)  # one panel; the span and its close-up
    lower = np.asarray(long.convert("RGB"))[400:, 80:1080].astype(int)
    blue = (abs(lower[..., 0] - 31) < 25) & (abs(lower[..., 1] - 119) < 25) & (lower[..., 2] > 150)
    assert blue.sum() > 500  # the model's line (C0) is drawn in the close-up
