import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popos import geometry
from popos.config import AugmentSection
from popos.data.registry import DATASETS
from popos.data.transforms import (
    Augmentation,
    color_jitter,
    input_affine,
    sample_augmentation,
    transform_landmarks,
    warp,
)

S = 64
FLIP68 = DATASETS["synth"].flip_index
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

augmentations = st.builds(
    Augmentation,
    flip=st.booleans(),
    rotation=st.floats(-60, 60),
    scale=st.floats(0.75, 1.25),
    shift=st.tuples(st.floats(-0.05, 0.05), st.floats(-0.05, 0.05)),
)
points68 = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).uniform(-20, 120, size=(68, 2)))


def _view(aug: Augmentation | None) -> np.ndarray:
    return input_affine((50.0, 40.0), 80.0, S, aug)


@SETTINGS
@given(points68, augmentations)
def test_flipping_twice_returns_the_same_landmarks(points, aug):
    flip = input_affine((S / 2, S / 2), S, S, Augmentation(flip=True))  # a pure mirror of the input
    once = transform_landmarks(points, _view(aug), FLIP68 if aug.flip else None)
    twice = transform_landmarks(once, flip, FLIP68)
    np.testing.assert_allclose(transform_landmarks(twice, flip, FLIP68), once, atol=1e-9)
    # mirroring the augmented view gives the view with the opposite flip (the flip acts after the turn)
    opposite = Augmentation(flip=not aug.flip, rotation=aug.rotation, scale=aug.scale,
                            shift=(-aug.shift[0], aug.shift[1]))
    np.testing.assert_allclose(twice, transform_landmarks(points, _view(opposite), FLIP68 if opposite.flip else None),
                               atol=1e-9)
    np.testing.assert_allclose(geometry.flip_points(once, S, FLIP68), twice, atol=1e-9)


@SETTINGS
@given(points68, st.floats(-60, 60), st.floats(0.75, 1.25))
def test_rotating_and_rotating_back_returns_the_same_landmarks(points, rotation, scale):
    turned = transform_landmarks(points, _view(Augmentation(rotation=rotation, scale=scale)))
    back = transform_landmarks(turned, input_affine((S / 2, S / 2), S, S, Augmentation(rotation=-rotation)))
    np.testing.assert_allclose(back, transform_landmarks(points, _view(Augmentation(scale=scale))), atol=1e-9)


def _blob(shape, centre, sigma):
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    g = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat((255 * g).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image):
    """Sub-pixel position of a single blob on black: the intensity centroid of the whole image."""
    g = image[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
    return np.array([(g * xs).sum() / g.sum(), (g * ys).sum() / g.sum()])


@SETTINGS
@given(st.floats(40, 60), st.floats(32, 48), augmentations)
def test_warped_dot_peaks_at_the_transformed_landmark(x, y, aug):
    image = _blob((90, 100), (x, y), sigma=2.5)
    m = _view(aug)
    expected = transform_landmarks(np.array([[x, y]]), m)[0]
    # a half-pixel convention error would move the peak by about 0.5 px; interpolation costs < 0.05 px
    np.testing.assert_allclose(_centroid(warp(image, m, S)), expected, atol=0.05)


def test_single_pixel_lands_exactly_where_its_coordinate_goes():
    image = np.zeros((S, S, 3), np.uint8)
    image[21, 10] = 255  # pixel (x=10, y=21)
    m = input_affine((S / 2, S / 2), S, S, Augmentation(flip=True, shift=(3 / S, -2 / S)))
    out = warp(image, m, S)
    (x, y), = transform_landmarks(np.array([[10.0, 21.0]]), m)
    assert (x, y) == (S - 1 - 10 + 3, 21 - 2)
    assert out[int(y), int(x), 0] == 255 and out[..., 0].sum() == 255


def test_sample_augmentation_follows_the_config():
    rng = np.random.default_rng(0)
    cfg = AugmentSection(translate=0.05, color_jitter=0.2)  # the demo's shift and colour jitter
    draws = [sample_augmentation(rng, cfg) for _ in range(4000)]
    flips = np.mean([a.flip for a in draws])
    rotations = np.array([a.rotation for a in draws])
    scales = np.array([a.scale for a in draws])
    shifts = np.array([a.shift for a in draws])
    colour = np.array([[a.brightness, a.contrast, a.saturation] for a in draws])
    assert abs(flips - cfg.flip_prob) < 0.03
    assert abs(np.mean(rotations != 0) - cfg.rotation_prob) < 0.03
    assert np.abs(rotations).max() <= cfg.rotation_max and np.abs(rotations).max() > 50
    assert 25 < rotations[rotations != 0].std() < 32  # N(0, 30) clipped at 60
    assert scales.min() >= cfg.scale_min and scales.max() <= cfg.scale_max
    assert np.mean(scales == cfg.scale_max) > 0.1  # the clip at 1 + sigma is reached often (P = 0.16)
    assert np.abs(shifts).max() <= cfg.translate
    assert np.abs(colour - 1).max() <= cfg.color_jitter and np.abs(colour - 1).max() > 0.19

    off = AugmentSection(flip_prob=0, rotation_prob=0, scale_std=0, translate=0, color_jitter=0)
    assert sample_augmentation(rng, off) == Augmentation()


def test_sample_augmentation_is_seeded():
    cfg = AugmentSection()
    a = [sample_augmentation(np.random.default_rng(7), cfg) for _ in range(2)]
    assert a[0] == a[1]
    assert sample_augmentation(np.random.default_rng(8), cfg) != a[0]


def test_color_jitter():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, size=(8, 8, 3), dtype=np.uint8)
    luma = image @ np.array([0.299, 0.587, 0.114])
    # outputs are uint8: within rounding (cv2's fixed-point colour transform is a little coarser than 0.5)
    out = color_jitter(image, Augmentation())
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)
    np.testing.assert_allclose(color_jitter(image, Augmentation(brightness=0.5)), image / 2, atol=0.6)
    grey = color_jitter(image, Augmentation(saturation=0.0)).astype(np.float64)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    np.testing.assert_allclose(grey[..., 0], luma, atol=0.6)
    np.testing.assert_allclose(color_jitter(image, Augmentation(contrast=0.0)), luma.mean(), atol=0.6)
    mixed = Augmentation(brightness=1.1, contrast=0.8, saturation=1.2)  # the three blends in turn, one clip
    expected = image * 1.1
    expected = 1.2 * expected + (1 - 1.2) * (expected @ [0.299, 0.587, 0.114])[..., None]
    expected = 0.8 * expected + 0.2 * (image * 1.1 @ [0.299, 0.587, 0.114]).mean()
    np.testing.assert_allclose(color_jitter(image, mixed), np.clip(expected, 0, 255), atol=0.6)
    assert color_jitter(np.full((2, 2, 3), 200, np.uint8), Augmentation(brightness=2.0)).max() == 255


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="side must be positive"):
        input_affine((0, 0), 0.0, S)
    with pytest.raises(ValueError, match="image must be uint8"):
        warp(np.zeros((4, 4), np.uint8), np.eye(2, 3), S)
    with pytest.raises(ValueError, match="flip_index must be a permutation"):
        transform_landmarks(np.zeros((3, 2)), np.eye(2, 3), [0, 0, 1])
    with pytest.raises(ValueError, match="scale_min"):
        AugmentSection(scale_min=1.5, scale_max=1.2)
