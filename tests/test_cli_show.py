from PIL import Image

from deepstep.cli import main


def test_show_saves_a_labelled_grid(image_folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["show", str(image_folder), "--split", "test", "--n", "9", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 300 and f"grid: {out}" in capsys.readouterr().out


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
