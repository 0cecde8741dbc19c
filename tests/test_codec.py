import math

import pytest
import torch

from popos.codec import distance_maps, encode_heatmaps


def test_unbiased_target_is_the_gaussian_at_the_exact_point():
    coords = torch.tensor([[[2.3, 1.6], [0.0, 3.0]]])  # [1, 2, 2]
    hm = encode_heatmaps(coords, (4, 5), sigma=1.5)
    assert hm.shape == (1, 2, 4, 5) and hm.dtype == torch.float32
    for k, (cx, cy) in enumerate(coords[0].tolist()):
        for y in range(4):
            for x in range(5):
                want = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 1.5**2))
                assert hm[0, k, y, x].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    # off-pixel point: peak below 1 at the nearest pixel (2, 2); on a pixel centre: exactly 1
    assert hm[0, 0].max().item() < 1 and hm[0, 0].argmax().item() == 2 * 5 + 2
    assert hm[0, 1, 3, 0].item() == 1.0


def test_biased_target_is_centred_on_the_rounded_pixel():
    hm = encode_heatmaps(torch.tensor([[2.3, 1.6], [4.5, 0.49]]), 8, unbiased=False)
    assert hm[0, 2, 2].item() == 1.0  # (2.3, 1.6) -> pixel (2, 2)
    assert hm[1, 0, 5].item() == 1.0  # halves round up: (4.5, 0.49) -> (5, 0)
    # symmetric around the pixel: equal left/right neighbours
    assert hm[0, 2, 1].item() == hm[0, 2, 3].item()


def test_points_outside_the_map_and_leading_dims():
    coords = torch.tensor([[-3.0, 2.0], [10.0, 10.0]]).expand(3, 2, 2, 2)
    hm = encode_heatmaps(coords, 6)
    assert hm.shape == (3, 2, 2, 6, 6)
    # the visible tail of a Gaussian centred 3 px left of the map: largest in column 0, row 2
    assert hm[0, 0, 0].argmax().item() == 2 * 6 + 0
    assert hm[0, 0, 0, 2, 0].item() == pytest.approx(math.exp(-9 / 8), rel=1e-6)


def test_encode_rejects_bad_input():
    with pytest.raises(TypeError, match="coords"):
        encode_heatmaps([[1.0, 2.0]], 4)
    with pytest.raises(ValueError, match=r"\[\.\.\., K, 2\]"):
        encode_heatmaps(torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match="sigma"):
        encode_heatmaps(torch.zeros(1, 2), 4, sigma=0)
    with pytest.raises(ValueError, match="heatmap_size"):
        encode_heatmaps(torch.zeros(1, 2), (4, 0))
    with pytest.raises(ValueError, match="1 non-finite"):
        encode_heatmaps(torch.tensor([[1.0, float("nan")]]), 4)


def test_distance_maps_invert_a_unit_gaussian():
    hm = encode_heatmaps(torch.tensor([[3.0, 2.0]]), 8)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    true = ((xs - 3) ** 2 + (ys - 2) ** 2).sqrt()
    d = distance_maps(hm)
    near = true < 6  # h > exp(-36 / 8) = 0.011, far above float32 rounding
    torch.testing.assert_close(d[0][near], true[near], atol=2e-3, rtol=0)
    torch.testing.assert_close(distance_maps(hm, squared=True)[0][near], true[near] ** 2, atol=1e-2, rtol=0)


def test_distance_maps_clip():
    d = distance_maps(torch.tensor([2.0, 1.0, 0.0, -1.0]), sigma=2.0, eps=1e-9)
    far = math.sqrt(-8 * math.log(1e-9))  # 12.87 px
    assert d.tolist() == pytest.approx([0.0, 0.0, far, far], rel=1e-6)
    with pytest.raises(ValueError, match="eps"):
        distance_maps(torch.ones(1), eps=0)
    with pytest.raises(ValueError, match="sigma"):
        distance_maps(torch.ones(1), sigma=-1)
