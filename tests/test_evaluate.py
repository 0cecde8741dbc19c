import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_train import HEATMAP, TINY, tiny_params, write_tiny_dataset

from popos.checkpoint import load_checkpoint
from popos.cli import main
from popos.codec import encode_heatmaps
from popos.data.prepared import PreparedSplit
from popos.decoders import resolve_variants
from popos.evaluate import check_flip_index, decode_coordinates, evaluate, evaluate_saved_heatmaps
from popos.geometry import flip_points, stride
from popos.train import train

METHODS = ["one_hot", "dark", "popos", "popos_authors"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = write_tiny_dataset(tmp_path_factory.mktemp("prepared"))
    run = tmp_path_factory.mktemp("run")
    params = tiny_params(root, "train.epochs=2", "train.eval_every=0", f"decode.methods=[{', '.join(METHODS)}]")
    train(params, "synth", HEATMAP, "mse", run, device="cpu")
    return root, params, run / "checkpoint.pt"


def _perfect(points: np.ndarray, input_size: int, heatmap_size: int) -> torch.Tensor:
    """Unbiased sigma-2 Gaussians at ``points [..., K, 2]`` input px."""
    coords = torch.as_tensor(points / stride(input_size, heatmap_size), dtype=torch.float32)
    return encode_heatmaps(coords, heatmap_size, 2.0, unbiased=True)


def test_flip_fusion_is_exact_on_perfect_heatmaps():
    size, h = 256, 16
    flip_index = [1, 0, 2, 4, 3, 5]  # pairs (0, 1) and (3, 4); 2 and 5 map to themselves
    points = np.random.default_rng(0).uniform(40, 215, size=(8, 6, 2))
    heatmaps = _perfect(points, size, h)
    heatmaps_flip = _perfect(flip_points(points, size, flip_index), size, h)  # what the mirrored face gives
    variants = resolve_variants(["keyposs"])
    fused = decode_coordinates(heatmaps, heatmaps_flip, variants, input_size=size, sigma=2.0, flip_index=flip_index)
    err = fused["keyposs"] - points
    assert np.abs(err).max() < 1e-3  # exact: no +0.5 px bias in x as mmpose's shifted heatmap average has
    assert abs(err[..., 0].mean()) < 1e-4
    # the swap matters: without it the mirrored branch pairs each landmark with its partner
    unswapped = decode_coordinates(heatmaps, heatmaps_flip, variants, input_size=size, sigma=2.0,
                                   flip_index=list(range(6)))
    assert np.abs(unswapped["keyposs"] - points).max() > 5


def test_saved_heatmaps_are_decoded_back_to_image_px(tmp_path):
    size, h, n, k = 128, 8, 3, 4
    flip_index = [1, 0, 3, 2]
    rng = np.random.default_rng(1)
    landmarks = rng.uniform(30, 98, size=(n, k, 2))
    image_to_input = np.tile(np.array([[0.5, 0.0, -10.0], [0.0, 0.5, 4.0]]), (n, 1, 1))  # image = 2 * (input + ...)
    path = tmp_path / "heatmaps.npz"
    np.savez(path, heatmaps=_perfect(landmarks, size, h).half().numpy(),
             heatmaps_flip=_perfect(flip_points(landmarks, size, flip_index), size, h).half().numpy(),
             landmarks=landmarks.astype(np.float32), visible=np.ones((n, k), bool), norm=np.full(n, 50.0, np.float32),
             image_to_input=image_to_input.astype(np.float32), index=np.arange(n) + 10)
    table = evaluate_saved_heatmaps(path, resolve_variants(["one_hot", "keyposs"]), flip_index, size, 2.0)
    assert list(table.columns) == ["index", "method", "nme"] and len(table) == 2 * n
    assert table["index"].tolist() == [10, 11, 12] * 2
    nme = table.groupby("method")["nme"].max()
    # keyposs recovers the points up to float16 rounding of the maps; one-hot is off by up to half a stride
    assert nme["keyposs"] < 1e-3 < nme["one_hot"]
    with pytest.raises(ValueError, match="flip_index must swap pairs"):
        evaluate_saved_heatmaps(path, resolve_variants(["one_hot"]), None, size, 2.0)


def test_evaluate_writes_every_file(trained, tmp_path):
    root, params, ckpt = trained
    summary = evaluate(params, ckpt, "test", tmp_path, device="cpu")
    n, k = 6, 68
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    assert list(per_image.columns) == ["index", "image", "method", "nme"] and len(per_image) == n * len(METHODS)
    assert per_image["method"].unique().tolist() == METHODS and per_image["image"].iloc[0] == "test/0.png"
    table = pd.read_csv(tmp_path / "summary.csv")
    assert list(table.columns) == ["method", "nme", "fr", "auc", "threshold", "n_images"]
    assert table["method"].tolist() == METHODS and (table["n_images"] == n).all()
    np.testing.assert_allclose(table["nme"], per_image.groupby("method", sort=False)["nme"].mean())
    assert summary["method"].tolist() == METHODS
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == set(METHODS) and set(metrics["popos"]) == {"nme", "fr", "auc"}

    gt = PreparedSplit.open(root / "synth" / "test")
    with np.load(tmp_path / "predictions.npz") as z:
        assert all(z[m].shape == (n, k, 2) for m in METHODS)
        np.testing.assert_array_equal(z["gt"], gt.landmarks)
        one_hot = z["one_hot"]
    # the per-image NME is the mean distance to the ground truth in image px over the normaliser
    expected = np.linalg.norm(one_hot - gt.landmarks, axis=-1).mean(1) / gt.norm
    np.testing.assert_allclose(per_image.query("method == 'one_hot'")["nme"], expected, rtol=1e-5)

    with np.load(tmp_path / "heatmaps.npz") as z:
        assert z["heatmaps"].dtype == np.float16 and z["heatmaps"].shape == (n, k, HEATMAP, HEATMAP)
        assert z["heatmaps_flip"].shape == z["heatmaps"].shape
        assert z["landmarks"].shape == (n, k, 2) and z["image_to_input"].shape == (n, 2, 3)
        assert z["visible"].all() and z["norm"].shape == (n,)
    # decoding the saved (float16) heatmaps again reproduces the evaluation up to that rounding
    cfg = load_checkpoint(ckpt)["config"]
    again = evaluate_saved_heatmaps(tmp_path / "heatmaps.npz", resolve_variants(METHODS), cfg["flip_index"],
                                    cfg["model"]["input_size"], params.decode.sigma)
    np.testing.assert_allclose(again.groupby("method", sort=False)["nme"].mean(), table["nme"], rtol=0.02)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_evaluate_without_flip_or_heatmaps_from_the_cli(trained, tmp_path, monkeypatch):
    root, _, ckpt = trained
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, f"data.prepared_dir={root}", "decode.methods=[one_hot, popos, popos_authors]",
                 "evaluate.flip_test=false", "evaluate.save_heatmaps=false"]
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", "ev", "--device", "cpu",
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "metrics.json", "per_image.csv", "predictions.npz", "summary.csv"]
    assert pd.read_csv(tmp_path / "ev" / "summary.csv")["method"].tolist() == ["one_hot", "popos", "popos_authors"]


def test_predict_draws_the_landmarks(trained, tmp_path, capsys):
    root, _, ckpt = trained
    split = PreparedSplit.open(root / "synth" / "test")
    Image.fromarray(np.ascontiguousarray(split.crops[0])).save(tmp_path / "face.png")
    assert main(["predict", str(tmp_path / "face.png"), "--checkpoint", str(ckpt), "--box", "8,8,31,31",
                 "--method", "popos", "--out", str(tmp_path / "overlay.png")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 68 + 1  # header + one line per landmark
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert overlay.shape == split.crops[0].shape and not np.array_equal(overlay, split.crops[0])
    assert main(["predict", str(tmp_path / "missing.png"), "--checkpoint", str(ckpt), "--out", "x.png"]) == 2


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown variant.*available"):
        resolve_variants(["one_hot", "nope"])
    with pytest.raises(ValueError, match="flip_index must swap pairs among 3"):
        check_flip_index([1, 2, 0], 3)
    assert resolve_variants(["popos"], {"anchors": 7})["popos"][1]["anchors"] == 7
