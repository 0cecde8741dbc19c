"""The decoder sweep (Figure 5a-c) on hand-made saved heatmaps: one row per swept value, each the variant
decoded directly; the CLI writing the CSV; a clear error without heatmaps."""

import numpy as np
import pandas as pd
import pytest
import torch

from popos.cli import main
from popos.codec import encode_heatmaps
from popos.config import load_params
from popos.decoders import decode
from popos.sweeps import COLUMNS, decoder_sweep

INPUT, SIZE, K, N = 64, 8, 5, 4
OVERRIDES = ["sweeps.region=[0, 2]", "sweeps.samples_per_pixel=[0.5, 8]", "sweeps.anchors=[4, 9]",
             "sweeps.heatmap_size=8"]


@pytest.fixture
def heatmaps(tmp_path):
    """heatmaps.npz as `popos evaluate` saves it: noisy, under-confident Gaussians at sub-pixel points, no
    flip test, the identity image -> input affine, normaliser 10 image px."""
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(12, 50, (N, K, 2)).astype(np.float32)  # input px = image px
    maps = 0.7 * encode_heatmaps(torch.from_numpy(landmarks) / (INPUT / SIZE), SIZE).numpy()
    maps += rng.normal(0, 0.02, maps.shape)
    path = tmp_path / "heatmaps.npz"
    np.savez(path, heatmaps=maps.astype(np.float16), landmarks=landmarks, visible=np.ones((N, K), bool),
             norm=np.full(N, 10.0, np.float32), image_to_input=np.tile(np.eye(2, 3, dtype=np.float32), (N, 1, 1)),
             index=np.arange(N))
    return path


def test_each_row_is_the_variant_decoded_directly(heatmaps):
    """Every row equals decoding the saved maps with sweeps.method's options and that one option replaced."""
    params = load_params(overrides=OVERRIDES)
    table = decoder_sweep(params, heatmaps, input_size=INPUT, flip_index=None)
    assert table.columns.tolist() == COLUMNS
    assert table[["knob", "value"]].values.tolist() == [
        ["region", 0.0], ["region", 2.0], ["samples_per_pixel", 0.5], ["samples_per_pixel", 8.0],
        ["anchors", 4.0], ["anchors", 9.0]]
    assert (table.n_images == N).all() and (table.threshold == params.evaluate.fr_threshold).all()
    with np.load(heatmaps) as z:
        maps, gt = torch.from_numpy(z["heatmaps"].astype(np.float32)), z["landmarks"]
    for row in table.itertuples():
        option = {"samples_per_pixel": row.value, "region": row.value, "anchors": int(row.value)}[row.knob]
        pred = decode(maps, "popos_authors", sigma=params.decode.sigma, **{row.knob: option}).numpy()
        per_face = np.linalg.norm(pred * (INPUT / SIZE) - gt, axis=-1).mean(-1) / 10.0
        assert row.nme == pytest.approx(per_face.mean(), rel=1e-5), row
        assert row.nme_se == pytest.approx(per_face.std(ddof=1) / np.sqrt(N), rel=1e-4), row


def test_cli_writes_the_csv(heatmaps, tmp_path, monkeypatch):
    import popos.evaluate

    monkeypatch.setattr(popos.checkpoint, "load_checkpoint",
                        lambda _: {"config": {"model": {"input_size": INPUT}, "flip_index": list(range(K))}})
    out = tmp_path / "sweep.csv"
    args = ["sweep", "decoders", "--heatmaps", str(heatmaps), "--checkpoint", "unused.pt", "--out", str(out)]
    assert main(args + [f"--set={o}" for o in OVERRIDES]) == 0
    assert len(pd.read_csv(out)) == 6


def test_missing_heatmaps_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="saved heatmaps not found"):
        decoder_sweep(load_params(overrides=OVERRIDES), tmp_path / "none.npz", input_size=INPUT, flip_index=None)
