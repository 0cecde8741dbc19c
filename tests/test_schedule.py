"""The paper's and the authors' training setups: lr schedules, targets, target weights, per-dataset overrides,
the validation split and best-checkpoint selection."""

import math

import numpy as np
import pytest
import torch
from test_train import HEATMAP, tiny_params, write_tiny_dataset

from popos.config import ParamsError, TrainSection, load_params
from popos.train import is_best_epoch, lr_factor, make_targets, train, validation_split


def test_linear_schedule_is_the_papers():
    tp = TrainSection(epochs=10, lr=2e-3, lr_min=1e-5)
    assert lr_factor(0, 5, tp) == 1.0
    assert lr_factor(49, 5, tp) * tp.lr == pytest.approx(1e-5)  # the last of 10 x 5 steps
    assert lr_factor(24, 5, tp) * tp.lr == pytest.approx(2e-3 + (1e-5 - 2e-3) * 24 / 49)


def test_step_schedule_with_warmup_is_the_authors():
    tp = TrainSection(epochs=100, schedule="step", lr_steps=[40, 55], lr_step_factor=0.1, warmup_iters=500,
                      warmup_ratio=0.001)
    steps = 20  # per epoch
    assert lr_factor(0, steps, tp) == pytest.approx(0.001)  # mmcv: ratio at iteration 0, 1 at iteration 500
    assert lr_factor(250, steps, tp) == pytest.approx(1 - 0.5 * 0.999)
    assert lr_factor(500, steps, tp) == 1.0
    assert lr_factor(40 * steps - 1, steps, tp) == 1.0 and lr_factor(40 * steps, steps, tp) == pytest.approx(0.1)
    assert lr_factor(55 * steps, steps, tp) == pytest.approx(0.01) and lr_factor(99 * steps, steps, tp) == \
        pytest.approx(0.01)


def test_cosine_schedule_reaches_lr_min():
    tp = TrainSection(epochs=210, schedule="cosine", lr=2e-3, lr_min=1e-5, warmup_iters=5)
    last = 210 * 3 - 1
    assert lr_factor(last, 3, tp) * tp.lr == pytest.approx(1e-5)
    assert lr_factor(last // 2, 3, tp) == pytest.approx((1 + 1e-5 / 2e-3) / 2 + (1 - 1e-5 / 2e-3) / 2
                                                        * math.cos(math.pi * (last // 2) / last))
    assert lr_factor(0, 3, tp) == pytest.approx(0.001)


def test_biased_targets_and_the_three_sigma_box_weight():
    landmarks = torch.tensor([[[18.0, 10.0], [-30.0, 8.0], [-60.0, 8.0]]])  # input px, stride 4 on an 8 x 8 map
    visible = torch.tensor([[1.0, 0.0, 0.0]])  # the dataset marks landmarks off the crop invisible
    target, _ = make_targets(landmarks, visible, input_size=32, heatmap_size=8, sigma=1.5, unbiased=False)
    assert target[0, 0, 3, 5].item() == 1.0  # heatmap (4.5, 2.5) rounds to the pixel (5, 3): peak 1 there
    annotated = torch.ones(1, 3)
    _, weight = make_targets(landmarks, visible, input_size=32, heatmap_size=8, sigma=1.5, annotated=annotated)
    # x = -7.5 hm px: round(-7.5 + 0.5) = -7, its box reaches -7 + 4.5 < 0: off; x = -15 also off; the first on
    assert weight.tolist() == [[1.0, 0.0, 0.0]]
    near = torch.tensor([[[-14.0, 8.0]]])  # x = -3.5 hm px: the 3-sigma box (4.5) still overlaps column 0
    _, weight = make_targets(near, torch.zeros(1, 1), input_size=32, heatmap_size=8, sigma=1.5,
                             annotated=torch.ones(1, 1))
    assert weight.tolist() == [[1.0]]


def test_per_dataset_overrides_and_their_errors():
    p = load_params(overrides=["train.per_dataset={cofw: {epochs: 210, schedule: cosine}}"])
    assert p.train.for_dataset("cofw").epochs == 210 and p.train.for_dataset("cofw").schedule == "cosine"
    assert p.train.for_dataset("wflw") == p.train
    with pytest.raises(ParamsError, match="per_dataset.cofw.*epochs"):
        load_params(overrides=["train.per_dataset={cofw: {epochs: 0}}"])
    with pytest.raises(ParamsError, match="per_dataset.lfpw|per_dataset"):
        load_params(overrides=["train.per_dataset={lfpw: {epochs: 1}}"])
    with pytest.raises(ParamsError, match="save_best 'val' needs val_fraction"):
        load_params(overrides=["train.save_best=val"])
    with pytest.raises(ParamsError, match="evaluate.checkpoint best_test needs train.save_best: test"):
        load_params(overrides=["evaluate.checkpoint=best_test"])


def test_shift_probability_and_per_dataset_augmentation():
    from popos.data.transforms import sample_augmentation

    p = load_params(overrides=["augment.per_dataset={cocowb_face: {translate: 0.16, translate_prob: 0.3}}"])
    coco, other = p.augment.for_dataset("cocowb_face"), p.augment.for_dataset("wflw")
    assert other == p.augment and coco.translate == 0.16
    shifts = [sample_augmentation(np.random.default_rng(i), coco).shift for i in range(400)]
    shifted = np.mean([s != (0.0, 0.0) for s in shifts])
    assert 0.22 < shifted < 0.38 and max(max(abs(v) for v in s) for s in shifts) <= 0.16
    # probability 1 draws nothing extra: the random stream (and so the demo) is what it was
    rng, reference = np.random.default_rng(0), np.random.default_rng(0)
    sample_augmentation(rng, p.augment)
    # flip, rotation, its probability, scale, shift (2), colour (3): the draws before translate_prob existed
    reference.random(), reference.normal(), reference.random(), reference.normal(), reference.uniform(size=5)
    assert rng.random() == reference.random()


def test_validation_split_is_seeded_and_disjoint():
    train_rows, val_rows = validation_split(100, 0.1, seed=3)
    assert len(val_rows) == 10 and len(train_rows) == 90
    assert not set(train_rows) & set(val_rows) and set(train_rows) | set(val_rows) == set(range(100))
    assert np.array_equal(validation_split(100, 0.1, seed=3)[1], val_rows)
    assert not np.array_equal(validation_split(100, 0.1, seed=4)[1], val_rows)
    assert len(validation_split(100, 0.0, seed=3)[1]) == 0


def test_is_best_epoch():
    history = [{"val_nme_popos": 5.0}, {"loss": 1.0}, {"val_nme_popos": 4.0}, {"val_nme_popos": 4.0}]
    assert [is_best_epoch(history[:i], "val") for i in range(1, 5)] == [True, False, True, False]
    assert not is_best_epoch(history[:1], "none")


def test_training_with_a_validation_split_keeps_the_best_epoch(tmp_path):
    root = write_tiny_dataset(tmp_path / "prepared", n_train=20)
    out = tmp_path / "run"
    params = tiny_params(root, "train.epochs=3", "train.val_fraction=0.2", "train.save_best=val", "train.eval_every=1")
    history = train(params, "synth", HEATMAP, "mse", out, device="cpu")
    values = [row["val_nme_popos"] for row in history]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + int(np.argmin(values)) and best["selected_on"] == "val"
    assert all("nme_popos" in row for row in history)  # the test NME is still logged, never used to select
