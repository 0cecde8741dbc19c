import numpy as np
import pytest
import torch

from popos import metrics


def test_nme_per_image_by_hand():
    gt = np.zeros((2, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 0.0]], [[6.0, 8.0], [0.0, 1.0]]])
    # image 0: distances 5 and 0 -> mean 2.5, / norm 10 -> 0.25
    # image 1: distances 10 and 1 -> mean 5.5, / norm 2 -> 2.75
    np.testing.assert_allclose(metrics.nme_per_image(pred, gt, np.array([10.0, 2.0])), [0.25, 2.75])


def test_nme_mmpose_vector_with_mask():
    # mmpose keypoint_nme test: distances 4, 8, (masked), 10*sqrt(2), 20 -> (4 + 8 + 10*sqrt(2) + 20) / 4
    pred = np.array([[[10, 4], [10, 18], [0, 0], [40, 40], [20, 10]]], dtype=float)
    gt = np.array([[[10, 0], [10, 10], [-1, -1], [30, 30], [0, 10]]], dtype=float)
    visible = np.array([[True, True, False, True, True]])
    out = metrics.nme_per_image(pred, gt, np.ones(1), visible)
    np.testing.assert_allclose(out, [(32 + 10 * np.sqrt(2)) / 4])
    np.testing.assert_allclose(out, [11.5355339], rtol=1e-8)


def test_mask_averages_per_image_not_per_keypoint():
    # image 0 has one visible point (error 1), image 1 three (errors 0): per image 1.0 and 0.0,
    # dataset NME 0.5 (a per-keypoint mean would give 0.25)
    gt = np.zeros((2, 3, 2))
    pred = gt.copy()
    pred[0, 0] = [1.0, 0.0]
    pred[0, 1] = [50.0, 50.0]  # invisible: must not count
    visible = np.array([[True, False, False], [True, True, True]])
    nme = metrics.nme_per_image(pred, gt, np.ones(2), visible)
    np.testing.assert_allclose(nme, [1.0, 0.0])
    assert metrics.summarize(nme)["nme"] == pytest.approx(0.5)


def test_accepts_torch_tensors():
    pred = torch.tensor([[[3.0, 4.0]]])
    out = metrics.nme_per_image(pred, torch.zeros(1, 1, 2), torch.tensor([5.0]), torch.tensor([[True]]))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [1.0])
    assert metrics.summarize(torch.tensor([0.02, 0.05, 0.08, 0.12]))["fr"] == 0.25


def test_normalisers():
    gt = np.array([[[0.0, 0.0], [1.0, 1.0], [6.0, 8.0]]])
    np.testing.assert_allclose(metrics.interocular(gt, 0, 2), [10.0])
    np.testing.assert_allclose(metrics.face_size(np.array([[0, 0, 30, 40], [5, 5, 45, 20]])), [np.sqrt(1200), 30])
    with pytest.raises(ValueError, match=r"right: expected a landmark index in \[0, 3\)"):
        metrics.interocular(gt, 0, 3)
    with pytest.raises(ValueError, match="must differ"):
        metrics.interocular(gt, 1, 1)
    with pytest.raises(ValueError, match=r"boxes: expected shape \[N, 4\]"):
        metrics.face_size(np.zeros((2, 3)))


def test_fr_and_auc_reference_vectors():
    # datasets.md section 6: FR@0.1 = 0.25, AUC@0.1 = 0.37525 with Simpson (exact step area 0.375)
    nme = np.array([0.02, 0.05, 0.08, 0.12])
    assert metrics.failure_rate(nme, 0.1) == 0.25
    assert metrics.auc(nme, 0.1) == pytest.approx(0.37525, abs=1e-9)
    nme = np.array([0.01] * 9 + [0.2])
    assert metrics.failure_rate(nme, 0.1) == pytest.approx(0.1)
    assert metrics.auc(nme, 0.1) == pytest.approx(0.8103, abs=1e-9)


def test_auc_extremes_and_equal_threshold_is_no_failure():
    assert metrics.auc(np.zeros(5)) == pytest.approx(1.0)
    assert metrics.auc(np.full(5, 0.5)) == 0.0
    # NME exactly at the threshold counts as success (<=), as HRNet-Facial / PIPNet do
    assert metrics.failure_rate(np.array([0.1, 0.1]), 0.1) == 0.0


def test_ced_curve_shape_and_values():
    x, y = metrics.ced_curve(np.array([0.0, 0.05]), threshold=0.1)
    assert x.shape == y.shape == (1001,)
    assert x[0] == 0.0 and x[-1] == pytest.approx(0.1)
    # half the images have NME 0, so CED starts at 0.5 and reaches 1 at x = 0.05 (index 500)
    assert y[0] == 0.5 and y[499] == 0.5 and y[500] == 1.0 and y[-1] == 1.0


def test_summarize():
    out = metrics.summarize(np.array([0.02, 0.05, 0.08, 0.12]), threshold=0.1)
    assert out == pytest.approx({"nme": 0.0675, "fr": 0.25, "auc": 0.37525})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pred": np.zeros((2, 3)), "gt": np.zeros((2, 3)), "norm": np.ones(2)}, r"pred: expected shape \[N, K, 2\]"),
        ({"pred": np.zeros((2, 3, 2)), "gt": np.zeros((2, 4, 2)), "norm": np.ones(2)}, "gt has"),
        ({"pred": np.zeros((2, 3, 2)), "gt": np.zeros((2, 3, 2)), "norm": np.ones(3)}, r"norm: expected shape \[2\]"),
        ({"pred": np.zeros((2, 3, 2)), "gt": np.zeros((2, 3, 2)), "norm": np.array([1.0, 0.0])}, r"images \[1\]"),
        ({"pred": np.full((1, 1, 2), np.nan), "gt": np.zeros((1, 1, 2)), "norm": np.ones(1)}, "pred: contains NaN"),
        (
            {"pred": np.zeros((1, 2, 2)), "gt": np.zeros((1, 2, 2)), "norm": np.ones(1), "visible": np.zeros((1, 2))},
            "no visible landmark",
        ),
        (
            {"pred": np.zeros((1, 2, 2)), "gt": np.zeros((1, 2, 2)), "norm": np.ones(1), "visible": np.ones((2, 1))},
            r"visible: expected shape \[1, 2\]",
        ),
    ],
)
def test_nme_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.nme_per_image(**kwargs)


def test_summary_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        metrics.summarize(np.array([]))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.failure_rate(np.array([-0.1]))
    with pytest.raises(ValueError, match="threshold"):
        metrics.auc(np.array([0.1]), threshold=0)
    with pytest.raises(ValueError, match="step"):
        metrics.ced_curve(np.array([0.1]), threshold=0.1, step=0.5)
