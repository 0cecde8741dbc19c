import dataclasses

import numpy as np
import pytest

from popos.data import DATASETS, get_dataset
from popos.geometry import flip_points

# Flip pairs as published (mmpose / HRNet-Facial / STAR), re-typed independently of the
# flip_index lists in the registry: the two must describe the same permutation.
PAIRS = {
    "wflw": [(i, 32 - i) for i in range(16)] + [
        (33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47), (55, 59),
        (56, 58), (60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73), (76, 82),
        (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95), (96, 97),
    ],
    "300w": [(i, 16 - i) for i in range(8)] + [
        (17, 26), (18, 25), (19, 24), (20, 23), (21, 22), (31, 35), (32, 34), (36, 45), (37, 44), (38, 43),
        (39, 42), (40, 47), (41, 46), (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63),
        (65, 67),
    ],
    "cofw": [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19), (22, 23)],
    "aflw": [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)],
}
PAIRS["cocowb_face"] = PAIRS["synth"] = PAIRS["300w"]
LANDMARKS = {"wflw": 98, "300w": 68, "cofw": 29, "aflw": 19, "cocowb_face": 68, "synth": 68}
NORMS = {"wflw": (60, 72), "300w": (36, 45), "cofw": (8, 9), "aflw": None, "cocowb_face": (36, 45), "synth": (36, 45)}
SIZES = {
    "wflw": {"train": 7500, "test": 2500, "test_largepose": 326, "test_expression": 314, "test_illumination": 698,
             "test_makeup": 206, "test_occlusion": 736, "test_blur": 773},
    "300w": {"train": 3148, "common": 554, "challenging": 135, "full": 689, "test": 600},
    "cofw": {"train": 1345, "test": 507},
    "aflw": {"train": 20000, "test": 4386, "frontal": 1165},
}


def test_names():
    assert list(DATASETS) == ["wflw", "300w", "cofw", "aflw", "cocowb_face", "synth"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown dataset 'ibug'; known datasets: wflw, 300w, cofw, aflw"):
        DATASETS["ibug"]
    with pytest.raises(ValueError, match="known datasets: .*cocowb_face, synth"):
        get_dataset("ibug")


@pytest.mark.parametrize("name", list(LANDMARKS))
def test_spec(name):
    spec = DATASETS[name]
    assert spec.name == name and spec.num_landmarks == LANDMARKS[name]
    assert spec.norm_indices == NORMS[name]
    expected = list(range(spec.num_landmarks))
    for a, b in PAIRS[name]:
        expected[a], expected[b] = b, a
    assert spec.flip_index == expected
    spec.split(spec.train_split)
    spec.split(spec.test_split)


@pytest.mark.parametrize("name", list(LANDMARKS))
def test_flip_twice_is_identity_and_swaps_sides(name):
    spec = DATASETS[name]
    pts = np.random.default_rng(0).uniform(0, 100, size=(spec.num_landmarks, 2))
    once = flip_points(pts, 101, spec.flip_index)
    np.testing.assert_allclose(flip_points(once, 101, spec.flip_index), pts)
    if spec.norm_indices is not None:  # the two normaliser points are a left/right pair
        i, j = spec.norm_indices
        assert spec.flip_index[i] == j


@pytest.mark.parametrize("name", list(SIZES))
def test_published_split_sizes(name):
    assert {s.name: s.count for s in DATASETS[name].splits} == SIZES[name]


def test_defaults_and_sources():
    assert (DATASETS["300w"].train_split, DATASETS["300w"].test_split) == ("train", "full")
    assert DATASETS["cocowb_face"].test_split == "val"
    assert DATASETS["300w"].needs_manual_steps and DATASETS["aflw"].needs_manual_steps
    assert not DATASETS["cofw"].needs_manual_steps
    assert DATASETS["synth"].generated and not DATASETS["synth"].sources
    for spec in DATASETS.values():
        assert spec.licence
        assert len({s.filename for s in spec.sources}) == len(spec.sources)
        for s in spec.sources:
            assert s.url.startswith("http")
            assert s.sha256 is None or len(s.sha256) == 64


def test_split_lookup_error_lists_splits():
    with pytest.raises(KeyError, match="known splits: train, test, frontal"):
        DATASETS["aflw"].split("valid")


def test_spec_validation():
    spec = DATASETS["cofw"]
    with pytest.raises(ValueError, match="permutation"):
        dataclasses.replace(spec, flip_index=[0] * 29)
    with pytest.raises(ValueError, match="own inverse"):
        dataclasses.replace(spec, flip_index=list(range(1, 29)) + [0])
    with pytest.raises(ValueError, match="out of range"):
        dataclasses.replace(spec, norm_indices=(8, 29))
    with pytest.raises(ValueError, match="default split 'val'"):
        dataclasses.replace(spec, test_split="val")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_landmarks = 30


@pytest.mark.parametrize("name", [n for n in LANDMARKS if n != "synth"])
def test_registry_says_which_raw_layout_each_reader_accepts(name):
    from popos.data import formats

    layout = DATASETS[name].raw_layout
    reader = layout.split(":", 1)[0]
    assert callable(getattr(formats, reader)), reader  # names a reader of popos.data.formats
    for source in DATASETS[name].sources:
        if not source.extract:  # an annotation file read as it is: its name and layout are described
            assert source.filename.split("_")[0] in layout
