"""The report on small hand-made evaluation tables: every table and figure, the paper's numbers beside ours,
only the current params' runs, clear errors for missing inputs, atomic output."""

import json

import numpy as np
import pandas as pd
import pytest

from popos import paper_numbers as paper
from popos.config import load_params
from popos.data.prepared import PreparedWriter
from popos.data.registry import DATASETS
from popos.geometry import crop_affine
from popos.layout import Layout, Run, grid_runs, ma_sweep_runs
from popos.report import ABLATION_STEPS, build_report, required_inputs

OVERRIDES = [
    "grid.datasets=[synth, cofw]",
    "grid.heatmap_sizes=[32, 8, 4]",
    "decode.methods=[one_hot, keyposs, igno, popos, popos_authors]",
    "sweeps.dataset=cofw",
    "sweeps.heatmap_size=8",
    "sweeps.region=[1, 2]",
    "sweeps.samples_per_pixel=[2, 4, 8]",
    "sweeps.anchors=[5, 10]",
    "sweeps.ma_weight=[0, 3, 6]",
    "report.overlay_faces=2",
    "report.overlay_sizes=[8, 4]",
    "bench.heatmap_sizes=[64, 8]",
]
N_FACES = 6


def _nme(run: Run, method: str) -> float:
    """A made-up NME (fraction) that grows as the heatmap shrinks and differs per method and loss."""
    base = {"one_hot": 0.05, "keyposs": 0.04, "igno": 0.035, "popos": 0.03, "popos_authors": 0.032}[method]
    return base * 32 / run.heatmap_size ** 0.5 / 5.6 * (0.8 if run.loss == "mse_ma" else 1.0) * (
        1 + 0.01 * (run.ma_weight or 0)
    )


def _write_split(root, dataset: str, rng) -> np.ndarray:
    """A prepared test split of N_FACES smooth made-up faces; returns their landmarks [N, K, 2] image px."""
    spec = DATASETS[dataset]
    size, k = 64, spec.num_landmarks
    shade = np.linspace(60, 200, size)[None, :, None] * np.ones((size, 1, 3))
    folder = root / dataset / spec.test_split
    landmarks = rng.uniform(30, 70, (N_FACES, k, 2))
    with PreparedWriter(folder, dataset, spec.test_split, num_landmarks=k, crop_size=size) as w:
        for i in range(N_FACES):
            m = crop_affine([50, 50], 1.5 * 1.25 * 40, size)
            w.add(image=f"{i}.png", crop=shade, landmarks=landmarks[i], visible=np.ones(k, bool),
                  box=[30, 30, 40, 40], norm=30.0, crop_affine=m)
    return landmarks


def _write_eval(layout: Layout, run: Run, methods: list[str], gt: np.ndarray, rng) -> None:
    folder = layout.eval_dir(run)
    folder.mkdir(parents=True)
    per_image = pd.DataFrame([
        {"index": i, "image": f"{i}.png", "method": m, "nme": _nme(run, m) * (1 + 0.2 * (i - 2.5) / 2.5)}
        for m in methods for i in range(N_FACES)
    ])
    per_image.to_csv(folder / "per_image.csv", index=False)
    summary = per_image.groupby("method", sort=False)["nme"].mean().reset_index()
    summary = summary.assign(fr=0.0, auc=0.5, threshold=0.1, n_images=N_FACES)
    summary.to_csv(folder / "summary.csv", index=False)
    preds = {m: gt + rng.normal(0, 30 * _nme(run, m), gt.shape) for m in methods}
    np.savez(folder / "predictions.npz", gt=gt, **preds)


@pytest.fixture
def project(tmp_path):
    """Hand-made results for OVERRIDES' params (plus a stale run that must not be read)."""
    rng = np.random.default_rng(0)
    prepared = tmp_path / "prepared"
    params = load_params(overrides=[*OVERRIDES, f"data.prepared_dir={prepared}"])
    layout = Layout(tmp_path / "results")
    methods = params.decode.methods
    gt = {d: _write_split(prepared, d, rng) for d in params.grid.datasets}
    runs = grid_runs(params) + list(ma_sweep_runs(params).values()) + [Run("cofw", 16, "mse")]  # 16: stale
    for run in dict.fromkeys(runs):
        _write_eval(layout, run, methods, gt[run.dataset], rng)
    layout.model_info.write_text("heatmap_size,params_m,gflops\n64,9.66,4.72\n32,9.66,1.21\n8,9.5,0.1\n4,9.4,0.05\n")
    layout.bench("cpu").parent.mkdir()
    pd.DataFrame([
        {"device": "cpu", "heatmap_size": s, "method": m, "batch": 32, "ms": ms * s / 8, "faces_per_s": 32e3 / ms}
        for s in (64, 8) for m, ms in {"one_hot": 1.0, "keyposs": 9.0, "igno": 300.0, "popos": 2.0}.items()
    ]).assign(ratio_to_one_hot=lambda t: t.ms / t.groupby("heatmap_size").ms.transform("first")).to_csv(
        layout.bench("cpu"), index=False)
    layout.oracle("synth").parent.mkdir()
    for dataset in params.grid.datasets:
        pd.DataFrame([
            {"condition": c, "heatmap_size": s, "method": m, "mean_px": 0.1 * s, "median_px": 0.05 * s, "max_px": s}
            for c in ("clean", "noise") for s in params.grid.heatmap_sizes for m in methods
        ]).to_csv(layout.oracle(dataset), index=False)
    layout.decoder_sweep.parent.mkdir()
    pd.DataFrame([
        {"knob": k, "value": float(v), "nme": 0.03 + 0.001 * v, "fr": 0.0, "auc": 0.6, "threshold": 0.1, "n_images": 6}
        for k in ("region", "samples_per_pixel", "anchors") for v in getattr(params.sweeps, k)
    ]).to_csv(layout.decoder_sweep, index=False)
    return params, layout


def test_every_table_and_figure(project):
    params, layout = project
    report = build_report(params, layout.root, layout.report_dir)
    out = layout.report_dir
    assert report == out / "report.md"
    expected = {"report.md", "metrics.json", "table1.csv", "per_resolution.csv", "decoder_speed.csv", "ablation.csv",
                "sweeps.csv", "oracle.csv", "fig3_radar.png", "fig4_ablation.png", "fig5_sweeps.png", "ced.png",
                "fig6_synth.png", "fig6_cofw.png"} | {f"fig5_{k}.csv" for k in ("region", "samples_per_pixel",
                                                                                 "anchors", "ma_weight")}
    assert {p.name for p in out.iterdir()} == expected
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    per_res = pd.read_csv(out / "per_resolution.csv")
    assert len(per_res) == 2 * 2 * 5 * 3  # datasets x losses x decoders x sizes; the stale 16 is not read
    assert set(per_res.heatmap_size) == {32, 8, 4}
    row = per_res[(per_res.dataset == "cofw") & (per_res.loss == "mse_ma") & (per_res.method == "popos")
                  & (per_res.heatmap_size == 8)].iloc[0]
    assert row.nme == pytest.approx(100 * _nme(Run("cofw", 8, "mse_ma"), "popos"))
    assert row.paper_nme == paper.per_resolution_nme("cofw", "popos", 8) == 7.36
    assert per_res[per_res.dataset == "synth"].paper_nme.isna().all()

    t1 = pd.read_csv(out / "table1.csv")
    assert t1[["heatmap_size", "source"]].values.tolist() == [[32, "ours"], [32, "paper"]]
    assert t1.loc[1, "cofw"] == paper.TABLE1_NME[32]["cofw"] and np.isnan(t1.loc[1, "synth"])
    assert t1.loc[0, "params_m"] == 9.66 and t1.loc[1, "gflops"] == paper.TABLE1_GFLOPS[32]

    speed = pd.read_csv(out / "decoder_speed.csv")
    at64 = speed[speed.heatmap_size == 64].set_index("method")
    assert at64.loc["popos", "paper_fps"] == paper.TABLE2_FPS["popos"]
    assert speed[speed.heatmap_size == 8].paper_fps.isna().all()
    assert at64.loc["popos", "ms_per_face"] == pytest.approx(at64.loc["popos", "ms"] / 32)

    ablation = pd.read_csv(out / "ablation.csv")
    assert set(ablation.step) == {s for s, _, _ in ABLATION_STEPS}
    assert len(ablation) == 5 * 2 * 3

    sweeps = pd.read_csv(out / "sweeps.csv")
    assert sweeps.groupby("knob").size().to_dict() == {"region": 2, "samples_per_pixel": 3, "anchors": 2,
                                                       "ma_weight": 3}
    ma = sweeps[sweeps.knob == "ma_weight"].set_index("value").nme
    assert ma[0.0] == pytest.approx(100 * _nme(Run("cofw", 8, "mse"), "popos_authors"))  # sweeps.method
    assert ma[3.0] == pytest.approx(100 * _nme(Run("cofw", 8, "mse_ma", 3.0), "popos_authors"))  # sweeps.method
    assert ma[6.0] == pytest.approx(100 * _nme(Run("cofw", 8, "mse_ma"), "popos_authors"))  # sweeps.method
    assert pd.read_csv(out / "fig5_ma_weight.csv").columns.tolist() == ["value", "nme"]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nme"]["cofw"]["mse_ma"]["popos"]["8"] == pytest.approx(row.nme, abs=1e-4)
    assert set(metrics["nme"]["synth"]["mse"]["one_hot"]) == {"32", "8", "4"}

    md = report.read_text()
    assert md.startswith(f"# {params.report.title}")
    assert "7.36)" in md and "| POPoS 32x32 (paper) |" in md  # paper values beside ours
    for png in expected:
        if png.endswith(".png"):
            assert f"]({png})" in md
    assert len(pd.read_csv(out / "oracle.csv")) == 2 * 2 * 3 * 5


def test_missing_inputs_are_listed(project):
    params, layout = project
    (layout.eval_dir(Run("synth", 4, "mse")) / "summary.csv").unlink()
    layout.decoder_sweep.unlink()
    with pytest.raises(FileNotFoundError, match="2 missing") as err:
        build_report(params, layout.root, layout.report_dir)
    assert "synth_4_mse/summary.csv" in str(err.value) and "decoders.csv" in str(err.value)
    assert not layout.report_dir.exists()


def test_required_inputs_follow_params(project):
    params, layout = project
    files = {str(p.relative_to(layout.root)) for p in required_inputs(params, layout) if layout.root in p.parents}
    assert "eval/cofw_8_mse_ma_w3/summary.csv" in files  # the MA sweep's own run
    assert not any("cofw_16" in f for f in files)
    assert "eval/cofw_8_mse_ma/predictions.npz" in files and "eval/cofw_32_mse_ma/predictions.npz" not in files


def test_failed_build_keeps_the_previous_report(project):
    params, layout = project
    build_report(params, layout.root, layout.report_dir)
    before = {p.name: p.read_bytes() for p in layout.report_dir.iterdir()}
    (layout.eval_dir(Run("cofw", 4, "mse_ma")) / "predictions.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        build_report(params, layout.root, layout.report_dir)
    assert {p.name: p.read_bytes() for p in layout.report_dir.iterdir()} == before
    assert [p.name for p in layout.root.iterdir() if p.name.startswith(".")] == []


def test_stale_decoder_sweep_is_refused(project):
    params, layout = project
    params = params.model_copy(update={"sweeps": params.sweeps.model_copy(update={"anchors": [5, 10, 20]})})
    with pytest.raises(ValueError, match="anchors"):
        build_report(params, layout.root, layout.report_dir)
