import numpy as np
import pytest

from popos import geometry


def test_stride_and_mappings_are_inverse():
    pts = np.array([[10.3, 57.8], [0.0, 255.0]])
    for size in (64, 32, 16, 8, 4):
        assert geometry.stride(256, size) == 256 / size
        hm = geometry.input_to_heatmap(pts, 256, size)
        np.testing.assert_allclose(geometry.heatmap_to_input(hm, 256, size), pts)
    with pytest.raises(ValueError, match="positive"):
        geometry.stride(256, 0)


def test_crop_affine_maps_centre_and_corners():
    m = geometry.crop_affine((100.0, 50.0), side=200.0, out_size=256)
    out = geometry.apply_affine(np.array([[100.0, 50.0], [0.0, 50.0], [200.0, -50.0]]), m)
    np.testing.assert_allclose(out, [[128, 128], [0, 128], [256, 0]], atol=1e-9)


def test_rotation_by_90_degrees_turns_right_into_up():
    m = geometry.crop_affine((0.0, 0.0), side=256.0, out_size=256, rotation_deg=90)
    # a point to the right of the centre ends up above it (smaller y) after a counter-clockwise turn
    np.testing.assert_allclose(geometry.apply_affine(np.array([[10.0, 0.0]]), m), [[128, 118]], atol=1e-9)


def test_invert_and_compose():
    rng = np.random.default_rng(0)
    m = geometry.crop_affine((40.0, 70.0), 90.0, 256, rotation_deg=17, flip=True)
    pts = rng.uniform(0, 200, size=(5, 2))
    back = geometry.apply_affine(geometry.apply_affine(pts, m), geometry.invert_affine(m))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    ident = geometry.compose_affine(geometry.invert_affine(m), m)
    np.testing.assert_allclose(ident, [[1, 0, 0], [0, 1, 0]], atol=1e-9)


def test_flip_points_twice_is_identity_and_swaps_pairs():
    pts = np.array([[[1.0, 2.0], [5.0, 6.0], [3.0, 3.0]]])
    flipped = geometry.flip_points(pts, width=10, flip_index=[1, 0, 2])
    np.testing.assert_allclose(flipped, [[[4.0, 6.0], [8.0, 2.0], [6.0, 3.0]]])
    np.testing.assert_allclose(geometry.flip_points(flipped, 10, [1, 0, 2]), pts)


def test_square_box():
    centre, side = geometry.square_box(np.array([10.0, 20.0, 40.0, 80.0]))
    np.testing.assert_allclose(centre, [30, 60])
    assert side == pytest.approx(100.0)
