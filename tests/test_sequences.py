"""Labelled sequences: the folder layout, .npz, groups and splits."""

import zipfile

import numpy as np
import pytest

from deepstep.data.sequences import is_sequence_spec, load_sequences, pad, split_sequences
from deepstep.errors import DeepstepError
from deepstep.tasks import infer_task


def test_a_folder_with_a_labels_csv_is_read_with_its_lengths_and_classes(sequence_folder, tmp_path):
    data = load_sequences(str(sequence_folder), tmp_path)
    assert len(data.sequences) == 60 and data.features == 2 and data.classes == ["-1", "1"]
    assert data.ids[:2] == ["1", "2"] and data.labels[:2].tolist() == [1, 0]
    assert {len(s) for s in data.sequences} <= set(range(5, 16)) and len({len(s) for s in data.sequences}) > 1


def test_the_sequence_files_header_names_the_features_in_the_log_and_the_picture(
    sequence_folder, tmp_path, capsys, monkeypatch
):
    import deepstep.plots
    from deepstep.cli import main

    data = load_sequences(str(sequence_folder), tmp_path)
    assert data.feature_names == ["a", "b"] and data.subset(np.arange(3)).feature_names == ["a", "b"]
    legends, save = [], deepstep.plots._save

    def recording_save(fig, out):
        legends.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        return save(fig, out)

    monkeypatch.setattr(deepstep.plots, "_save", recording_save)
    assert main(["show", str(sequence_folder), "--n", "2", "--out", "seq.png"]) == 0
    assert legends == ["a", "b"]
    assert main(["train", "--data", str(sequence_folder), "--epochs", "1", "--out", "runs/named"]) == 0
    assert "sequences of 2 features (a, b), lengths 5-15" in capsys.readouterr().out
    for f in (sequence_folder / "dataset").glob("seq_*.csv"):  # no header line: no names, nothing made up
        f.write_text("\n".join(f.read_text().splitlines()[1:]) + "\n")
    assert load_sequences(str(sequence_folder), tmp_path / "again").feature_names is None


def test_a_zip_of_the_folder_is_recognised_and_unpacked_once(sequence_folder, tmp_path):
    archive = tmp_path / "moves.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sequence_folder.rglob("*.csv"):
            z.write(f, f.relative_to(sequence_folder))
    assert is_sequence_spec(str(archive)) and infer_task(str(archive)) == "sequence-classification"
    first = load_sequences(str(archive), tmp_path / "cache")
    again = load_sequences(str(archive), tmp_path / "cache")
    assert first.root == again.root and first.fingerprint == again.fingerprint


def test_an_image_folder_with_a_labels_csv_is_not_taken_for_sequences(tmp_path):
    from PIL import Image

    (tmp_path / "dogs" / "train").mkdir(parents=True)  # Kaggle's layout: images, and labels.csv beside them
    Image.new("RGB", (8, 8)).save(tmp_path / "dogs" / "train" / "0a1b.jpg")
    (tmp_path / "dogs" / "labels.csv").write_text("id,breed\n0a1b,husky\n")
    assert not is_sequence_spec(str(tmp_path / "dogs")) and infer_task(str(tmp_path / "dogs")) == "image-classification"
    with pytest.raises(DeepstepError, match="'0a1b' is not one"):  # asked for sequences all the same
        load_sequences(str(tmp_path / "dogs"), tmp_path)


def test_an_npz_with_lengths_keeps_each_sequence_its_own_length(tmp_path):
    x = np.zeros((3, 5, 2), np.float32)
    np.savez(tmp_path / "d.npz", X=x, y=np.array([0, 1, 2]), lengths=np.array([5, 3, 1]))
    data = load_sequences(str(tmp_path / "d.npz"), tmp_path)
    assert [len(s) for s in data.sequences] == [5, 3, 1] and data.classes == ["0", "1", "2"]


def test_an_npz_padded_with_nan_past_its_lengths_is_read_and_a_nan_inside_one_is_refused(tmp_path):
    x = np.ones((3, 5, 2), np.float32)
    x[1, 3:] = np.nan  # padding, past length 3: never read
    np.savez(tmp_path / "d.npz", X=x, y=np.array([0, 1, 0]), lengths=np.array([5, 3, 5]))
    data = load_sequences(str(tmp_path / "d.npz"), tmp_path)
    assert [len(s) for s in data.sequences] == [5, 3, 5] and all(np.isfinite(s).all() for s in data.sequences)
    x[2, 4, 1] = np.inf
    np.savez(tmp_path / "d.npz", X=x, y=np.array([0, 1, 0]), lengths=np.array([5, 3, 5]))
    with pytest.raises(
        DeepstepError, match=r"d.npz: X holds NaN or inf values \(first in sequence 2 at step 4\); fill them$"
    ):
        load_sequences(str(tmp_path / "d.npz"), tmp_path)


def test_an_npz_s_labels_as_a_column_are_read_and_one_hot_rows_are_refused_with_the_fix(tmp_path):
    # both were read as the text of each row: classes "[0]" and "[1]", or "[0.0, 1.0, 0.0]"
    x = np.zeros((4, 5, 2), np.float32)
    np.savez(tmp_path / "d.npz", X=x, y=np.array([[0], [1], [0], [1]]))
    assert load_sequences(str(tmp_path / "d.npz"), tmp_path).classes == ["0", "1"]
    np.savez(tmp_path / "d.npz", X=x, y=np.eye(3)[[0, 1, 2, 1]])
    with pytest.raises(
        DeepstepError,
        match=r"d.npz: y must hold one label per sequence, shape \(N,\); it has shape \(4, 3\); "
        r"these are one-hot rows: save y.argmax\(axis=1\) instead$",
    ):
        load_sequences(str(tmp_path / "d.npz"), tmp_path)


@pytest.mark.parametrize(
    "lengths, message",
    [
        ([5, 6, 1], r"lengths must be 1 to 5 \(X's steps\); sequence 1 has 6"),
        ([5, 0, 1], r"lengths must be 1 to 5 \(X's steps\); sequence 1 has 0"),
        ([5, 3], r"lengths must hold one length per sequence \(3\); it has shape \(2,\)"),
        ([5.0, 2.5, 1.0], r"lengths must be whole numbers of steps; it holds float64 values"),
    ],
    ids=["longer than X", "empty", "too few", "fractions"],
)
def test_npz_lengths_that_cannot_be_a_sequences_length_are_refused(tmp_path, lengths, message):
    # a length past X's steps was cut to them, and a missing one left its sequence out, in silence
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 5, 2), np.float32), y=np.array([0, 1, 0]), lengths=np.array(lengths))
    with pytest.raises(DeepstepError, match=message):
        load_sequences(str(tmp_path / "d.npz"), tmp_path)


def test_holding_out_a_group_puts_all_of_it_in_the_test_part_and_none_elsewhere(sequence_folder, tmp_path):
    data = load_sequences(str(sequence_folder), tmp_path, group_file="groups.csv")
    splits = split_sequences(data, test_size=0.2, val_size=0.1, seed=0, test_groups=["3"])
    assert set(splits.test.groups) == {"3"} and (data.groups == "3").sum() == len(splits.test.labels)
    assert "3" not in set(splits.train.groups) | set(splits.val.groups)


def test_the_stratified_test_part_is_the_same_whatever_the_seed(sequence_folder, tmp_path):
    data = load_sequences(str(sequence_folder), tmp_path)
    a = split_sequences(data, test_size=0.2, val_size=0.1, seed=0, test_groups=None)
    b = split_sequences(data, test_size=0.2, val_size=0.1, seed=7, test_groups=None)
    assert a.test.ids == b.test.ids and a.val.ids != b.val.ids
    assert np.bincount(a.test.labels).tolist() == [6, 6]


def test_a_labels_file_naming_a_missing_sequence_is_an_error(sequence_folder, tmp_path):
    (sequence_folder / "dataset" / "seq_7.csv").unlink()
    with pytest.raises(DeepstepError, match=r"names 1 sequence\(s\) with no CSV beside it \(first id 7\)"):
        load_sequences(str(sequence_folder), tmp_path)


def test_an_npz_saved_with_lowercase_names_is_read(tmp_path):
    # np.savez(path, x=..., y=...) was refused: "must hold arrays X and y; it has x, y"
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 6, 2), np.float32), y=np.array([0, 1, 0, 1]))
    data = load_sequences(str(tmp_path / "d.npz"), tmp_path)
    assert len(data.sequences) == 4 and data.sequences[0].shape == (6, 2) and data.classes == ["0", "1"]


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b"garbage"), "is not an .npz \\(numpy's zip of arrays"),  # numpy said: pickled data
        (
            lambda p: np.savez(p, X=np.array([np.zeros((5, 2)), np.zeros((3, 2))], dtype=object), y=np.array([0, 1])),
            "X is an object array \\(sequences of different lengths\\?\\); pad them",
        ),
    ],
    ids=["not a zip", "ragged"],
)
def test_an_npz_that_cannot_be_read_says_what_to_do(tmp_path, write, message):
    write(tmp_path / "d.npz")
    with pytest.raises(DeepstepError, match=message):
        load_sequences(str(tmp_path / "d.npz"), tmp_path)


def test_sequences_of_one_class_are_refused_as_such(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((10, 6, 2), np.float32), y=np.zeros(10))
    data = load_sequences(str(tmp_path / "d.npz"), tmp_path)
    with pytest.raises(DeepstepError, match="^d holds one class \\(0\\): a classifier needs at least two$"):
        split_sequences(data, test_size=0.2, val_size=0.1, seed=0, test_groups=None)


def test_an_unknown_test_group_lists_the_groups(sequence_folder, tmp_path):
    data = load_sequences(str(sequence_folder), tmp_path, group_file="groups.csv")
    with pytest.raises(DeepstepError, match="--test-groups 9: no such group; groups are 1, 2, 3"):
        split_sequences(data, test_size=0.2, val_size=0.1, seed=0, test_groups=["9"])


def test_a_test_size_of_0_is_refused_unless_groups_are_held_out(sequence_folder, tmp_path):
    # it trained, and then evaluate raised a ValueError on the empty test part
    data = load_sequences(str(sequence_folder), tmp_path, group_file="groups.csv")
    with pytest.raises(DeepstepError, match="--test-size 0 leaves no test part"):
        split_sequences(data, test_size=0, val_size=0.1, seed=0, test_groups=None)
    assert len(split_sequences(data, test_size=0, val_size=0.1, seed=0, test_groups=["3"]).test.labels) > 0


def test_padding_keeps_the_lengths_beside_the_values():
    x, lengths = pad([np.ones((3, 2), np.float32), np.ones((1, 2), np.float32)])
    assert x.shape == (2, 3, 2) and lengths.tolist() == [3, 1] and x[1, 1:].sum() == 0
