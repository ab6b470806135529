import os
from itertools import islice

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import write_turned_photo
from deepstep.data import folders as folders_module
from deepstep.data import images as images_module
from deepstep.data.decode import read_image
from deepstep.data.images import (
    ImageBatches,
    MixedBatches,
    Pixels,
    channel_stats,
    load_pixels,
    normalize,
    random_crop_flip,
)
from deepstep.data.sources import open_image_source
from deepstep.errors import DeepstepError


def _load(source, split, cache, **kw):
    return load_pixels(
        source.splits[split],
        size=(32, 32),
        channels=3,
        cache_dir=cache,
        cache_name=f"{source.name}-{split}-{source.fingerprint}",
        progress=False,
        **kw,
    )


def test_decoded_images_equal_the_files_pixels(image_folder, isolated):
    source = open_image_source(str(image_folder), isolated)
    pixels = _load(source, "train", isolated)
    assert pixels.images.shape == (60, 3, 32, 32) and pixels.images.dtype == torch.uint8
    first = np.array(Image.open(source.splits["train"].files[0]))
    assert torch.equal(pixels.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert pixels.labels.tolist() == source.splits["train"].labels.tolist()


def test_the_second_load_comes_from_the_cache_without_decoding(image_folder, isolated, monkeypatch):
    source = open_image_source(str(image_folder), isolated)
    first = _load(source, "train", isolated)
    monkeypatch.setattr(images_module, "_decode", lambda *a, **k: pytest.fail("decoded again"))
    again = _load(source, "train", isolated)
    assert torch.equal(first.images, again.images)


def test_a_changed_file_invalidates_the_cache(image_folder, isolated):
    source = open_image_source(str(image_folder), isolated)
    before = _load(source, "train", isolated)
    path = source.splits["train"].files[0]
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path)
    changed = open_image_source(str(image_folder), isolated)
    after = _load(changed, "train", isolated)
    assert changed.fingerprint != source.fingerprint
    assert after.images[0, :, 0, 0].tolist() == [1, 2, 3] and not torch.equal(before.images[0], after.images[0])


def test_a_file_rewritten_with_its_old_size_and_mtime_still_invalidates_the_cache(image_folder, isolated):
    path = image_folder / "train" / "circle" / "extra.bmp"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(path)
    before = path.stat()
    source = open_image_source(str(image_folder), isolated)
    _load(source, "train", isolated)
    Image.new("RGB", (32, 32), (200, 100, 50)).save(path)  # a BMP: same size in bytes
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or `rsync -t` would
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    changed = open_image_source(str(image_folder), isolated)
    assert changed.fingerprint != source.fingerprint
    after = _load(changed, "train", isolated)
    index = [str(f) for f in changed.splits["train"].files].index(str(path))
    assert after.images[index, :, 0, 0].tolist() == [200, 100, 50]


def test_touching_a_file_keeps_the_decoded_cache(image_folder, isolated, monkeypatch):
    source = open_image_source(str(image_folder), isolated)
    _load(source, "train", isolated)
    os.utime(source.splits["train"].files[0])  # new mtime, same bytes
    again = open_image_source(str(image_folder), isolated)
    assert again.fingerprint == source.fingerprint
    monkeypatch.setattr(images_module, "_decode", lambda *a, **k: pytest.fail("decoded again"))
    _load(again, "train", isolated)


def test_a_moved_folder_keeps_its_fingerprint(image_folder, isolated):
    source = open_image_source(str(image_folder), isolated)
    moved = image_folder.rename(image_folder.parent / "elsewhere")
    assert open_image_source(str(moved), isolated).fingerprint == source.fingerprint


def test_an_unchanged_folder_is_not_read_again_to_fingerprint_it(image_folder, isolated, monkeypatch):
    first = open_image_source(str(image_folder), isolated)
    monkeypatch.setattr(folders_module, "_file_sha256", lambda path: pytest.fail(f"{path} read again"))
    assert open_image_source(str(image_folder), isolated).fingerprint == first.fingerprint


def test_a_corrupt_jpeg_is_skipped_and_counted(image_folder, isolated):
    bad = image_folder / "train" / "circle" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    source = open_image_source(str(image_folder), isolated)
    pixels = _load(source, "train", isolated)
    assert len(pixels.labels) == 60
    assert [file for file, _ in pixels.skipped] == [str(bad)]


def test_a_corrupt_jpeg_with_strict_is_an_error_naming_the_file(image_folder, isolated):
    bad = image_folder / "train" / "circle" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    source = open_image_source(str(image_folder), isolated)
    with pytest.raises(DeepstepError, match=r"broken.jpg: not an image Pillow can read; 1 bad image"):
        _load(source, "train", isolated, strict=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (40, 30), 128),
        lambda: Image.new("RGBA", (32, 32), (255, 0, 0, 0)),
        lambda: Image.new("P", (32, 32), 3),
        lambda: Image.fromarray(np.full((32, 32), 60000, dtype=np.uint16)),
        lambda: Image.new("CMYK", (32, 32), (0, 255, 255, 0)),
    ],
    ids=["grey", "rgba", "palette", "16-bit", "cmyk"],
)
def test_odd_image_modes_become_rgb_at_the_model_size(make, tmp_path):
    path = tmp_path / "odd.png"
    image = make()
    image.save(path if image.mode != "CMYK" else tmp_path / "odd.jpg")
    array = read_image(path if image.mode != "CMYK" else tmp_path / "odd.jpg", (32, 32), 3)
    assert array.shape == (3, 32, 32) and array.dtype == np.uint8


def test_a_fully_transparent_image_is_white_not_its_hidden_colour(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert read_image(tmp_path / "clear.png", (8, 8), 3)[:, 0, 0].tolist() == [255, 255, 255]


def test_an_exif_rotated_photo_is_turned_upright(tmp_path):
    write_turned_photo(tmp_path / "turned.jpg")
    upright = read_image(tmp_path / "turned.jpg", (20, 10), 1)  # (1, 20, 10) after rotation
    assert upright[0, :10].mean() > 200 and upright[0, 10:].mean() < 50  # white moved to the top


def test_channel_stats_are_the_mean_and_std_in_unit_range():
    images = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    images[0] = 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.5] * 3) and std == pytest.approx([0.5] * 3)


def test_channel_stats_in_chunks_of_a_few_images_match_one_pass():
    # chunks are sized by numbers, not images (4,096 images at 224x224 took 9 GB in float64 at once)
    images = torch.randint(0, 256, (7, 3, 5, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    whole = images.double() / 255
    for values in (1, 90, 200, 10**6):  # one image a chunk, one, two, all of them
        mean, std = channel_stats(images, values=values)
        assert mean == pytest.approx(whole.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
        assert std == pytest.approx(whole.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-6)


def test_normalize_maps_the_mean_to_zero_and_one_std_to_one():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1)
    out = normalize(images, torch.tensor([0.5] * 3), torch.tensor([0.5] * 3))
    assert out[:, 0, 0, 0].tolist() == pytest.approx([-1.0, 1.0])


def test_random_crop_flip_returns_shifted_or_flipped_crops_of_the_padded_image():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(0))
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    for i in range(64):
        crops = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    assert not torch.equal(out, images)


@pytest.mark.parametrize(("crop_padding", "shifts"), [(None, {0, 1, 2}), (1, {0, 1}), (0, {0})])
def test_augmented_crops_move_at_most_crop_padding_pixels(crop_padding, shifts):
    rows = torch.arange(16, dtype=torch.uint8).view(1, 1, 16, 1).expand(1, 3, 16, 16)  # pixel (i, j) holds i
    pixels = Pixels(rows.repeat(400, 1, 1, 1), torch.zeros(400, dtype=torch.int64), [])
    batches = ImageBatches(
        pixels, batch_size=100, mean=[0.0] * 3, std=[1 / 255] * 3, shuffle=True, augment=True, crop_padding=crop_padding
    )
    centre_rows = torch.cat([x[:, 0, 8, 8] for x, _ in batches]).round().long()
    assert set((centre_rows - 8).abs().tolist()) == shifts  # default: an eighth of the side, 2 at 16x16


def _pixels(n):
    return Pixels(
        torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(), torch.arange(n), []
    )


def test_shuffled_batches_visit_every_image_once_per_epoch_in_a_new_order():
    batches = ImageBatches(_pixels(50), batch_size=8, mean=[0.0] * 3, std=[1 / 255] * 3, shuffle=True)
    orders = [torch.cat([y for _, y in batches]).tolist() for _ in range(2)]
    assert sorted(orders[0]) == list(range(50)) == sorted(orders[1])
    assert orders[0] != orders[1]
    assert len(batches) == 7


def test_images_and_labels_stay_together_through_shuffling_and_normalising():
    batches = ImageBatches(_pixels(20), batch_size=6, mean=[0.0] * 3, std=[1 / 255] * 3, shuffle=True, chunk_bytes=100)
    for x, y in batches:
        assert torch.equal(x[:, 0, 0, 0].round().long(), y)


def test_a_trailing_batch_of_one_image_is_dropped_when_shuffling():
    batches = ImageBatches(_pixels(17), batch_size=8, mean=[0.0] * 3, std=[1.0] * 3, shuffle=True)
    assert [len(y) for _, y in batches] == [8, 8] and len(batches) == 2
    ordered = ImageBatches(_pixels(17), batch_size=8, mean=[0.0] * 3, std=[1.0] * 3)
    assert [len(y) for _, y in ordered] == [8, 8, 1]


def test_the_same_seed_gives_the_same_batches():
    def epoch(seed):
        pixels = Pixels(
            torch.randint(0, 256, (30, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8),
            torch.arange(30),
            [],
        )
        b = ImageBatches(pixels, batch_size=4, mean=[0.0] * 3, std=[1.0] * 3, shuffle=True, augment=True, seed=seed)
        return torch.cat([x for x, _ in b])

    assert torch.equal(epoch(3), epoch(3)) and not torch.equal(epoch(3), epoch(4))


def _mirrored_by_epoch(batches: ImageBatches, images: torch.Tensor, epochs: range) -> dict[int, torch.Tensor]:
    """For each epoch, which images (each one's label is its index) came out mirrored."""
    mirrored = {}
    for epoch in epochs:
        batches.set_epoch(epoch)
        seen = torch.zeros(len(images), dtype=torch.bool)
        for x, y in batches:
            x = x.round().to(torch.uint8)  # mean 0, std 1/255: the pixels as they were
            for out, i in zip(x, y.tolist(), strict=True):
                assert torch.equal(out, images[i]) or torch.equal(out, images[i].flip(2))
                seen[i] = not torch.equal(out, images[i])
        mirrored[epoch] = seen
    return mirrored


@pytest.mark.parametrize("alternate", [True, False])
def test_the_alternating_flip_mirrors_each_image_in_every_other_epoch(alternate):
    images = torch.randint(0, 256, (64, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    batches = ImageBatches(
        Pixels(images, torch.arange(64), []),
        batch_size=10,
        mean=[0.0] * 3,
        std=[1 / 255] * 3,
        shuffle=True,
        augment=True,
        crop_padding=0,  # flips only: each output is the image or its mirror
        alternate_flip=alternate,
    )
    mirrored = _mirrored_by_epoch(batches, images, range(1, 5))
    assert 10 < int(mirrored[1].sum()) < 54  # the first epoch's are drawn at random
    alternated = [torch.equal(mirrored[e + 1], ~mirrored[e]) for e in (1, 2, 3)]
    assert alternated == [alternate] * 3  # random flips: 64 images all alternating by chance is 2^-64


def test_the_alternating_flip_depends_on_the_epoch_not_on_how_many_passes_came_before():
    images = torch.randint(0, 256, (40, 3, 6, 6), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)

    def batches():
        pixels = Pixels(images, torch.arange(40), [])
        return ImageBatches(
            pixels, batch_size=8, mean=[0.0] * 3, std=[1 / 255] * 3, shuffle=True, augment=True, alternate_flip=True
        )

    whole = batches()
    for epoch in (1, 2):
        whole.set_epoch(epoch)
        list(whole)
    state = whole.state_dict()
    whole.set_epoch(3)
    expected = [x for x, _ in whole]
    resumed = batches()  # a new process: same seed, the generator as the last checkpoint saved it
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    assert all(torch.equal(a, b) for a, b in zip(expected, [x for x, _ in resumed], strict=True))


def test_training_tells_the_train_batches_each_epoch(image_folder, monkeypatch):
    from deepstep.cli import main

    epochs = []
    original = ImageBatches.set_epoch

    def spy(self, epoch):
        if self.shuffle:  # the train batches
            epochs.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(ImageBatches, "set_epoch", spy)
    args = ["train", "--data", str(image_folder), "--epochs", "3", "--augment", "--alternate-flip", "--quiet"]
    assert main([*args, "--out", "runs/alt"]) == 0
    assert epochs == [1, 2, 3]


def test_progressive_crop_trains_the_first_epochs_on_windows_of_whole_images():
    images = torch.randint(0, 256, (24, 3, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    pixels = Pixels(images, torch.arange(24), [])
    batches = ImageBatches(
        pixels, batch_size=6, mean=[0.0] * 3, std=[1 / 255] * 3, shuffle=True, window=5, window_epochs=2
    )
    places = set()
    for epoch in (1, 2, 3):
        batches.set_epoch(epoch)
        for x, y in batches:
            x = x.round().to(torch.uint8)  # mean 0, std 1/255: the pixels as they were
            if epoch == 3:
                assert torch.equal(x, images[y])  # whole images once the window epochs are over
                continue
            windows = {
                (top, left): images[y][:, :, top : top + 5, left : left + 5] for top in range(4) for left in range(4)
            }
            found = [place for place, window in windows.items() if torch.equal(x, window)]
            assert len(found) == 1  # one place for the whole batch
            places.update(found)
    assert len(places) > 1  # drawn at random, batch by batch


def _batch(n=6, classes=6):
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(n) % classes


def test_mixup_blends_each_image_with_the_mirrored_one_and_its_labels_by_the_same_share():
    x, y = _batch()
    mixed = MixedBatches([(x, y)], 6, mixup=0.4)
    for xm, ym in mixed:
        lam = float(ym[0, 0])  # image 0 (label 0) mixed with image 5 (label 5)
        assert 0 < lam < 1 and ym[0, 5] == pytest.approx(1 - lam)
        assert torch.allclose(ym.sum(1), torch.ones(6))
        assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
        assert torch.equal(ym.argmax(1), torch.where(torch.tensor(lam >= 0.5), y, y.flip(0)))


def test_cutmix_pastes_one_box_of_the_mirrored_image_and_labels_by_the_area_it_leaves():
    x, y = _batch(8, classes=8)
    original = x.clone()
    mixed = MixedBatches([(x, y)] * 20, 8, cutmix=1.0, seed=1)
    boxes = set()
    for xm, ym in mixed:
        pasted = xm != x  # continuous random pixels: a pasted one differs from the image's own
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))  # the same box in every image and channel
        mask = pasted[0, 0]
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        if len(rows):  # a rectangle: every pixel between its first and last rows and columns
            assert mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
            assert torch.equal(xm[:, :, mask], x.flip(0)[:, :, mask])
        boxes.add(int(mask.sum()))
        assert torch.allclose(ym[:, y].diagonal(), torch.full((8,), 1 - float(mask.sum()) / 64))
    assert torch.equal(x, original)  # the batch given was not written into
    assert len(boxes) > 5  # the box's size is drawn each batch


def test_mixup_and_cutmix_together_take_turns_and_resume_where_they_stopped():
    x, y = _batch()

    def kinds(mixed, count):
        return ["cut" if ((xm == x) | (xm == x.flip(0))).all() else "blend" for xm, _ in islice(mixed, count)]

    both = MixedBatches([(x, y)] * 40, 6, mixup=0.2, cutmix=1.0, seed=3)
    seen = kinds(both, 40)
    assert 10 < seen.count("cut") < 30
    first = MixedBatches([(x, y)] * 40, 6, mixup=0.2, cutmix=1.0, seed=3)
    kinds(first, 15)
    state = first.state_dict()
    again = MixedBatches([(x, y)] * 40, 6, mixup=0.2, cutmix=1.0, seed=99)
    again.load_state_dict(state)
    assert kinds(again, 25) == seen[15:]


def test_the_first_batch_is_drawn_without_moving_the_batches_on():
    from deepstep.data.batches import first_batch

    pixels = Pixels(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40) % 4, [])
    plain = ImageBatches(pixels, batch_size=8, mean=[0.0] * 3, std=[1.0] * 3, shuffle=True, augment=True)
    mixed = MixedBatches(plain, 4, mixup=0.3, cutmix=1.0)
    peeked = first_batch(mixed)
    trained = next(iter(mixed))
    assert all(torch.equal(a, b) for a, b in zip(peeked, trained, strict=True))
    assert not torch.equal(next(iter(mixed))[0], trained[0])  # a real draw does move them on


def test_a_batch_s_labels_in_words_give_a_mixed_image_s_two_classes_and_shares():
    from deepstep.tasks.image_classification import batch_labels

    classes = ["cat", "dog", "ship"]
    assert batch_labels(torch.tensor([2, 0]), classes) == ["ship", "cat"]
    shares = torch.tensor([[0.0, 0.62, 0.38], [1.0, 0.0, 0.0], [0.999, 0.0, 0.001]])
    assert batch_labels(shares, classes) == ["dog 62%\nship 38%", "cat", "cat"]


def test_cutout_sets_one_square_wholly_inside_each_image_to_the_fill_colour():
    from deepstep.data.images import cutout

    images = torch.randint(0, 200, (50, 3, 10, 10), dtype=torch.uint8)
    fill = torch.tensor([250, 251, 252], dtype=torch.uint8)
    out = cutout(images.clone(), 4, fill, torch.Generator().manual_seed(0))
    changed = out != images
    corners = set()
    for i in range(50):
        mask = changed[i, 0]
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        assert len(rows) == len(cols) == 4 and int(mask.sum()) == 16  # one 4x4 square, not clipped at an edge
        assert torch.equal(changed[i], mask.expand(3, -1, -1))
        assert out[i, :, mask].T.tolist() == [[250, 251, 252]] * 16
        corners.add((int(rows[0]), int(cols[0])))
    assert {r for r, _ in corners} == set(range(7)) == {c for _, c in corners}  # every place a square fits


def test_cutout_in_batches_is_the_mean_colour_so_zero_once_normalised_and_only_with_augment():
    pixels = Pixels(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.zeros(40, dtype=torch.int64), [])
    kw = {"batch_size": 40, "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3, "cutout": 3}
    x, _ = next(iter(ImageBatches(pixels, augment=True, crop_padding=0, **kw)))
    near_zero = (x.abs() < 0.01).all(dim=1)  # the mean colour in uint8 normalises to within 0.5/255/0.2
    assert (near_zero.sum(dim=(1, 2)) >= 9).all()
    plain, _ = next(iter(ImageBatches(pixels, augment=False, **kw)))
    assert torch.equal(plain, normalize(pixels.images, torch.tensor(kw["mean"]), torch.tensor(kw["std"])))


def test_streamed_cutout_erases_one_square_of_that_side():
    from PIL import Image

    from deepstep.data.streaming import train_transform

    transform = train_transform((16, 16), None, [0.5] * 3, [0.25] * 3, augment=True, cutout=5)
    image = Image.fromarray(np.random.default_rng(0).integers(1, 255, (20, 20, 3), dtype=np.uint8))
    for _ in range(5):
        x = transform(image)
        erased = (x == 0).all(dim=0)
        assert int(erased.sum()) == 25 and int(erased.any(1).sum()) == 5
