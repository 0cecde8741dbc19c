import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from popos import geometry
from popos.config import AugmentSection
from popos.data.dataset import IMAGENET_MEAN, IMAGENET_STD, LandmarkDataset, input_from_image
from popos.data.prepared import PreparedWriter
from popos.data.synth import write_synth_dataset

S = 64  # network input
CROP = 96  # = context 1.5 x input: the test view is the crop's centre, one crop px per input px
FLIP = [1, 0, 2]  # landmarks 0 and 1 are a left/right pair
COLOURS = np.eye(3) * 255  # landmark k is a blob in colour channel k


def _blobs(points, size, sigma=2.0):
    ys, xs = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3))
    for (x, y), colour in zip(points, COLOURS, strict=True):
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))[..., None] * colour
    return np.clip(image.round(), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def blob_split(tmp_path_factory):
    """Faces whose crops show landmark k as a Gaussian blob in channel k, with varied crop geometry."""
    out = tmp_path_factory.mktemp("blobs") / "blobs" / "train"
    rng = np.random.default_rng(0)
    with PreparedWriter(out, "blobs", "train", num_landmarks=3, crop_size=CROP) as w:
        for i in range(8):
            landmarks = rng.uniform(100, 200, size=(3, 2))
            box = np.concatenate([landmarks.min(0), np.ptp(landmarks, 0)])
            centre, side = geometry.square_box(box, 1.25)
            crop_affine = geometry.crop_affine(centre, 1.5 * side, CROP)
            crop = _blobs(geometry.apply_affine(landmarks, crop_affine), CROP)
            w.add(image=f"f{i}", crop=crop, landmarks=landmarks, visible=[True, True, i != 3], box=box, norm=10.0 + i,
                  crop_affine=crop_affine)
    return out


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "synth"
    write_synth_dataset(root, n_train=6, n_test=2, seed=0, crop_size=CROP, progress=False)
    return root


def _pixels(item):
    """Undo the ImageNet normalisation: float RGB 0-255 [S, S, 3]."""
    return (item["image"].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN) * 255


def _centroid(channel, around, radius=8):
    ys, xs = np.mgrid[: channel.shape[0], : channel.shape[1]]
    w = channel * ((xs - around[0]) ** 2 + (ys - around[1]) ** 2 <= radius**2)
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


def test_test_item_is_the_padded_box_square(synth_dir):
    ds = LandmarkDataset(synth_dir / "test", input_size=S)
    item = ds[1]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    assert item["landmarks"].shape == (68, 2) and item["visible"].shape == (68,)
    assert item["image_to_input"].shape == (2, 3) and item["norm"].dtype == torch.float32
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 1
    split = ds.split
    centre, side = geometry.square_box(split.box[1], split.meta["padding"])
    np.testing.assert_allclose(item["image_to_input"], geometry.crop_affine(centre, side, S), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(item["landmarks"], geometry.apply_affine(split.landmarks[1], item["image_to_input"]
                                                                        .numpy()), atol=1e-3)
    # the input is exactly the centre of the crop: one crop px per input px, offset (CROP - S) / 2
    np.testing.assert_allclose(_pixels(item), split.crops[1][16:80, 16:80], atol=0.01)
    assert float(item["norm"]) == pytest.approx(split.norm[1])


def test_input_from_image_matches_the_test_item(blob_split):
    ds = LandmarkDataset(blob_split, input_size=S)
    split = ds.split
    # treat face 2's crop as a raw photo: its box in crop px, padding 1.25
    box = np.concatenate([geometry.apply_affine(split.box[2:3, :2], split.crop_affine[2])[0],
                          split.box[2, 2:] * split.crop_affine[2, 0, 0]])
    tensor, image_to_input = input_from_image(split.crops[2], box, S, 1.25)
    assert tensor.shape == (3, S, S) and image_to_input.dtype == np.float32
    np.testing.assert_allclose(tensor, ds[2]["image"], atol=1e-4)
    with pytest.raises(ValueError, match="box must be"):
        input_from_image(split.crops[2], [0, 0, -1, 5], S)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_augmented_blobs_sit_at_the_augmented_landmarks(blob_split, epoch):
    cfg = AugmentSection(flip_prob=0.5, rotation_prob=1.0, translate=0.05, color_jitter=0.0)
    ds = LandmarkDataset(blob_split, input_size=S, train=True, augment=cfg, seed=1, flip_index=FLIP)
    ds.set_epoch(epoch)
    flips, checked = [], 0
    for i in range(len(ds)):
        item, aug = ds[i], ds.augmentation(i)
        pixels = _pixels(item)
        flips.append(aug.flip)
        for k, point in enumerate(item["landmarks"].numpy()):
            if not (item["visible"][k] and (point >= 8).all() and (point <= S - 9).all()):
                continue  # the blob must lie whole inside the input to be measured
            # after a flip, landmark k is the mirrored landmark FLIP[k]: its blob has that landmark's colour
            channel = FLIP[k] if aug.flip else k
            assert pixels[..., channel][int(round(point[1])), int(round(point[0]))] > 150
            np.testing.assert_allclose(_centroid(pixels[..., channel], point), point, atol=0.06)
            checked += 1
    assert checked >= 8
    assert set(flips) == {False, True}  # both branches are exercised


def test_visible_marks_annotated_landmarks_inside_the_input(blob_split):
    cfg = AugmentSection(flip_prob=0.0, rotation_prob=0.0, scale_min=0.3, scale_max=0.3, scale_std=1.0,
                         translate=0.0)
    ds = LandmarkDataset(blob_split, input_size=S, train=True, augment=cfg)  # zoom in: points leave the input
    for i in range(len(ds)):
        item = ds[i]
        lm = item["landmarks"].numpy()
        inside = ((lm >= 0) & (lm <= S - 1)).all(axis=1)
        np.testing.assert_array_equal(item["visible"].numpy(), (inside & ds.split.visible[i]).astype(np.float32))
    assert ds[3]["visible"][2] == 0  # not annotated as visible


def test_items_depend_only_on_seed_epoch_and_index(synth_dir):
    ds = LandmarkDataset(synth_dir / "train", input_size=S, train=True, seed=5)
    first = ds[3]
    ds.set_epoch(1)
    other_epoch = ds[3]
    ds.set_epoch(0)
    torch.testing.assert_close(ds[3], first)
    assert not torch.equal(other_epoch["landmarks"], first["landmarks"])
    assert not torch.equal(LandmarkDataset(synth_dir / "train", input_size=S, train=True, seed=6)[3]["image"],
                           first["image"])
    ds.set_epoch(1)
    serial = next(iter(DataLoader(ds, batch_size=6, num_workers=0)))
    parallel = next(iter(DataLoader(ds, batch_size=6, num_workers=2)))
    torch.testing.assert_close(serial, parallel)
    torch.testing.assert_close(serial["landmarks"][3], other_epoch["landmarks"])


def test_pickles_without_the_crops(synth_dir):
    ds = LandmarkDataset(synth_dir / "train", input_size=S)
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000  # the memory-mapped crops (6 x 96 x 96 x 3 bytes) are reopened, not copied
    torch.testing.assert_close(pickle.loads(blob)[2], ds[2])


def test_errors_are_clear(blob_split, synth_dir):
    with pytest.raises(ValueError, match="'blobs' is not in the registry; pass flip_index"):
        LandmarkDataset(blob_split, train=True)
    with pytest.raises(ValueError, match="flip_index must be a permutation"):
        LandmarkDataset(blob_split, train=True, flip_index=[0, 0, 1])
    LandmarkDataset(blob_split, train=True, augment=AugmentSection(flip_prob=0.0))  # no flips, no flip_index needed
    with pytest.raises(IndexError, match="out of range"):
        LandmarkDataset(synth_dir / "test")[2]
    with pytest.raises(FileNotFoundError, match="not a prepared split"):
        LandmarkDataset(synth_dir / "nothing")
