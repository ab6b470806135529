"""Make src/deepstep/data/samples/cifar10-sample.tar.gz: a stratified sample of CIFAR-10.

    python scripts/make_cifar10_sample.py ../shared/data/cifar10-jpeg.tar.gz

Takes TRAIN_PER_CLASS images of each class from the standard train split and TEST_PER_CLASS
from the standard test split (seeded), keeping the original JPEG bytes, and writes a
byte-for-byte reproducible archive (sorted names, fixed times and owners).
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

TRAIN_PER_CLASS = 450
TEST_PER_CLASS = 100
SEED = 2024
OUT = Path(__file__).resolve().parents[1] / "src" / "deepstep" / "data" / "samples" / "cifar10-sample.tar.gz"


def main(source: str) -> None:
    members: dict[tuple[str, str], list[tarfile.TarInfo]] = defaultdict(list)
    with tarfile.open(source) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test"):
                members[(parts[-3], parts[-2])].append(m)
        rng = np.random.default_rng(SEED)
        chosen = []
        for split, cls in sorted(members):
            files = sorted(members[(split, cls)], key=lambda m: m.name)
            count = TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS
            for i in sorted(rng.choice(len(files), size=count, replace=False)):
                chosen.append((f"{split}/{cls}/{Path(files[i].name).name}", tar.extractfile(files[i]).read()))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for name, data in sorted(chosen):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            out.addfile(info, io.BytesIO(data))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(buffer.getvalue())
    print(f"{OUT}: {len(chosen)} images, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cifar10-jpeg.tar.gz")
