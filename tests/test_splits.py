import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepstep.data.splits import stratified_split
from deepstep.errors import DeepstepError


def test_each_class_keeps_its_share_in_the_held_out_part():
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [20, 10, 2]


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    labels = np.repeat([0, 1], 50)
    assert np.array_equal(stratified_split(labels, 0.1, 1)[1], stratified_split(labels, 0.1, 1)[1])
    assert not np.array_equal(stratified_split(labels, 0.1, 1)[1], stratified_split(labels, 0.1, 2)[1])


def test_a_zero_fraction_holds_nothing_out():
    keep, held = stratified_split(np.arange(5) % 2, 0.0, 0)
    assert keep.tolist() == [0, 1, 2, 3, 4] and held.size == 0


def test_a_split_that_holds_nothing_out_is_an_error_that_says_each_class_needs_two():
    with pytest.raises(
        DeepstepError,
        match=r"^--val-split 0.5: no class has two images, so none can be held out \(3 images in 3 classes\); "
        r"add images, at least two a class$",
    ):
        stratified_split(np.array([0, 1, 2]), 0.5, 0, option="--val-split 0.5")  # a larger split would not help


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=6),
    fraction=st.floats(min_value=0.01, max_value=0.9),
    seed=st.integers(0, 2**31),
)
def test_the_two_parts_are_disjoint_and_cover_every_index(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    if not any(c >= 2 for c in counts):
        return
    keep, held = stratified_split(labels, fraction, seed)
    assert not set(keep) & set(held)
    assert sorted([*keep, *held]) == list(range(len(labels)))
    for cls, count in enumerate(counts):
        if count >= 2:  # a class with two or more items is on both sides
            assert (labels[held] == cls).any() and (labels[keep] == cls).any()
