"""Stratified, seeded splits: every class keeps its share in each part."""

from __future__ import annotations

import numpy as np

from deepstep.errors import DeepstepError


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, option: str = "", items: str = "images", instead: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with about `fraction` of each class held out, both sorted.

    Each class with at least two items keeps one and holds one out at the least, so that
    a small class is neither lost from training nor missing from evaluation. When no class has
    two, the error names `option` (the flag and value that asked for the split) and `instead`
    (what else the user can do).
    """
    labels = np.asarray(labels)
    if fraction <= 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(seed)
    keep, held_out = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n_out = int(round(len(members) * fraction))
        n_out = min(max(n_out, 1), len(members) - 1) if len(members) >= 2 else 0
        held_out.append(members[:n_out])
        keep.append(members[n_out:])
    keep_idx, out_idx = np.sort(np.concatenate(keep)), np.sort(np.concatenate(held_out))
    if len(out_idx) == 0:
        classes = len(np.unique(labels))
        raise DeepstepError(
            f"{option or f'a split of {fraction:g}'}: no class has two {items}, so none can be held out "
            f"({len(labels)} {items} in {classes} classes); add {items}, at least two a class{instead}"
        )
    return keep_idx, out_idx
