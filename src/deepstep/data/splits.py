"""Stratified, seeded splits: every class keeps its share in each part."""

from __future__ import annotations

import numpy as np

from deepstep.errors import DeepstepError


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with about `fraction` of each class held out, both sorted.

    Each class with at least two items keeps one and holds one out at the least, so that
    a small class is neither lost from training nor missing from evaluation.
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
        raise DeepstepError(
            f"a split of {fraction} leaves nothing to hold out from {len(labels)} images; add images or raise the split"
        )
    return keep_idx, out_idx
