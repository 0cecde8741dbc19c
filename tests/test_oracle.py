import numpy as np
import pandas as pd
import pytest
import torch

from popos import cli, oracle
from popos.codec import encode_heatmaps
from popos.config import load_params
from popos.data.prepared import PreparedWriter


def small_params(*extra: str):
    fixed = ["oracle.heatmap_sizes=[16, 4]", "oracle.num_images=3", "oracle.num_landmarks=5"]
    return load_params(overrides=[*fixed, "decode.methods=[one_hot, popos, popos_authors]", *extra])


def test_study_is_deterministic_and_seeded():
    params = small_params()
    a, b = oracle.oracle_study(params), oracle.oracle_study(params)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == oracle.COLUMNS
    assert len(a) == len(oracle.CONDITIONS) * 2 * 3  # conditions x sizes x methods
    c = oracle.oracle_study(small_params("oracle.seed=1"))
    assert not np.allclose(a.mean_px, c.mean_px)


def test_clean_one_hot_error_is_the_rounding_error():
    params = small_params("oracle.conditions=[clean]", "oracle.points=full")
    table = oracle.oracle_study(params).query("method == 'one_hot'").set_index("heatmap_size")
    points = oracle.random_points(3, 5, 256, "full", oracle.seeded_generator(0)).double().numpy()
    for size in (16, 4):
        # the argmax of a Gaussian sampled on the grid is the nearest pixel in x and in y, so the error is
        # stride * |v - round(v)| with v = u / stride; near the right/bottom border v can round to W,
        # off the map, where the nearest pixel is W - 1
        s = 256 / size
        v = points / s
        err = s * np.linalg.norm(v - np.clip(np.round(v), 0, size - 1), axis=-1)
        row = table.loc[size]
        assert row.mean_px == pytest.approx(err.mean(), abs=1e-4)
        assert row.median_px == pytest.approx(np.median(err), abs=1e-4)
        assert row.max_px == pytest.approx(err.max(), abs=1e-4)


def test_flipcoord_one_hot_averages_the_two_roundings():
    params = small_params("oracle.conditions=[flipcoord]", "oracle.points=full")
    table = oracle.oracle_study(params).query("method == 'one_hot'").set_index("heatmap_size")
    u = oracle.random_points(3, 5, 256, "full", oracle.seeded_generator(0)).double().numpy()
    for size in (16, 4):
        # one_hot returns the nearest pixel (clamped to the map) of v = u / s; the mirrored branch sees
        # 255 - x, and its answer is mirrored back before the two x are averaged (y is the same twice)
        s = 256 / size

        def nearest(v, s=s, size=size):
            return s * np.clip(np.round(v / s), 0, size - 1)

        x = (nearest(u[..., 0]) + 255 - nearest(255 - u[..., 0])) / 2
        err = np.hypot(x - u[..., 0], nearest(u[..., 1]) - u[..., 1])
        assert table.loc[size].mean_px == pytest.approx(err.mean(), abs=1e-4)
        assert table.loc[size].max_px == pytest.approx(err.max(), abs=1e-4)


def test_random_points_modes():
    gen = oracle.seeded_generator(0)
    center = oracle.random_points(50, 20, 256, "center", gen)
    assert center.shape == (50, 20, 2) and center.min() >= 32 and center.max() <= 224
    full = oracle.random_points(50, 20, 256, "full", gen)
    assert full.min() >= 0 and full.max() <= 255 and full.min() < 32 and full.max() > 224
    with pytest.raises(ValueError, match="mode: expected 'full' or 'center'"):
        oracle.random_points(1, 1, 256, "edge", gen)


@pytest.fixture()
def points():
    return oracle.random_points(4, 30, 256, "center", oracle.seeded_generator(3))


def test_amplitude_and_noise_conditions(points):
    clean = oracle.oracle_heatmaps(points, "clean", 32)
    torch.testing.assert_close(clean, encode_heatmaps(points / 8, 32, sigma=2.0, unbiased=True).float())
    torch.testing.assert_close(oracle.oracle_heatmaps(points, "amp07", 32), 0.7 * clean)

    noise = oracle.oracle_heatmaps(points, "noise", 32, generator=oracle.seeded_generator(1)) - clean
    # 4 * 30 * 32 * 32 = 122880 draws: the sample std is within 1 % of 0.05 with overwhelming probability
    assert noise.std().item() == pytest.approx(0.05, rel=0.01)
    assert abs(noise.mean().item()) < 1e-3

    mixed = oracle.oracle_heatmaps(points, "ampnoise", 32, generator=oracle.seeded_generator(1))
    # least-squares peak per landmark: <map, clean> / <clean, clean> recovers the factor U(0.6, 1)
    peak = (mixed * clean).sum((-2, -1)) / (clean * clean).sum((-2, -1))
    assert peak.min() > 0.58 and peak.max() < 1.02 and peak.std() > 0.05
    residual = mixed - peak[..., None, None] * clean
    assert residual.std().item() == pytest.approx(0.02, rel=0.02)


def test_mis_shaped_peak_conditions(points):
    s = 256 / 64
    clean = oracle.oracle_heatmaps(points, "clean", 64)
    for condition, width in (("wide", 2.6), ("narrow", 1.5)):
        want = encode_heatmaps(points / s, 64, sigma=width, unbiased=True)
        torch.testing.assert_close(oracle.oracle_heatmaps(points, condition, 64), want, atol=1e-6, rtol=0)
    # elongated: the maps' second moments are a covariance of determinant sigma^4 and axis ratio 1..2
    maps = oracle.oracle_heatmaps(points, "elongated", 64, generator=oracle.seeded_generator(2)).double()
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    mass = maps.sum((-2, -1))
    dx, dy = (
        xs - (maps * xs).sum((-2, -1))[..., None, None] / mass[..., None, None],
        ys - (maps * ys).sum((-2, -1))[..., None, None] / mass[..., None, None],
    )
    cov = torch.stack([(maps * a * b).sum((-2, -1)) / mass for a, b in ((dx, dx), (dx, dy), (dy, dy))], -1)
    det = cov[..., 0] * cov[..., 2] - cov[..., 1] ** 2
    torch.testing.assert_close(det, torch.full_like(det, 16.0), atol=0.2, rtol=0)  # tails cut by the border
    half_trace = (cov[..., 0] + cov[..., 2]) / 2
    spread = (half_trace**2 - det).sqrt()
    ratio = ((half_trace + spread) / (half_trace - spread)).sqrt()  # of the axes' standard deviations
    assert ratio.min() > 0.99 and ratio.max() < 2.01 and ratio.std() > 0.2
    assert (cov[..., 1].abs() > 0.1).float().mean() > 0.5  # rotated, not only axis-aligned
    # second: a half-height Gaussian 3 sigma from the point
    extra = oracle.oracle_heatmaps(points, "second", 64, generator=oracle.seeded_generator(2)) - clean
    flat = extra.flatten(-2).argmax(-1)
    peak = torch.stack([flat % 64, flat // 64], -1).float()
    distance = (peak - points / s).norm(dim=-1)
    assert (distance - 6).abs().max() < 0.75 and extra.amax((-2, -1)).max() <= 0.5
    # offset: a -0.05 baseline plus N(0, 0.02^2)
    shifted = oracle.oracle_heatmaps(points, "offset", 64, generator=oracle.seeded_generator(2)) - clean
    assert shifted.mean().item() == pytest.approx(-0.05, abs=1e-3)
    assert shifted.std().item() == pytest.approx(0.02, rel=0.02)


def test_gaussian_maps_of_equal_axes_are_the_encoders(points):
    centres = points / 8
    width = torch.full(points.shape[:-1], 1.7)
    maps = oracle.gaussian_maps(centres, 32, width, width, torch.rand(points.shape[:-1]))
    torch.testing.assert_close(maps, encode_heatmaps(centres, 32, sigma=1.7), atol=1e-6, rtol=0)


def test_random_conditions_follow_the_generator(points):
    a = oracle.oracle_heatmaps(points, "noise", 8, generator=oracle.seeded_generator(0, 1, 8))
    b = oracle.oracle_heatmaps(points, "noise", 8, generator=oracle.seeded_generator(0, 1, 8))
    c = oracle.oracle_heatmaps(points, "noise", 8, generator=oracle.seeded_generator(0, 1, 4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="condition: expected one of"):
        oracle.oracle_heatmaps(points, "blur", 8)


@pytest.mark.parametrize("size", [64, 16, 4])
def test_mirror_heatmaps_is_the_exact_input_mirror(size):
    # a map linear in x is interpolated exactly: mirroring the input (u -> 255 - u) is v -> (255 / s) - v in
    # heatmap px, so column j of the result holds 255 / s - j (column 0 reads beyond the border: clamped)
    s = 256 / size
    ramp = torch.arange(size, dtype=torch.float64).expand(2, 3, size, size)
    out = oracle.mirror_heatmaps(ramp, 256)
    expected = 255 / s - torch.arange(size, dtype=torch.float64)
    torch.testing.assert_close(out[..., 1:], expected[1:].expand(2, 3, size, size - 1))
    # with stride 1 it is a plain column reversal
    maps = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(oracle.mirror_heatmaps(maps, 5), maps.flip(-1))


def test_flip_condition_keeps_the_centroid(points):
    clean = oracle.oracle_heatmaps(points, "clean", 64)
    flip = oracle.oracle_heatmaps(points, "flip", 64)
    assert not torch.allclose(flip, clean)  # interpolation blurs the flipped branch
    x = torch.arange(64, dtype=torch.float64)

    def centroid_x(maps):
        maps = maps.double()
        return (maps.sum(-2) * x).sum(-1) / maps.sum((-2, -1))

    # linear interpolation moves mass without moving its centre, so the flip-test average is unbiased up to
    # the Gaussian tails cut off at the borders (about 2e-4 px for these points); mmpose's whole-column
    # shift would move the centre by 1/(2 * stride) = 0.125 heatmap px here
    torch.testing.assert_close(centroid_x(flip), centroid_x(clean), atol=1e-3, rtol=0)


def test_flipshift_is_mmposes_whole_column_shift_and_its_half_pixel_bias(points):
    maps = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    shifted = oracle.mirror_heatmaps(maps, 256, exact=False)
    torch.testing.assert_close(shifted[..., 1:], maps.flip(-1)[..., :-1])
    torch.testing.assert_close(shifted[..., 0], maps[..., -1])  # column 0 repeated
    # an exact decoder on mmpose's averaged maps errs by +0.5 input px in x (upstream flip_center: 0.500)
    from popos.decoders import decode

    for size in (64, 16):
        hm = oracle.oracle_heatmaps(points, "flipshift", size)
        pred = decode(hm, "popos") * (256 / size)
        err = pred - points
        torch.testing.assert_close(err[..., 0].mean(), torch.tensor(0.5), atol=0.02, rtol=0)
        assert err[..., 1].abs().max() < 0.01


def test_run_oracle_writes_csv_and_prints(tmp_path, capsys):
    out = tmp_path / "sub" / "oracle.csv"
    table = oracle.run_oracle(small_params("oracle.conditions=[clean, noise]"), out=out)
    read = pd.read_csv(out)
    assert list(read.columns) == oracle.COLUMNS
    pd.testing.assert_frame_equal(read, table, check_dtype=False)
    assert list(read.condition.unique()) == ["clean", "noise"]
    assert [p.name for p in out.parent.iterdir()] == ["oracle.csv"]  # no temporary left behind
    text = capsys.readouterr().out
    assert "clean: mean [median] error, input px" in text and "16x16" in text and "one_hot" in text
    first = table.iloc[0]
    assert f"{first.mean_px:.3f} [{first.median_px:.3f}]" in text


def _write_split(root, boxes, landmarks, visible):
    with PreparedWriter(root, "toy", "test", num_landmarks=landmarks.shape[1], crop_size=4) as writer:
        for i, (box, lm, vis) in enumerate(zip(boxes, landmarks, visible, strict=True)):
            writer.add(
                image=f"{i}.png",
                crop=np.zeros((4, 4, 3), np.uint8),
                landmarks=lm,
                visible=vis,
                box=box,
                norm=1.0,
                crop_affine=np.eye(2, 3),
            )


def test_points_from_a_prepared_split(tmp_path):
    # box (100, 50, 80, 80) with padding 1.25: square of side 100 around (140, 90) -> 256 px input, so
    # u = (x - 140) * 2.56 + 128: (140, 90) -> (128, 128), (165, 65) -> (192, 64), (190, 40) -> (256, 0)
    landmarks = np.array([[[140, 90], [165, 65], [190, 40], [5000, 5000]]], dtype=np.float32)
    visible = np.array([[True, True, True, False]])
    _write_split(tmp_path / "split", np.array([[100, 50, 80, 80]]), landmarks, visible)
    pts, vis = oracle.split_points(tmp_path / "split", 256, num_images=10, seed=0)
    np.testing.assert_allclose(pts[0, :3].numpy(), [[128, 128], [192, 64], [256, 0]], atol=1e-4)
    assert vis.tolist() == visible.tolist()

    # the invisible landmark far outside the input is left out of the errors
    table = oracle.oracle_study(small_params("oracle.conditions=[clean]"), dataset_dir=tmp_path / "split")
    assert table.max_px.max() < 256 / 4 * np.sqrt(2)


def test_split_points_draws_a_seeded_subset(tmp_path):
    n = 6
    landmarks = np.arange(n * 2 * 2, dtype=np.float32).reshape(n, 2, 2)
    _write_split(tmp_path / "split", np.tile([0, 0, 10, 10], (n, 1)), landmarks, np.ones((n, 2), bool))
    a, _ = oracle.split_points(tmp_path / "split", 256, num_images=3, seed=0)
    b, _ = oracle.split_points(tmp_path / "split", 256, num_images=3, seed=0)
    assert a.shape == (3, 2, 2)
    torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="not a prepared split"):
        oracle.split_points(tmp_path / "missing", 256, num_images=3, seed=0)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match=r"decode\.methods\.0: Input should be 'one_hot'"):  # refused at load
        oracle.oracle_study(small_params("decode.methods=[nope, popos, popos_authors]"))


def test_cli_oracle(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: schema defaults plus the overrides below
    sets = ["oracle.heatmap_sizes=[4]", "oracle.conditions=[amp07]", "oracle.num_images=2", "oracle.num_landmarks=2"]
    assert cli.main(["oracle", "--out", "o.csv"] + [a for s in sets for a in ("--set", s)]) == 0
    read = pd.read_csv(tmp_path / "o.csv")
    assert read.condition.unique().tolist() == ["amp07"] and read.heatmap_size.unique().tolist() == [4]
    assert "amp07: mean [median] error" in capsys.readouterr().out
