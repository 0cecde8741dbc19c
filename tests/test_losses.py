import math

import pytest
import torch

from popos.losses import LandmarkLoss, heatmap_mse, ma_loss, topk_mask


def _maps(seed=0, shape=(2, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def test_heatmap_mse_is_the_weighted_pixel_mean():
    pred, target = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    pred[0, 0, 0, 0] = 2.0  # error 4 on one of 8 pixels of a visible landmark
    pred[0, 1] = 5.0  # the invisible landmark's errors do not count, its pixels stay in the mean
    assert heatmap_mse(pred, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(4 / 8)
    assert heatmap_mse(pred, target).item() == pytest.approx((4 + 4 * 25) / 8)


def test_topk_mask_picks_exactly_k_with_row_major_ties():
    hm = torch.tensor([[[0.0, 2.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 0.0]]])
    assert topk_mask(hm, 2).tolist() == [[[False, True, False], [False, True, False], [False, False, False]]]
    # three pixels tie at 1.0 for the last slot: the first in row-major order wins
    assert topk_mask(hm, 3).tolist() == [[[False, True, False], [True, True, False], [False, False, False]]]
    pred, _ = _maps(1)
    mask = topk_mask(pred, 5)
    assert mask.shape == pred.shape and (mask.sum((-2, -1)) == 5).all()
    # the k largest values are selected: every masked value >= every unmasked one, per map
    low = torch.where(mask, pred, torch.inf).amin((-2, -1))
    high = torch.where(mask, -torch.inf, pred).amax((-2, -1))
    assert (low >= high).all()
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, H\*W = 64\]"):
        topk_mask(pred, 65)


def test_ma_loss_on_a_hand_made_heatmap():
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 1], target[0, 0, 2, 2] = 1.0, 0.5
    pred = target.clone()
    pred[0, 0, 1, 1] = 0.7  # error 0.3 at the target's peak
    pred[0, 0, 3, 0] = 0.9  # spurious peak: error 0.9 where the target is 0
    pred[0, 0, 0, 3] = 0.1  # error 0.1, outside every top-2 mask
    # top-2 of pred: (3,0)=0.9, (1,1)=0.7 -> errors 0.9, 0.3
    assert ma_loss(pred, target, k=2, mask="pred").item() == pytest.approx(math.hypot(0.9, 0.3))
    # top-2 of target: (1,1), (2,2) -> errors 0.3, 0
    assert ma_loss(pred, target, k=2, mask="target").item() == pytest.approx(0.3)
    # union: (3,0), (1,1), (2,2)
    assert ma_loss(pred, target, k=2, mask="union").item() == pytest.approx(math.hypot(0.9, 0.3))
    # k=3 reaches (2,2)=0.5 in pred (error 0) but not (0,3)=0.1
    assert ma_loss(pred, target, k=3).item() == pytest.approx(math.hypot(0.9, 0.3))
    assert ma_loss(pred, target, k=16).item() == pytest.approx(math.sqrt(0.81 + 0.09 + 0.01))


def test_union_mask_covers_both_top_k_sets():
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 0, :2] = torch.tensor([1.0, 0.8])
    pred = torch.zeros(1, 1, 5, 5)
    pred[0, 0, 4, 3:] = torch.tensor([0.6, 0.4])
    # disjoint top-2 sets: the union holds 4 pixels, the errors are the four values themselves
    assert ma_loss(pred, target, k=2, mask="union").item() == pytest.approx(math.sqrt(1 + 0.64 + 0.36 + 0.16))
    assert ma_loss(pred, target, k=2, mask="pred").item() == pytest.approx(math.sqrt(0.36 + 0.16))
    assert ma_loss(pred, target, k=2, mask="target").item() == pytest.approx(math.sqrt(1 + 0.64))


@pytest.mark.parametrize("mask", ["pred", "target", "union"])
def test_ma_gradient_reaches_only_masked_pixels(mask):
    pred, target = _maps(2)
    pred.requires_grad_(True)
    ma_loss(pred, target, k=4, mask=mask).backward()
    expected = {"pred": topk_mask(pred, 4), "target": topk_mask(target, 4)}
    expected["union"] = expected["pred"] | expected["target"]
    assert torch.equal(pred.grad != 0, expected[mask])


def test_weight_zero_landmarks_contribute_nothing():
    pred, target = _maps(3)
    weight = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    changed = pred.clone()
    changed[weight == 0] += 10.0
    for loss in (heatmap_mse, lambda p, t, w: ma_loss(p, t, w, k=6, mask="union")):
        assert loss(changed, target, weight).item() == pytest.approx(loss(pred, target, weight).item())
        p = pred.clone().requires_grad_(True)
        loss(p, target, weight).backward()
        assert (p.grad[weight == 0] == 0).all() and (p.grad[weight == 1] != 0).any()


def test_ma_sums_the_weighted_landmark_norms_and_averages_faces():
    pred, target = _maps(4)
    weight = torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 0.0]])
    per_landmark = [ma_loss(pred[b:b + 1, k:k + 1], target[b:b + 1, k:k + 1], k=3) for b in range(2) for k in range(3)]
    expected = (torch.stack(per_landmark) * weight.flatten()).sum() / 2  # summed over landmarks, mean of 2 faces
    assert ma_loss(pred, target, weight, k=3).item() == pytest.approx(expected.item())


def test_total_loss_equals_eq1_on_a_hand_computed_example():
    """Paper Eq. 1 by hand: 2 landmarks on 3 x 3 maps, K = 2, w = 6, L = L_MSE + w * sum_i ||(H_i - Ĥ_i) Mask_i||."""
    target = torch.zeros(1, 2, 3, 3)
    target[0, 0, 1, 1], target[0, 0, 1, 2] = 1.0, 0.5  # landmark 0: its two largest pixels
    target[0, 1, 0, 0], target[0, 1, 2, 2] = 1.0, 0.6  # landmark 1
    pred = target.clone()
    pred[0, 0, 1, 1] = 0.6  # error -0.4 (in both top-2 sets)
    pred[0, 0, 1, 2] = 0.8  # error +0.3 (in both top-2 sets)
    pred[0, 1, 2, 2] = 0.0  # error -0.6: in the target's top 2, not in the prediction's
    pred[0, 1, 0, 1] = 0.2  # error +0.2: in the prediction's top 2 (0.2 > 0), not the target's
    # masks = union of the top-2 of pred and target: landmark 0 {(1,1), (1,2)}, landmark 1 {(0,0), (2,2), (0,1)}
    l_ma = math.sqrt(0.4**2 + 0.3**2) + math.sqrt(0.0**2 + 0.6**2 + 0.2**2)  # 0.5 + 0.6325
    l_mse = (0.4**2 + 0.3**2 + 0.6**2 + 0.2**2) / 18  # every pixel of both maps
    total, parts = LandmarkLoss(ma_weight=6.0, ma_k=2, ma_mask="union")(pred, target)
    assert parts["ma"].item() == pytest.approx(l_ma)
    assert parts["mse"].item() == pytest.approx(l_mse)
    assert total.item() == pytest.approx(l_mse + 6 * l_ma)


def test_landmark_loss_combines_mse_and_ma():
    pred, target = _maps(5)
    weight = torch.ones(2, 3)
    mse, ma = heatmap_mse(pred, target, weight), ma_loss(pred, target, weight, k=5, mask="target")

    total, parts = LandmarkLoss(ma_weight=6.0, ma_k=5, ma_mask="target")(pred, target, weight)
    assert total.item() == pytest.approx(mse.item() + 6 * ma.item())
    assert parts["mse"].item() == pytest.approx(mse.item()) and parts["ma"].item() == pytest.approx(ma.item())

    # weight 0: the total is plain MSE (its gradient too); MA is still reported for comparison
    p = pred.clone().requires_grad_(True)
    total, parts = LandmarkLoss(ma_weight=0.0, ma_k=5)(p, target, weight)
    assert total.item() == pytest.approx(mse.item()) and parts["ma"].item() > 0
    total.backward()
    torch.testing.assert_close(p.grad, 2 * (pred - target) / pred.numel())


def test_bad_inputs_raise_clear_errors():
    pred, target = _maps(6)
    with pytest.raises(ValueError, match=r"target shape \(2, 3, 4, 4\) differs from pred shape"):
        heatmap_mse(pred, target[..., :4, :4])
    with pytest.raises(ValueError, match=r"weight must be \[B, K\] = \(2, 3\)"):
        ma_loss(pred, target, torch.ones(2, 3, 1), k=3)
    with pytest.raises(ValueError, match=r"pred must be \[B, K, H, W\]"):
        heatmap_mse(pred[0], target[0])
    with pytest.raises(ValueError, match="mask must be one of"):
        ma_loss(pred, target, k=3, mask="both")
    with pytest.raises(ValueError, match="ma_mask must be one of"):
        LandmarkLoss(ma_weight=1.0, ma_mask="both")
    with pytest.raises(ValueError, match="ma_weight must be >= 0"):
        LandmarkLoss(ma_weight=-1.0)


def test_default_k_is_the_authors_anchor_count_or_ours():
    pred, target = _maps(7, shape=(1, 2, 16, 16))
    assert ma_loss(pred, target).item() == pytest.approx(ma_loss(pred, target, k=20).item())  # authors' K at 16
    assert ma_loss(pred, target, anchors="ours").item() == pytest.approx(ma_loss(pred, target, k=81).item())
    assert ma_loss(pred, target).item() != pytest.approx(ma_loss(pred, target, k=81).item())
    pred, target = _maps(7, shape=(1, 2, 4, 4))  # at 4 x 4: authors 10 of 16 pixels, ours the whole map
    assert ma_loss(pred, target).item() == pytest.approx(ma_loss(pred, target, k=10).item())
    assert LandmarkLoss(6.0, ma_anchors="ours")(pred, target)[1]["ma"].item() == pytest.approx(
        ma_loss(pred, target, k=16).item())


def test_huber_heatmap_term():
    pred, target = torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    pred[0, 0, 0] = torch.tensor([0.5, 2.0])  # 0.5 * 0.25 = 0.125 (quadratic), 0.6 * (2 - 0.3) = 1.02 (linear)
    pred[0, 1, 0] = 9.0  # invisible
    weight = torch.tensor([[1.0, 0.0]])
    total, parts = LandmarkLoss(heatmap="huber", huber_delta=0.6)(pred, target, weight)
    assert total.item() == pytest.approx((0.125 + 1.02) / 4) and parts["mse"].item() == total.item()
    with pytest.raises(ValueError, match="heatmap must be one of"):
        LandmarkLoss(heatmap="l1")


def test_sinkhorn_term_on_one_face_is_half_the_squared_distance():
    pytest.importorskip("geomloss")
    pred, target = _maps(8, shape=(1, 3, 4, 4))
    expected = ((pred - target) ** 2).sum((-2, -1)).mean() / 2  # a Dirac to a Dirac: cost |x - y|^2 / 2
    total, parts = LandmarkLoss(ot_weight=1.0)(pred, target)
    assert parts["ot"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert total.item() == pytest.approx(parts["mse"].item() + expected.item(), rel=1e-4)
    pred, target = _maps(9, shape=(4, 2, 4, 4))  # a batch: no more than the cost of the identity pairing
    pairing = ((pred - target) ** 2).sum((-2, -1)).mean() / 2
    assert 0 < LandmarkLoss(ot_weight=1.0)(pred, target)[1]["ot"].item() <= pairing.item() + 1e-4
