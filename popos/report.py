"""The report: the paper's tables and figures, ours beside the paper's, from the current params' runs.

:func:`build_report` reads only the outputs of the runs the params ask for (:mod:`popos.layout`), never
whatever else lies under the results root, and writes ``<out_dir>/``:

* ``report.md``: every table below in markdown, with the figures;
* ``table1.csv`` (NME of POPoS at 64 and 32 per dataset, parameters, GFLOPs), ``per_resolution.csv``
  (every decoder x heatmap size x loss: NME, FR, AUC, the paper's NME), ``decoder_speed.csv`` (Table 2),
  ``ablation.csv`` (Figure 4), ``sweeps.csv`` and ``fig5_<knob>.csv`` (Figure 5), ``oracle.csv``;
* ``fig3_radar.png``, ``fig4_ablation.png``, ``fig5_sweeps.png``, ``ced.png``, ``fig6_<dataset>.png``;
* ``metrics.json``: NME (%) per dataset x loss x decoder x heatmap size, for ``dvc metrics``.

NME and FR are in percent, AUC is a fraction in [0, 1] (all at ``evaluate.fr_threshold``); oracle
errors are in input px. The folder is written beside ``out_dir`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.lines
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from popos import paper_numbers as paper
from popos.config import Params
from popos.layout import Layout, Run, grid_runs, ma_sweep_runs

SWEEP_KNOBS = {
    "region": "(a) sampling area (side, heatmap px)",
    "samples_per_pixel": "(b) sampling rate tau (samples / heatmap px)",
    "anchors": "(c) anchors K",
    "ma_weight": "(d) MA loss weight",
}
# Figure 4's steps from KeyPosS to POPoS: (label, decoder, loss).
ABLATION_STEPS = (
    ("KeyPosS (LLS)", "keyposs", "mse"),
    ("+ IGNO", "igno", "mse"),
    ("+ IGNO + MA loss", "igno", "mse_ma"),
    ("PPPSC (no MA loss)", "popos", "mse"),
    ("PPPSC + MA loss = POPoS", "popos", "mse_ma"),
)
LOSS_LABELS = {"mse": "MSE", "mse_ma": "MSE + MA", "mse_biased": "MSE, biased targets"}


def build_report(params: Params, results: str | Path, out_dir: str | Path) -> Path:
    """Write the report of ``params``' runs under ``results`` into ``out_dir``; returns ``report.md``'s path.

    Raises ``FileNotFoundError`` listing every missing input file (run the workflow first).
    """
    layout = Layout(results)
    _check_inputs(params, layout)
    summary = _load_summaries(params, layout, grid_runs(params))
    per_image = _load_per_image(params, layout)
    model_info = pd.read_csv(layout.model_info)
    bench = pd.concat([pd.read_csv(layout.bench(d)) for d in params.bench.devices], ignore_index=True)
    oracle = pd.concat(
        [pd.read_csv(layout.oracle(d)).assign(dataset=d) for d in params.grid.datasets], ignore_index=True
    )
    sweeps = _sweep_table(params, layout)

    tables = {
        "table1": table1(params, summary, model_info),
        "per_resolution": per_resolution(params, summary),
        "decoder_speed": decoder_speed(bench),
        "ablation": ablation(params, summary),
        "sweeps": sweeps,
        "oracle": oracle,
    }
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        for knob, part in sweeps.groupby("knob", sort=False):
            part[["value", "nme"]].to_csv(tmp / f"fig5_{knob}.csv", index=False)
        figures = {
            "fig3_radar.png": radar_figure(params, tables["per_resolution"]),
            "fig4_ablation.png": ablation_figure(params, tables["ablation"]),
            "fig5_sweeps.png": sweeps_figure(params, sweeps),
            "ced.png": ced_figure(params, per_image),
        }
        for d in params.grid.datasets:
            figures[f"fig6_{d}.png"] = overlay_figure(params, layout, d)
        for name, fig in figures.items():
            fig.savefig(tmp / name, dpi=110, bbox_inches="tight")
        (tmp / "metrics.json").write_text(json.dumps(_metrics(tables["per_resolution"], sweeps), indent=2) + "\n")
        (tmp / "report.md").write_text(_markdown(params, tables, sorted(figures)))
    return out_dir / "report.md"


# ---------------------------------------------------------------- inputs
def required_inputs(params: Params, layout: Layout) -> list[Path]:
    """Every file :func:`build_report` reads for ``params`` (the workflow's report rule declares them)."""
    files = [layout.model_info, layout.decoder_sweep]
    files += [layout.bench(d) for d in params.bench.devices]
    files += [layout.oracle(d) for d in params.grid.datasets]
    for run in grid_runs(params):
        files += [layout.eval_dir(run) / "summary.csv", layout.eval_dir(run) / "per_image.csv"]
        if run.loss == params.report.main_loss and run.heatmap_size in params.report.overlay_sizes:
            files.append(layout.eval_dir(run) / "predictions.npz")
    files += [layout.eval_dir(run) / "summary.csv" for run in ma_sweep_runs(params).values()]
    files += [_test_split_dir(params, d) / "meta.json" for d in params.grid.datasets]
    return list(dict.fromkeys(files))


def _check_inputs(params: Params, layout: Layout) -> None:
    missing = [str(f) for f in required_inputs(params, layout) if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the report needs {len(missing)} missing file(s); run the workflow first:\n  " + "\n  ".join(missing)
        )


def _test_split_dir(params: Params, dataset: str) -> Path:
    from popos.data.registry import DATASETS

    return Path(params.data.prepared_dir) / dataset / DATASETS[dataset].test_split


def _load_summaries(params: Params, layout: Layout, runs: list[Run]) -> pd.DataFrame:
    """Long table: dataset, heatmap_size, loss, method, nme, fr, auc (fractions), one row per run x method."""
    frames = []
    for run in runs:
        path = layout.eval_dir(run) / "summary.csv"
        table = pd.read_csv(path)
        missing = sorted(set(params.decode.methods) - set(table["method"]))
        if missing:
            raise ValueError(f"{path}: no rows for decoder(s) {missing}; re-run `popos evaluate` with these params")
        table = table[table["method"].isin(params.decode.methods)]
        frames.append(table.assign(dataset=run.dataset, heatmap_size=run.heatmap_size, loss=run.loss))
    return pd.concat(frames, ignore_index=True)


def _load_per_image(params: Params, layout: Layout) -> pd.DataFrame:
    """Per-image NME (fraction) of the main loss's runs: dataset, heatmap_size, method, nme."""
    runs = [r for r in grid_runs(params) if r.loss == params.report.main_loss]
    frames = [
        pd.read_csv(layout.eval_dir(r) / "per_image.csv").assign(dataset=r.dataset, heatmap_size=r.heatmap_size)
        for r in runs
    ]
    table = pd.concat(frames, ignore_index=True)
    return table[table["method"].isin(params.decode.methods)]


def _sweep_table(params: Params, layout: Layout) -> pd.DataFrame:
    """Figure 5 as one long table: knob, value, nme (%), fr (%), auc; decoder ``sweeps.method`` throughout."""
    decoders = pd.read_csv(layout.decoder_sweep)
    expected = {k: list(getattr(params.sweeps, k)) for k in ("region", "samples_per_pixel", "anchors")}
    for knob, values in expected.items():
        got = decoders.loc[decoders["knob"] == knob, "value"].tolist()
        if sorted(got) != sorted(float(v) for v in values):
            raise ValueError(f"{layout.decoder_sweep}: {knob} values {got} differ from sweeps.{knob} {values}; re-run")
    weights = ma_sweep_runs(params)
    ma = _load_summaries(params, layout, list(weights.values()))
    ma = ma[ma["method"] == params.sweeps.method].assign(knob="ma_weight", value=list(weights))
    table = pd.concat([decoders, ma], ignore_index=True)[["knob", "value", "nme", "fr", "auc"]]
    return table.assign(nme=table["nme"] * 100, fr=table["fr"] * 100)


# ---------------------------------------------------------------- tables
def table1(params: Params, summary: pd.DataFrame, model_info: pd.DataFrame) -> pd.DataFrame:
    """Table 1: NME (%) of POPoS per dataset at heatmaps 64 and 32 (main loss), params (M), GFLOPs; ours and
    the paper's, one row per heatmap size x source."""
    rows = []
    for size in [s for s in (64, 32) if s in params.grid.heatmap_sizes]:
        info = model_info[model_info["heatmap_size"] == size]
        if info.empty:
            raise ValueError(f"model_info.csv has no row for heatmap size {size}")
        ours = {"heatmap_size": size, "source": "ours", "params_m": info["params_m"].iloc[0],
                "gflops": info["gflops"].iloc[0]}
        theirs = {"heatmap_size": size, "source": "paper", "params_m": paper.TABLE1_PARAMS_M[size],
                  "gflops": paper.TABLE1_GFLOPS[size]}
        for d in params.grid.datasets:
            sel = summary[(summary.dataset == d) & (summary.heatmap_size == size)
                          & (summary.loss == params.report.main_loss) & (summary.method == "popos")]
            ours[d] = 100 * sel["nme"].iloc[0]
            theirs[d] = paper.TABLE1_NME[size].get(d, np.nan)
        rows += [ours, theirs]
    columns = ["heatmap_size", "source", *params.grid.datasets, "params_m", "gflops"]
    return pd.DataFrame(rows, columns=columns)


def per_resolution(params: Params, summary: pd.DataFrame) -> pd.DataFrame:
    """Every dataset x loss x decoder x heatmap size: nme (%), fr (%), auc, paper_nme (%, where published)."""
    table = summary[["dataset", "loss", "method", "heatmap_size", "nme", "fr", "auc"]].copy()
    table["nme"] *= 100
    table["fr"] *= 100
    cells = zip(table.dataset, table.method, table.heatmap_size, strict=True)
    table["paper_nme"] = [paper.per_resolution_nme(d, m, s) for d, m, s in cells]
    order = {
        "dataset": params.grid.datasets, "loss": params.grid.losses, "method": params.decode.methods,
        "heatmap_size": params.grid.heatmap_sizes,
    }
    for col, values in order.items():
        table[col] = pd.Categorical(table[col], categories=values, ordered=True)
    table = table.sort_values(list(order)).reset_index(drop=True)
    for col in order:
        table[col] = table[col].astype(object)
    return table


def decoder_speed(bench: pd.DataFrame) -> pd.DataFrame:
    """Table 2: the benchmark rows plus ms per face and, at the paper's heatmap size, its FPS, ms and ratio."""
    table = bench.copy()
    table["ms_per_face"] = table["ms"] / table["batch"]
    at_paper_size = table["heatmap_size"] == paper.TABLE2_HEATMAP_SIZE
    table["paper_fps"] = np.where(at_paper_size, table["method"].map(paper.TABLE2_FPS), np.nan)
    table["paper_ms"] = np.where(at_paper_size, table["method"].map(paper.TABLE2_MS), np.nan)
    table["paper_ratio_to_one_hot"] = table["paper_fps"] / paper.TABLE2_FPS["one_hot"]
    return table


def ablation(params: Params, summary: pd.DataFrame) -> pd.DataFrame:
    """Figure 4: NME (%) of each step from KeyPosS to POPoS, per dataset x heatmap size."""
    rows = []
    for label, method, loss in ABLATION_STEPS:
        if method not in params.decode.methods or loss not in params.grid.losses:
            continue
        sel = summary[(summary.method == method) & (summary.loss == loss)]
        rows += [{"step": label, "method": method, "loss": loss, "dataset": r.dataset,
                  "heatmap_size": r.heatmap_size, "nme": 100 * r.nme} for r in sel.itertuples()]
    return pd.DataFrame(rows, columns=["step", "method", "loss", "dataset", "heatmap_size", "nme"])


def _metrics(per_res: pd.DataFrame, sweeps: pd.DataFrame) -> dict:
    nme: dict = {}
    for r in per_res.itertuples():
        nme.setdefault(r.dataset, {}).setdefault(r.loss, {}).setdefault(r.method, {})[str(r.heatmap_size)] = round(
            float(r.nme), 4
        )
    ma = sweeps[sweeps.knob == "ma_weight"]
    return {"nme": nme, "ma_weight_nme": {f"{v:g}": round(float(n), 4) for v, n in zip(ma.value, ma.nme, strict=True)}}


# ---------------------------------------------------------------- figures
def _label(name: str) -> str:
    return paper.DATASET_LABELS.get(name) or paper.METHOD_LABELS.get(name) or name


def _colors(methods: list[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _grid_figure(n: int, ncols: int, size: tuple[float, float], **subplot_kw) -> tuple[Figure, list]:
    ncols = min(n, ncols)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1, **subplot_kw) for i in range(n)]
    return fig, axes


def radar_figure(params: Params, per_res: pd.DataFrame) -> Figure:
    """Figure 3: per dataset a radar of NME (%, log radius) with one axis per heatmap size, one polygon per
    decoder (main loss); the paper's polygons dashed where it has them. Smaller is better."""
    sizes = params.grid.heatmap_sizes
    colors = _colors(params.decode.methods)
    fig, axes = _grid_figure(len(params.grid.datasets), 3, (4.4, 4.4), projection="polar")
    data = per_res[per_res.loss == params.report.main_loss]
    values = np.concatenate([data["nme"].to_numpy(float), data["paper_nme"].dropna().to_numpy(float)])
    ticks = _log_ticks(values.min(), values.max())
    lo = np.log10(ticks[0])
    theta = np.linspace(0, 2 * np.pi, len(sizes), endpoint=False)
    closed = np.append(theta, theta[0])
    for ax, d in zip(axes, params.grid.datasets, strict=True):
        ax.set_theta_zero_location("N")
        ax.set_theta_direction(-1)
        part = data[data.dataset == d]
        for m in params.decode.methods:
            row = part[part.method == m].set_index("heatmap_size").loc[sizes]
            r = np.log10(row["nme"].to_numpy(float)) - lo
            ax.plot(closed, np.append(r, r[0]), color=colors[m], lw=1.6, label=_label(m))
            theirs = row["paper_nme"].to_numpy(float)
            if np.isfinite(theirs).all():
                r = np.log10(theirs) - lo
                ax.plot(closed, np.append(r, r[0]), color=colors[m], lw=1.0, ls="--")
        ax.set_xticks(theta, [f"{s}x{s}" for s in sizes])
        ax.tick_params(axis="x", pad=8)
        ax.set_yticks(np.log10(ticks) - lo, [f"{t:g}" for t in ticks], fontsize=7)
        ax.set_ylim(0, np.log10(ticks[-1]) - lo)
        ax.set_rlabel_position(180 / len(sizes))
        ax.set_title(f"{_label(d)}", pad=16)
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(matplotlib.lines.Line2D([], [], color="gray", ls="--"))
    labels.append("paper (where published)")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(f"Figure 3: NME (%) by heatmap size, {LOSS_LABELS[params.report.main_loss]} models "
                 "(log radius; smaller is better)")
    return fig


def _log_ticks(low: float, high: float) -> np.ndarray:
    """1-2-5 ticks from the one at or below ``low`` to the one at or above ``high``.

    >>> _log_ticks(3.0, 40.0).tolist()
    [2.0, 5.0, 10.0, 20.0, 50.0]
    """
    candidates = np.array([m * 10.0**e for e in range(-3, 4) for m in (1, 2, 5)])
    first = candidates[candidates <= low].max()
    last = candidates[candidates >= high].min()
    return candidates[(candidates >= first) & (candidates <= last)]


def ablation_figure(params: Params, table: pd.DataFrame) -> Figure:
    """Figure 4: grouped bars of NME (%, log scale) per heatmap size, one bar per ablation step, per dataset."""
    steps = list(dict.fromkeys(table["step"]))
    colors = _colors(steps)
    sizes = params.grid.heatmap_sizes
    fig, axes = _grid_figure(len(params.grid.datasets), 3, (5.0, 3.2))
    width = 0.8 / max(len(steps), 1)
    for ax, d in zip(axes, params.grid.datasets, strict=True):
        part = table[table.dataset == d]
        for i, step in enumerate(steps):
            nme = part[part.step == step].set_index("heatmap_size").loc[sizes, "nme"]
            ax.bar(np.arange(len(sizes)) + (i - (len(steps) - 1) / 2) * width, nme, width, color=colors[step],
                   label=step)
        ax.set_xticks(np.arange(len(sizes)), [f"{s}x{s}" for s in sizes])
        _log_y(ax, table["nme"])
        ax.set_ylabel("NME (%)")
        ax.set_title(_label(d))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(steps), 3),
               fontsize=8, frameon=False)
    fig.suptitle("Figure 4: from KeyPosS to POPoS (IGNO, MA loss, PPPSC); lower is better")
    return fig


def _log_y(ax, values: pd.Series) -> None:
    """Log y axis with plain-number 1-2-5 ticks covering ``values``."""
    ticks = _log_ticks(values.min(), values.max())
    ax.set_yscale("log")
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylim(ticks[0] * 0.9, ticks[-1] * 1.1)


def sweeps_figure(params: Params, sweeps: pd.DataFrame) -> Figure:
    """Figure 5: NME (%) of ``sweeps.method`` over each swept knob; the paper's stated optimum shaded or dashed."""
    fig, axes = _grid_figure(len(SWEEP_KNOBS), 4, (3.6, 3.0))
    for ax, (knob, title) in zip(axes, SWEEP_KNOBS.items(), strict=True):
        part = sweeps[sweeps.knob == knob].sort_values("value")
        ax.plot(part["value"], part["nme"], "o-", color="tab:blue", label="ours")
        low, high, wording = paper.FIGURE5_OPTIMA[knob]
        if high > low:
            ax.axvspan(low, high, color="tab:orange", alpha=0.2, label=f"paper: {wording}")
        else:
            ax.axvline(low, color="tab:orange", ls="--", label=f"paper: {wording}")
        # at least +-5 % of the level, so that differences in the noise do not look like trends
        low, high = part["nme"].min(), part["nme"].max()
        mid, half = (low + high) / 2, max((high - low) / 2, 0.05 * part["nme"].mean())
        ax.set_ylim(mid - 1.2 * half, mid + 1.2 * half)
        ax.set_xlabel(title)
        ax.set_ylabel("NME (%)")
        ax.legend(fontsize=7)
    s = params.sweeps
    fig.suptitle(f"Figure 5: {_label(s.method)} on {_label(s.dataset)} at {s.heatmap_size}x{s.heatmap_size}: "
                 f"(a-c) decoder knobs on the saved heatmaps of the {LOSS_LABELS[s.loss]} model, "
                 "(d) one model per MA weight")
    return fig


def ced_figure(params: Params, per_image: pd.DataFrame) -> Figure:
    """CED curves (share of faces with NME <= x, x up to twice the FR threshold, which is dashed) per
    dataset x heatmap size."""
    from popos.metrics import ced_curve

    datasets, sizes, methods = params.grid.datasets, params.grid.heatmap_sizes, params.decode.methods
    colors = _colors(methods)
    threshold = params.evaluate.fr_threshold
    fig = Figure(figsize=(2.6 * len(sizes), 2.3 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), len(sizes), squeeze=False, sharex=True, sharey=True)
    for i, d in enumerate(datasets):
        for j, s in enumerate(sizes):
            ax = axes[i][j]
            part = per_image[(per_image.dataset == d) & (per_image.heatmap_size == s)]
            for m in methods:
                x, y = ced_curve(part.loc[part.method == m, "nme"].to_numpy(), 2 * threshold)
                ax.plot(100 * x, y, color=colors[m], lw=1.2, label=_label(m))
            ax.axvline(100 * threshold, color="gray", ls="--", lw=0.8)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{_label(d)}, {s}x{s}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel("share of faces")
    for ax in axes[-1]:
        ax.set_xlabel("NME (%)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(methods), 7),
               fontsize=8, frameon=False)
    fig.suptitle(f"Cumulative error distribution ({LOSS_LABELS[params.report.main_loss]} models; dashed: the "
                 f"FR / AUC threshold {100 * threshold:g} %)")
    return fig


def overlay_figure(params: Params, layout: Layout, dataset: str) -> Figure:
    """Figure 6: each decoder's prediction (red) against the ground truth (green), error lines blue, over the
    same test faces at each of ``report.overlay_sizes`` (main loss); the face's NME (%) in each title."""
    from popos.data.prepared import PreparedSplit
    from popos.geometry import apply_affine

    split = PreparedSplit.open(_test_split_dir(params, dataset))
    faces = np.unique(np.linspace(0, len(split) - 1, params.report.overlay_faces).round().astype(int))
    methods, sizes = params.decode.methods, params.report.overlay_sizes
    fig = Figure(figsize=(1.9 * len(methods), 2.0 * len(faces) * len(sizes)), layout="constrained")
    axes = fig.subplots(len(faces) * len(sizes), len(methods), squeeze=False)
    s = split.meta["crop_size"]
    half = s / split.meta["context"] / 2
    for row_block, size in enumerate(sizes):
        run = Run(dataset, size, params.report.main_loss)
        with np.load(layout.eval_dir(run) / "predictions.npz") as z:
            preds = {m: z[m] for m in methods}
        for f, face in enumerate(faces):
            m_crop = split.crop_affine[face]
            gt = apply_affine(split.landmarks[face], m_crop)
            for j, m in enumerate(methods):
                ax = axes[row_block * len(faces) + f][j]
                pred = apply_affine(preds[m][face], m_crop)
                nme = np.linalg.norm(preds[m][face] - split.landmarks[face], axis=-1).mean() / split.norm[face]
                ax.imshow(split.crops[face])
                for (x0, y0), (x1, y1) in zip(gt, pred, strict=True):
                    ax.plot([x0, x1], [y0, y1], color="tab:blue", lw=0.7)
                ax.scatter(gt[:, 0], gt[:, 1], s=4, color="lime", zorder=3)
                ax.scatter(pred[:, 0], pred[:, 1], s=4, color="red", zorder=4)
                ax.set_xlim(s / 2 - half, s / 2 + half)
                ax.set_ylim(s / 2 + half, s / 2 - half)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{_label(m)}\n{nme * 100:.1f}%", fontsize=7)
                if j == 0:
                    ax.set_ylabel(f"{size}x{size}, face {face}", fontsize=8)
    fig.suptitle(f"Figure 6, {_label(dataset)}: green ground truth, red prediction, blue error "
                 f"({LOSS_LABELS[params.report.main_loss]} models)")
    return fig


# ---------------------------------------------------------------- markdown
def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _md_table1(params: Params, t1: pd.DataFrame) -> str:
    if t1.empty:
        return "_The grid has neither 64 nor 32 pixel heatmaps._"
    header = ["model", *[_label(d) for d in params.grid.datasets], "params (M)", "GFLOPs"]
    rows = []
    for r in t1.to_dict("records"):
        cells = []
        for d in params.grid.datasets:
            star = "*" if r["source"] == "paper" and (r["heatmap_size"], d) in paper.TABLE1_IGNO else ""
            cells.append(_fmt(r[d]) + star)
        who = "ours" if r["source"] == "ours" else "paper"
        rows.append([f"POPoS {r['heatmap_size']}x{r['heatmap_size']} ({who})", *cells, _fmt(r["params_m"], 1),
                     _fmt(r["gflops"])])
    return _md_table(header, rows)


def _md_per_resolution(params: Params, per_res: pd.DataFrame, dataset: str) -> str:
    sizes = params.grid.heatmap_sizes
    blocks = []
    for loss in params.grid.losses:
        part = per_res[(per_res.dataset == dataset) & (per_res.loss == loss)]
        rows = []
        for m in params.decode.methods:
            cells = part[part.method == m].set_index("heatmap_size").loc[sizes]
            rows.append([_label(m), *[f"{_fmt(r.nme)} ({_fmt(r.paper_nme)})" for r in cells.itertuples()]])
        blocks.append(f"NME %, ours (paper), {LOSS_LABELS[loss]} models:\n\n"
                      + _md_table(["decoder", *[f"{s}x{s}" for s in sizes]], rows))
    part = per_res[(per_res.dataset == dataset) & (per_res.loss == params.report.main_loss)]
    rows = []
    for m in params.decode.methods:
        cells = part[part.method == m].set_index("heatmap_size").loc[sizes]
        rows.append([_label(m), *[f"{_fmt(r.fr, 1)} / {_fmt(r.auc, 3)}" for r in cells.itertuples()]])
    thr = params.evaluate.fr_threshold
    blocks.append(f"FR@{thr:g} (%) / AUC@{thr:g}, {LOSS_LABELS[params.report.main_loss]} models:\n\n"
                  + _md_table(["decoder", *[f"{s}x{s}" for s in sizes]], rows))
    return "\n\n".join(blocks)


def _md_speed(speed: pd.DataFrame) -> str:
    blocks = []
    for device, part in speed.groupby("device", sort=False):
        sizes = list(dict.fromkeys(part["heatmap_size"]))
        methods = list(dict.fromkeys(part["method"]))
        wide = part.pivot(index="method", columns="heatmap_size", values="faces_per_s").loc[methods, sizes]
        batch = int(part["batch"].iloc[0])
        rows = [[_label(m), *[f"{v:,.0f}" for v in wide.loc[m]]] for m in methods]
        blocks.append(f"Faces per second on {device} (batch {batch}):\n\n"
                      + _md_table(["decoder", *[f"{s}x{s}" for s in sizes]], rows))
        at = part[part.heatmap_size == paper.TABLE2_HEATMAP_SIZE].set_index("method")
        if not at.empty:
            size = paper.TABLE2_HEATMAP_SIZE
            rows = [[_label(m), _fmt(r.ms), f"{r.ms_per_face:.4f}", f"{r.faces_per_s:,.0f}",
                     _fmt(r.ratio_to_one_hot, 3), _fmt(r.paper_ms), _fmt(r.paper_fps, 1),
                     _fmt(r.paper_ratio_to_one_hot, 3)] for m, r in at.iterrows()]
            blocks.append(
                f"At {size}x{size} on {device}, beside the paper's Table 2 (device not stated in the paper; "
                "compare the ratios to one-hot, not absolute speeds):\n\n"
                + _md_table(["decoder", "ms / batch", "ms / face", "faces/s", "speed vs one-hot", "paper ms",
                             "paper FPS", "paper speed vs one-hot"], rows)
            )
    return "\n\n".join(blocks)


def _md_ablation(params: Params, table: pd.DataFrame) -> str:
    if table.empty:
        return "_No ablation step is in this grid (needs keyposs, igno or popos and the losses)._"
    sizes = params.grid.heatmap_sizes
    blocks = []
    for d in params.grid.datasets:
        part = table[table.dataset == d]
        rows = [[step, *[_fmt(v) for v in part[part.step == step].set_index("heatmap_size").loc[sizes, "nme"]]]
                for step in dict.fromkeys(part["step"])]
        blocks.append(f"{_label(d)}, NME %:\n\n" + _md_table(["step", *[f"{s}x{s}" for s in sizes]], rows))
    gains = []
    for d in params.grid.datasets:
        part = table[(table.dataset == d) & (table.heatmap_size == 4) & (table.method == "popos")].set_index("loss")
        if {"mse", "mse_ma"} <= set(part.index):
            ours = 1 - part.loc["mse_ma", "nme"] / part.loc["mse", "nme"]
            theirs = paper.MA_LOSS_GAIN_4X4.get(d)
            gains.append([_label(d), f"{100 * ours:.0f}%", "-" if theirs is None else f"{100 * theirs:.0f}%"])
    if gains:
        blocks.append("POPoS error reduction from the MA loss at 4x4:\n\n"
                      + _md_table(["dataset", "ours", "paper"], gains))
    return "\n\n".join(blocks)


def _md_sweeps(params: Params, sweeps: pd.DataFrame) -> str:
    rows = []
    for knob, part in sweeps.groupby("knob", sort=False):
        best = part.loc[part["nme"].idxmin()]
        cells = ", ".join(f"{v:g}: {n:.2f}" for v, n in zip(part["value"], part["nme"], strict=True))
        rows.append([knob, cells, f"{best['value']:g}", paper.FIGURE5_OPTIMA[knob][2]])
    s = params.sweeps
    return (f"{_label(s.method)} on {_label(s.dataset)} at {s.heatmap_size}x{s.heatmap_size}; decoder knobs on the "
            f"saved heatmaps of the {LOSS_LABELS[s.loss]} model, MA weight by training one model per weight. NME %:\n\n"
            + _md_table(["knob", "value: NME %", "best (ours)", "paper's optimum"], rows))


def _md_oracle(oracle: pd.DataFrame) -> str:
    blocks = []
    for d, part in oracle.groupby("dataset", sort=False):
        sizes = list(dict.fromkeys(part["heatmap_size"]))
        rows = []
        for (cond, m), cell in part.groupby(["condition", "method"], sort=False):
            cell = cell.set_index("heatmap_size").loc[sizes]
            errors = zip(cell.mean_px, cell.median_px, strict=True)
            rows.append([cond, _label(m), *[f"{a:.3f} [{b:.3f}]" for a, b in errors]])
        blocks.append(f"{_label(d)} ground truth, mean [median] error in input px:\n\n"
                      + _md_table(["condition", "decoder", *[f"{s}x{s}" for s in sizes]], rows))
    return "\n\n".join(blocks)


def _markdown(params: Params, tables: dict[str, pd.DataFrame], figures: list[str]) -> str:
    main = LOSS_LABELS[params.report.main_loss]
    parts = [
        f"# {params.report.title}",
        f"Datasets {', '.join(_label(d) for d in params.grid.datasets)}; heatmaps "
        f"{', '.join(f'{s}x{s}' for s in params.grid.heatmap_sizes)}; losses "
        f"{', '.join(LOSS_LABELS[x] for x in params.grid.losses)}; decoders "
        f"{', '.join(_label(m) for m in params.decode.methods)}. NME and FR in % "
        f"(FR and AUC at NME {params.evaluate.fr_threshold:g}); the paper's numbers in parentheses or their own "
        "columns where it has them. The paper's one-hot and two-hot rows appear to come from other checkpoints "
        "than its DarkPose and POPoS rows (biased-target models); ours decode the same model with every decoder.",
        f"## Table 1: POPoS ({main} models) against the paper",
        _md_table1(params, tables["table1"])
        + "\n\nParams and GFLOPs (1e9 multiply-accumulates) are of our model for the first dataset's landmarks; "
        "the paper's * marks its IGNO results.",
        "## NME at every heatmap size (the paper's per-resolution table)",
    ]
    for d in params.grid.datasets:
        parts += [f"### {_label(d)}", _md_per_resolution(params, tables["per_resolution"], d)]
    parts += [
        "## Figure 3: radar plots", "![Figure 3](fig3_radar.png)",
        "## Table 2: decoder speed", _md_speed(tables["decoder_speed"]),
        "## Figure 4: ablation of IGNO, MA loss and PPPSC", _md_ablation(params, tables["ablation"]),
        "![Figure 4](fig4_ablation.png)",
        "## Figure 5: sampling area, sampling rate, anchors, MA weight", _md_sweeps(params, tables["sweeps"]),
        "![Figure 5](fig5_sweeps.png)",
        "## Cumulative error distributions", "![CED](ced.png)",
        "## Figure 6: predictions at low resolution",
        *[f"![Figure 6, {_label(name[5:-4])}]({name})" for name in figures if name.startswith("fig6_")],
        "## Decoding without a model (oracle)",
        "Each dataset's test landmarks encoded as heatmaps, perturbed and decoded (popos.oracle). Conditions: "
        "clean; noise (+N(0, 0.05)); amp07 (peak x0.7); ampnoise (peak x U(0.6, 1) + N(0, 0.02)); flip (flip test "
        "averaging the maps); flipcoord (flip test averaging the decoded points, as the evaluation does); flipshift "
        "(mmpose's flip test as the authors ran it: a whole-column shift that moves x by +0.5 input px).",
        _md_oracle(tables["oracle"]),
    ]
    return "\n\n".join(parts) + "\n"


@contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh folder beside ``path`` that replaces ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the report private
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
