"""Hostile inputs that must neither crash nor corrupt anything: decompression bombs and two
processes building the same decoded-image cache at once."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from deepstep.data.decode import decode_files


@pytest.mark.parametrize("side", [200, 120], ids=["over twice the limit", "between once and twice"])
def test_a_decompression_bomb_is_skipped_with_its_reason(tmp_path, monkeypatch, side):
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")  # 40,000 or 14,400 pixels, guard at 10,000
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "fine.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    images, bad = decode_files([str(tmp_path / "bomb.png"), str(tmp_path / "fine.png")], (32, 32), 3)
    assert bad == [(0, "image too large: over 10,000 pixels (decompression-bomb guard); scale it down")]
    assert images[1, :, 0, 0].tolist() == [9, 9, 9]


def test_two_processes_building_the_same_cache_leave_one_valid_cache(image_folder, isolated):
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from deepstep.data.sources import open_image_source
        from deepstep.tasks.image_classification import Preprocessing, load_split
        source = open_image_source({str(image_folder)!r}, Path({str(isolated)!r}))
        pixels = load_split(source, "train", Preprocessing(3, (32, 32), None, [], []), Path({str(isolated)!r}),
                            strict=False, log=print, progress=False, workers=1)
        print(int(pixels.images.sum()))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    sums = [p.communicate(timeout=300)[0].split()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs) and sums[0] == sums[1]
    caches = list((isolated / "decoded").glob("*.safetensors"))
    leftovers = list((isolated / "decoded").glob(".tmp-*"))
    assert len(caches) == 1 and not leftovers
    from safetensors.numpy import load_file

    cached = load_file(str(caches[0]))
    assert int(cached["images"].astype(np.int64).sum()) == int(sums[0])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file, so permissions cannot make one unreadable")
def test_an_unreadable_image_is_skipped_as_permission_denied(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "locked.png")
    (tmp_path / "locked.png").chmod(0)
    _, bad = decode_files([str(tmp_path / "locked.png")], (32, 32), 3)
    assert bad == [(0, "permission denied")]


def test_empty_and_truncated_files_are_skipped_with_reasons_that_say_so(tmp_path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "whole.jpg", quality=95)
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    paths = [str(tmp_path / name) for name in ("empty.jpg", "truncated.jpg", "whole.jpg")]
    _, bad = decode_files(paths, (32, 32), 3)
    assert bad == [(0, "empty file (0 bytes)"), (1, "truncated image file")]
