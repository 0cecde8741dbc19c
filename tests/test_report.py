"""The report on a generated results tree at the paper's scale (tests/paper_scale.py: params.yaml's 5 datasets,
55 runs, unlabelled COCO-WholeBody points): every file, the headline, the paper's numbers beside the authors'
decoder and only for the paper's loss, one Table 2 convention, masked overlays with the evaluation's NME, the
face check, clear errors for missing inputs, atomic output."""

import json
import shutil

import matplotlib.collections
import numpy as np
import pandas as pd
import pytest
import torch
from paper_scale import write_paper_scale

import popos.report
from popos import paper_numbers as paper
from popos.layout import Run
from popos.report import build_report, inputs, required_inputs, tables
from popos.report.figures.overlays import overlay_faces, overlay_figure, overlay_methods
from popos.report.style import DECODER_COLORS, datasets

FACES = 12  # per test split: enough for every table and figure, small enough to stay fast


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The paper-scale tree (Figure 6 with one face per size, to stay fast) and its report."""
    root = tmp_path_factory.mktemp("paper_scale")
    params, layout = write_paper_scale(root, faces=FACES)
    params = params.model_copy(update={"report": params.report.model_copy(update={"overlay_faces": 1})})
    report = build_report(params, layout.root, layout.report_dir)
    return params, layout, report


@pytest.fixture
def tree(built, tmp_path):
    """A copy of the built tree that a test may damage."""
    params, layout, _ = built
    root = tmp_path / "copy"
    shutil.copytree(layout.root.parent, root)
    params = params.model_copy(update={
        "data": params.data.model_copy(update={"prepared_dir": str(root / "prepared")}),
        "grid": params.grid.model_copy(update={"results_dir": str(root / "results")}),
    })
    return params, type(layout)(root / "results")


def test_paper_scale_tree_is_the_default_grid(built):
    params, layout, _ = built
    assert params.grid.datasets == ["wflw", "300w", "cofw", "aflw", "cocowb_face"]
    assert len(inputs.report_runs(params)) == 55
    assert all(f.is_file() for f in required_inputs(params, layout))


def test_every_table_and_figure(built):
    params, layout, report = built
    out = layout.report_dir
    assert report == out / "report.md"
    figures = {"fig3_radar.png", "fig4_ablation.png", "fig5_sweeps.png", "ced.png", "speed.png", "nme_grid.png"}
    figures |= {f"fig6_{d}.jpg" for d in params.grid.datasets}
    csvs = {f"{t}.csv" for t in ("headline", "table1", "per_resolution", "decoder_speed", "ablation", "sweeps",
                                 "oracle")} | {f"fig5_{k}.csv" for k in ("region", "samples_per_pixel", "anchors",
                                                                          "ma_weight")}
    assert {p.name for p in out.iterdir()} == figures | csvs | {"report.md", "metrics.json"}
    md = report.read_text()
    for name in figures:
        magic = b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else b"\xff\xd8\xff"
        data = (out / name).read_bytes()
        assert data.startswith(magic) and 20_000 < len(data) < 1_500_000, name
        assert f"]({name})" in md
    # Figure 6 in the report's dataset order (the paper's first), not alphabetical
    positions = [md.index(f"(fig6_{d}.jpg)") for d in datasets(params)]
    assert positions == sorted(positions)
    per_res = pd.read_csv(out / "per_resolution.csv")
    assert len(per_res) == 5 * 2 * 7 * 5
    metrics = json.loads((out / "metrics.json").read_text())
    row = per_res[(per_res.dataset == "cofw") & (per_res.loss == "mse_ma") & (per_res.method == "popos")
                  & (per_res.heatmap_size == 8)].iloc[0]
    assert metrics["nme"]["cofw"]["mse_ma"]["popos"]["8"] == pytest.approx(row.nme, abs=1e-4)
    assert set(metrics["ma_weight_nme"]) == {f"{w:g}" for w in params.sweeps.ma_weight}


def test_headline_comes_first_with_a_verdict_per_dataset(built):
    params, layout, report = built
    md = report.read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Headline: POPoS against the paper" and sections[1].startswith("## Table 1")
    assert sections[-1] == "## Appendix" and md.index("### B. Decoding without a model") > md.index("## Appendix")
    head = pd.read_csv(layout.report_dir / "headline.csv")
    per_res = pd.read_csv(layout.report_dir / "per_resolution.csv").set_index(["dataset", "loss", "method",
                                                                               "heatmap_size"]).sort_index()
    assert list(dict.fromkeys(head.dataset)) == ["wflw", "300w", "aflw", "cofw", "cocowb_face"]
    assert head.groupby("dataset", sort=False).heatmap_size.apply(list).iloc[0] == [8, 4, 64, 32, 16]
    for r in head.itertuples():
        assert r.authors == pytest.approx(per_res.loc[(r.dataset, "mse_ma", "popos_authors", r.heatmap_size), "nme"])
        assert r.ours == pytest.approx(per_res.loc[(r.dataset, "mse_ma", "popos", r.heatmap_size), "nme"])
        assert r.paper == paper.per_resolution_nme(r.dataset, "popos_authors", r.heatmap_size)
        assert r.ours_vs_authors == pytest.approx(r.ours - r.authors)
        assert r.authors_vs_paper == pytest.approx(r.authors - r.paper)
        others = per_res.loc[r.dataset, "mse_ma"].xs(r.heatmap_size, level="heatmap_size").drop(
            ["popos", "popos_authors"])
        assert r.best_other == others.nme.idxmin()
    headline = md[md.index("## Headline"):md.index("## Table 1")]
    for d in datasets(params):
        label = paper.DATASET_LABELS[d]
        verdict = next(line for line in headline.splitlines() if line.startswith(f"- **{label}**"))
        assert "reproduced within 10 %" in verdict and "8x8" in verdict and "4x4" in verdict
    assert "Checked: every model's predictions cover exactly the faces" in headline


def test_verdict_says_not_reproduced_and_which_loss(built):
    params, layout, _ = built
    summary = inputs.load_summaries(params, layout, inputs.grid_runs(params))
    worse = summary.assign(nme=np.where((summary.method == "popos_authors") & (summary.heatmap_size == 4),
                                        summary.nme * 1.5, summary.nme))
    head = tables.headline(params, worse)
    line = popos.report.markdown.verdict(params, head[head.dataset == "300w"])
    assert "NOT reproduced within 10 % at 4x4 +" in line
    mse = params.model_copy(update={"report": params.report.model_copy(update={"main_loss": "mse"})})
    assert tables.headline(mse, summary).paper.isna().all()  # the paper trained with MA: nothing beside MSE


def test_paper_numbers_beside_the_authors_decoder_of_the_papers_loss_only(built):
    params, layout, report = built
    per_res = pd.read_csv(layout.report_dir / "per_resolution.csv")
    assert per_res[per_res.loss == "mse"].paper_nme.isna().all()
    assert per_res[per_res.method == "popos"].paper_nme.isna().all()
    authors = per_res[(per_res.loss == "mse_ma") & (per_res.method == "popos_authors")]
    assert authors.paper_nme.tolist() == [paper.per_resolution_nme(d, "popos_authors", s)
                                          for d, s in zip(authors.dataset, authors.heatmap_size, strict=True)]
    md = report.read_text()
    assert "MSE models (the paper has no numbers for this loss)" in md
    cell = authors[(authors.dataset == "300w") & (authors.heatmap_size == 4)].iloc[0]
    assert f"{cell.nme:.2f} (9.96)" in md

    t1 = pd.read_csv(layout.report_dir / "table1.csv")
    assert t1.columns.tolist() == ["heatmap_size", "source", "wflw", "300w", "aflw", "cofw", "cocowb_face", "params_m",
                                   "gflops"]
    assert t1[["heatmap_size", "source"]].values.tolist() == [[s, x] for s in (64, 32)
                                                             for x in ("paper", "popos_authors", "popos")]
    assert t1.loc[3, "cofw"] == paper.TABLE1_NME[32]["cofw"] and np.isnan(t1.loc[3, "cocowb_face"])
    ours = t1.loc[5, "aflw"]
    diffs = f"({ours - t1.loc[4, 'aflw']:+.2f} vs authors', {ours - t1.loc[3, 'aflw']:+.2f} vs paper)"
    assert f"{ours:.2f} {diffs}" in md.replace("**", "")


def test_best_values_are_bold(built):
    params, layout, report = built
    md = report.read_text()
    per_res = pd.read_csv(layout.report_dir / "per_resolution.csv")
    for _, cell in per_res.groupby(["dataset", "loss", "heatmap_size"]):
        assert f"**{cell.nme.min():.2f}**" in md
    speed = pd.read_csv(layout.report_dir / "decoder_speed.csv")
    assert f"**{speed.faces_per_s.max():,.0f}**" in md


def test_table2_one_convention_stated_in_the_header(built):
    params, layout, report = built
    speed = pd.read_csv(layout.report_dir / "decoder_speed.csv")
    bench = pd.read_csv(layout.bench("cpu"))
    bench = bench[(bench.method != "max_floor") & ~bench.compiled]  # Table 2: the eager decoders
    np.testing.assert_allclose(speed.time_vs_one_hot, bench.ratio_to_one_hot)
    at64 = speed[speed.heatmap_size == paper.TABLE2_HEATMAP_SIZE].set_index("method")
    expected = paper.TABLE2_MS["popos_authors"] / paper.TABLE2_MS["one_hot"]
    assert at64.loc["popos_authors", "paper_time_vs_one_hot"] == pytest.approx(expected)
    assert np.isnan(at64.loc["popos", "paper_time_vs_one_hot"])  # the paper timed the authors' decoder
    assert (at64.drop(index="one_hot").time_vs_one_hot > 1).all()  # slower than one-hot: above 1, as the paper's
    assert (at64.drop(index="one_hot").paper_time_vs_one_hot.dropna() > 1).all()
    md = report.read_text()
    assert "time vs one-hot (ours)" in md and "time vs one-hot (paper)" in md
    assert "divided by one-hot's time, for ours and the paper's alike" in md


def test_overlays_mask_unlabelled_points_and_show_the_evaluations_nme(built):
    params, layout, _ = built
    dataset = "cocowb_face"
    per_image = inputs.load_per_image(params, layout, inputs.grid_runs(params))
    fig = overlay_figure(params, layout, dataset, per_image)
    split = np.load(inputs.test_split_dir(params, dataset) / "annotations.npz")
    face = overlay_faces(len(split["image"]), params.report.overlay_faces)[0]
    visible = split["visible"][face]
    assert not visible.all()  # the generator leaves some points unlabelled, stored at (0, 0)
    crop_origin = split["crop_affine"][face][:, 2]  # where image (0, 0) lands in the crop
    methods = overlay_methods(params)
    assert methods == ["one_hot", "two_hot", "dark", "keyposs", "popos_authors", "popos"]
    panels = [ax for block in fig.subfigs for ax in block.axes]
    assert len(panels) == len(methods) * len(params.report.overlay_sizes)
    for ax, (size, method) in zip(panels, [(s, m) for s in params.report.overlay_sizes for m in methods], strict=True):
        lines = [c for c in ax.collections if isinstance(c, matplotlib.collections.LineCollection)]
        segments = np.concatenate([np.asarray(s) for s in lines[0].get_segments()])
        assert len(lines[0].get_segments()) == visible.sum()
        assert not np.isclose(segments, crop_origin, atol=1e-3).all(axis=1).any()
        nme = per_image[(per_image.run == Run(dataset, size, "mse_ma").name) & (per_image.method == method)
                        & (per_image["index"] == face)].nme.iloc[0]
        assert [t.get_text() for t in ax.texts] == [f"{100 * nme:.1f}%"]


def test_face_check_names_runs_evaluated_on_other_faces(built):
    params, layout, _ = built
    per_image = inputs.load_per_image(params, layout, inputs.report_runs(params))
    assert inputs.check_faces(params, per_image) == []
    run = Run("cofw", 4, "mse")
    renamed = per_image.copy()
    renamed.loc[(renamed.run == run.name) & (renamed["index"] == 3), "image"] = "cofw/other.jpg"
    dropped = per_image[~((per_image.run == "aflw_8_mse_ma") & (per_image["index"] == 0))]
    problems = inputs.check_faces(params, renamed) + inputs.check_faces(params, dropped)
    assert len(problems) == 2
    assert problems[0].startswith("cofw_4_mse: face 3 is 'cofw/other.jpg', the split's is 'cofw/00003.jpg'")
    assert problems[1].startswith(f"aflw_8_mse_ma (one_hot): {FACES - 1} faces, the split has {FACES}")


def test_the_report_names_commit_torch_and_device(built):
    _, _, report = built
    first = report.read_text().split("\n\n")[1]
    assert f"torch {torch.__version__}" in first and "on CPU " in first and "GPU " in first
    commit = first.split("commit `")[1].split("`")[0]
    assert len(commit.split()[0]) == 40 or commit.startswith("unknown")


def test_one_colour_per_decoder():
    from popos.decoders import VARIANTS

    assert set(DECODER_COLORS) == set(VARIANTS)
    assert len(set(DECODER_COLORS.values())) == len(DECODER_COLORS)


def test_missing_inputs_are_listed(tree):
    params, layout = tree
    (layout.eval_dir(Run("aflw", 4, "mse")) / "summary.csv").unlink()
    layout.decoder_sweep.unlink()
    with pytest.raises(FileNotFoundError, match="2 missing") as err:
        build_report(params, layout.root, layout.root / "new_report")
    assert "aflw_4_mse/summary.csv" in str(err.value) and "decoders.csv" in str(err.value)
    assert not (layout.root / "new_report").exists()


def test_required_inputs_follow_params(built):
    params, layout, _ = built
    files = {str(p.relative_to(layout.root)) for p in required_inputs(params, layout) if layout.root in p.parents}
    assert "eval/300w_32_mse_ma_w2/per_image.csv" in files  # the MA sweep's own run
    assert "eval/cofw_8_mse_ma/predictions.npz" in files and "eval/cofw_32_mse_ma/predictions.npz" not in files
    fewer = params.model_copy(update={"grid": params.grid.model_copy(update={"heatmap_sizes": [64, 32]})})
    assert not any("_8_" in str(p) for p in required_inputs(fewer, layout))


def test_failed_build_keeps_the_previous_report(tree, monkeypatch):
    params, layout = tree
    before = {p.name: p.read_bytes() for p in layout.report_dir.iterdir()}

    def broken(*_):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(popos.report, "radar_figure", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        build_report(params, layout.root, layout.report_dir)
    assert {p.name: p.read_bytes() for p in layout.report_dir.iterdir()} == before
    assert [p.name for p in layout.root.iterdir() if p.name.startswith(".")] == []


def test_stale_inputs_are_refused(tree):
    params, layout = tree
    more = params.model_copy(update={"sweeps": params.sweeps.model_copy(update={"anchors": [5, 10, 20]})})
    with pytest.raises(ValueError, match="anchors"):
        build_report(more, layout.root, layout.report_dir)
    bench = pd.read_csv(layout.bench("cpu")).drop(columns=["ms_q1"])
    bench.to_csv(layout.bench("cpu"), index=False)
    with pytest.raises(ValueError, match=r"decoders_cpu.csv: no column\(s\) \['ms_q1'\]"):
        build_report(params, layout.root, layout.report_dir)
