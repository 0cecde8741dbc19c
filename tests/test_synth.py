import cv2
import numpy as np
import pytest

from popos import geometry
from popos.cli import main
from popos.data import synth
from popos.data.prepared import PreparedSplit
from popos.data.registry import DATASETS

SPEC = DATASETS["synth"]


@pytest.fixture(scope="module")
def renderer():
    return synth.SynthRenderer(192, seed=3)


def test_faces_are_deterministic_and_independent_of_order(renderer):
    later = renderer.render("train", 5)
    first = synth.SynthRenderer(192, seed=3).render("train", 5)
    np.testing.assert_array_equal(later.crop, first.crop)
    np.testing.assert_array_equal(later.landmarks, first.landmarks)
    assert not np.array_equal(renderer.render("train", 6).landmarks, later.landmarks)
    assert not np.array_equal(renderer.render("test", 5).landmarks, later.landmarks)
    assert not np.array_equal(synth.SynthRenderer(192, seed=4).render("train", 5).landmarks, later.landmarks)


def test_annotations_follow_the_prepared_convention(renderer):
    for i in range(12):
        face = renderer.render("train", i)
        lm = face.landmarks.astype(np.float64)
        assert face.crop.shape == (192, 192, 3) and face.crop.dtype == np.uint8
        np.testing.assert_allclose(face.box[:2], lm.min(axis=0), atol=1e-3)
        np.testing.assert_allclose(face.box[2:], np.ptp(lm, axis=0), atol=1e-3)
        i36, i45 = SPEC.norm_indices
        assert face.norm == pytest.approx(np.linalg.norm(lm[i45] - lm[i36]), rel=1e-5)
        centre, side = geometry.square_box(face.box, synth.DEFAULT_PADDING)
        expected = geometry.crop_affine(centre, synth.DEFAULT_CONTEXT * side, 192)
        np.testing.assert_allclose(face.crop_affine, expected, rtol=1e-5, atol=1e-3)
        # all landmarks inside the test-time view, the inner 1 / context of the crop
        in_crop = geometry.apply_affine(lm, face.crop_affine.astype(np.float64))
        margin = 192 * (1 - 1 / synth.DEFAULT_CONTEXT) / 2
        assert in_crop.min() >= margin - 1 and in_crop.max() <= 192 - margin + 1


def test_landmarks_follow_the_ibug_layout(renderer):
    for i in range(20):
        lm = renderer.render("test", i).landmarks.astype(np.float64)
        across = lm[45] - lm[36]
        across /= np.linalg.norm(across)
        down = np.array([-across[1], across[0]])  # image y points down
        a, d = lm @ across, lm @ down
        assert a[36] < a[39] < a[42] < a[45]  # outer and inner eye corners, image left to right
        assert a[0] < a[8] < a[16] and a[48] < a[51] < a[54] and a[31] < a[33] < a[35]
        assert a[17] < a[21] < a[22] < a[26]
        assert d[19] < d[37] < d[41] < d[30] < d[51] < d[57] < d[8]  # brow, lids, nose tip, lips, chin
        np.testing.assert_array_equal(np.asarray(SPEC.flip_index)[SPEC.flip_index], np.arange(68))


def test_every_landmark_sits_on_a_drawn_feature(monkeypatch):
    """On clean renders (no noise, blur or lighting) every landmark is within 2 px of an edge of a drawn
    feature, while points of the face away from the landmarks mostly are not."""
    monkeypatch.setattr(synth, "_degrade", lambda img, native, rng, noise: img)  # noqa: ARG005
    renderer = synth.SynthRenderer(256, seed=1)
    near, control = [], []
    rng = np.random.default_rng(0)
    for i in range(10):
        face = renderer.render("train", i)
        grey = cv2.cvtColor(face.crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
        edges = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)) > 40
        edges = cv2.dilate(edges.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        lm = geometry.apply_affine(face.landmarks.astype(np.float64), face.crop_affine.astype(np.float64))
        near.append(edges[np.round(lm[:, 1]).astype(int), np.round(lm[:, 0]).astype(int)])
        # control: points between the nose and the jaw (the cheeks), where nothing is drawn
        t = rng.uniform(0.3, 0.7, size=(20, 1))
        cheeks = t * lm[rng.choice([2, 3, 4, 12, 13, 14], 20)] + (1 - t) * lm[rng.choice([29, 30], 20)]
        control.append(edges[np.round(cheeks[:, 1]).astype(int), np.round(cheeks[:, 0]).astype(int)])
    assert np.mean(near) > 0.97  # occluders may cover a few landmarks with a flat patch
    assert np.mean(control) < 0.5


def test_write_synth_dataset(tmp_path):
    synth.write_synth_dataset(tmp_path / "synth", n_train=5, n_test=3, seed=2, crop_size=64, progress=False)
    train, test = PreparedSplit.open(tmp_path / "synth" / "train"), PreparedSplit.open(tmp_path / "synth" / "test")
    assert (len(train), len(test)) == (5, 3)
    assert train.meta["dataset"] == "synth" and train.num_landmarks == SPEC.num_landmarks
    assert train.visible.all() and list(train.image[:2]) == ["train/000000", "train/000001"]
    face = synth.SynthRenderer(64, seed=2).render("test", 2)
    np.testing.assert_array_equal(test.crops[2], face.crop)
    np.testing.assert_allclose(test.landmarks[2], face.landmarks)
    # more training faces leave the first ones unchanged
    synth.write_synth_dataset(tmp_path / "more", n_train=7, n_test=1, seed=2, crop_size=64, progress=False)
    np.testing.assert_array_equal(PreparedSplit.open(tmp_path / "more" / "train").crops[:5], train.crops[:])


def test_cli_synth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--out", "prep", "--n", "2", "--n-test", "1", "--set", "data.crop_size=48"]) == 0
    assert len(PreparedSplit.open(tmp_path / "prep" / "synth" / "train")) == 2
    assert main(["data", "synth", "--out", "prep", "--n", "2", "--set", "data.crop_size=8"]) == 2


def test_bad_arguments_are_named(renderer):
    with pytest.raises(ValueError, match="n_train must be a positive integer"):
        synth.write_synth_dataset("unused", n_train=0, n_test=1, seed=0, crop_size=64)
    with pytest.raises(ValueError, match="crop_size must be at least 32"):
        synth.SynthRenderer(16)
    with pytest.raises(ValueError, match="split must be one of"):
        renderer.render("val", 0)
