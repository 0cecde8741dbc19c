"""The report's tables as pandas frames (each also written as CSV): the headline, Table 1, the
per-resolution table, Table 2 (decoder speed), Figure 4's ablation and ``metrics.json``.

NME and FR are in percent, AUC a fraction in [0, 1]. The paper's NMEs appear only beside our models of the
paper's loss (:data:`popos.paper_numbers.LOSS`), and the paper's POPoS beside the authors' decoder
(``popos_authors``), the decoder that produced them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from popos import paper_numbers as paper
from popos.config import Params
from popos.report.style import ABLATION_STEPS, datasets

AUTHORS, OURS = "popos_authors", "popos"
# The paper's claim is about the smallest heatmaps: the headline lists them first.
HEADLINE_FIRST = (8, 4)


def headline_sizes(params: Params) -> list[int]:
    """The grid's heatmap sizes, 8 and 4 first."""
    first = [s for s in HEADLINE_FIRST if s in params.grid.heatmap_sizes]
    return first + [s for s in params.grid.heatmap_sizes if s not in first]


def _main(params: Params, summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary.loss == params.report.main_loss]


def _nme(part: pd.DataFrame, method: str) -> float:
    sel = part.loc[part.method == method, "nme"]
    return 100 * float(sel.iloc[0]) if len(sel) else np.nan


def headline(params: Params, summary: pd.DataFrame) -> pd.DataFrame:
    """Per dataset (paper's order) x heatmap size (8 and 4 first), main loss: NME (%) of the authors' POPoS
    decoder (``authors``), of ours (``ours``), of the best other decoder (``best_other``, ``best_other_nme``)
    and the paper's POPoS (``paper``, where published), with ``ours_vs_authors``, ``ours_vs_paper`` and
    ``authors_vs_paper`` (differences in NME points; negative: the first is better)."""
    main = _main(params, summary)
    rows = []
    for d in datasets(params):
        for size in headline_sizes(params):
            part = main[(main.dataset == d) & (main.heatmap_size == size)]
            others = part[~part.method.isin([AUTHORS, OURS])]
            best = others.loc[others.nme.idxmin()] if len(others) else None
            theirs = paper.per_resolution_nme(d, AUTHORS, size) if params.report.main_loss == paper.LOSS else None
            row = {"dataset": d, "heatmap_size": size, "authors": _nme(part, AUTHORS), "ours": _nme(part, OURS),
                   "best_other": None if best is None else best.method,
                   "best_other_nme": np.nan if best is None else 100 * best.nme,
                   "paper": np.nan if theirs is None else theirs}
            row["ours_vs_authors"] = row["ours"] - row["authors"]
            row["ours_vs_paper"] = row["ours"] - row["paper"]
            row["authors_vs_paper"] = row["authors"] - row["paper"]
            rows.append(row)
    return pd.DataFrame(rows)


def table1(params: Params, summary: pd.DataFrame, model_info: pd.DataFrame) -> pd.DataFrame:
    """Table 1: NME (%) of POPoS per dataset (paper's order) at heatmaps 64 and 32 (main loss), params (M),
    GFLOPs; one row per heatmap size x source: ``paper`` (where shown), ``popos_authors`` (the authors'
    decoder on our models), ``popos`` (ours)."""
    rows = []
    order = datasets(params)
    main = _main(params, summary)
    for size in [s for s in (64, 32) if s in params.grid.heatmap_sizes]:
        info = model_info[model_info["heatmap_size"] == size]
        if info.empty:
            raise ValueError(f"model_info.csv has no row for heatmap size {size}")
        if params.report.main_loss == paper.LOSS:
            rows.append({"heatmap_size": size, "source": "paper", "params_m": paper.TABLE1_PARAMS_M[size],
                         "gflops": paper.TABLE1_GFLOPS[size],
                         **{d: paper.TABLE1_NME[size].get(d, np.nan) for d in order}})
        for method in (AUTHORS, OURS):
            if method in params.decode.methods:
                part = main[main.heatmap_size == size]
                rows.append({"heatmap_size": size, "source": method, "params_m": info["params_m"].iloc[0],
                             "gflops": info["gflops"].iloc[0],
                             **{d: _nme(part[part.dataset == d], method) for d in order}})
    return pd.DataFrame(rows, columns=["heatmap_size", "source", *order, "params_m", "gflops"])


def per_resolution(params: Params, summary: pd.DataFrame, per_image: pd.DataFrame) -> pd.DataFrame:
    """Every dataset x loss x decoder x heatmap size: nme (%), nme_se (%, standard error over faces), fr (%),
    auc, paper_nme (%, where published and the loss is the paper's)."""
    table = summary[["dataset", "loss", "method", "heatmap_size", "run", "nme", "fr", "auc"]].copy()
    se = per_image.groupby(["run", "method"])["nme"].sem().rename("nme_se").reset_index()
    table = table.merge(se, on=["run", "method"], how="left").drop(columns="run")
    for col in ("nme", "nme_se", "fr"):
        table[col] *= 100
    cells = zip(table.dataset, table.method, table.heatmap_size, table.loss, strict=True)
    table["paper_nme"] = [paper.per_resolution_nme(d, m, s) if loss == paper.LOSS else None
                          for d, m, s, loss in cells]
    table["paper_nme"] = table["paper_nme"].astype(float)
    order = {"dataset": datasets(params), "loss": params.grid.losses, "method": params.decode.methods,
             "heatmap_size": params.grid.heatmap_sizes}
    for col, values in order.items():
        table[col] = pd.Categorical(table[col], categories=values, ordered=True)
    table = table.sort_values(list(order)).reset_index(drop=True)
    for col in order:
        table[col] = table[col].astype(object)
    return table[["dataset", "loss", "method", "heatmap_size", "nme", "nme_se", "fr", "auc", "paper_nme"]]


def decoder_speed(bench: pd.DataFrame) -> pd.DataFrame:
    """Table 2: the benchmark rows plus ms per face, ``time_vs_one_hot`` (ours: the median over rounds of
    the time over one-hot's time in the same round; above 1 is slower) and, at the paper's heatmap size,
    the paper's FPS, ms and ``paper_time_vs_one_hot`` (its ms over its one-hot ms: the same convention)."""
    table = bench.copy()
    table["ms_per_face"] = table["ms"] / table["batch"]
    table["time_vs_one_hot"] = table["ratio_to_one_hot"]
    at_paper_size = table["heatmap_size"] == paper.TABLE2_HEATMAP_SIZE
    table["paper_fps"] = np.where(at_paper_size, table["method"].map(paper.TABLE2_FPS), np.nan)
    table["paper_ms"] = np.where(at_paper_size, table["method"].map(paper.TABLE2_MS), np.nan)
    table["paper_time_vs_one_hot"] = table["paper_ms"] / paper.TABLE2_MS["one_hot"]
    return table.drop(columns="ratio_to_one_hot")


def ablation(params: Params, summary: pd.DataFrame) -> pd.DataFrame:
    """Figure 4: NME (%) of each step from KeyPosS to POPoS, per dataset x heatmap size."""
    rows = []
    for step, method, loss in ABLATION_STEPS:
        if method not in params.decode.methods or loss not in params.grid.losses:
            continue
        sel = summary[(summary.method == method) & (summary.loss == loss)]
        rows += [{"step": step, "method": method, "loss": loss, "dataset": r.dataset,
                  "heatmap_size": r.heatmap_size, "nme": 100 * r.nme} for r in sel.itertuples()]
    return pd.DataFrame(rows, columns=["step", "method", "loss", "dataset", "heatmap_size", "nme"])


def metrics(per_res: pd.DataFrame, sweeps: pd.DataFrame) -> dict:
    """``metrics.json`` for ``dvc metrics``: NME (%) per dataset x loss x decoder x heatmap size, and per MA
    weight."""
    nme: dict = {}
    for r in per_res.itertuples():
        cell = nme.setdefault(r.dataset, {}).setdefault(r.loss, {}).setdefault(r.method, {})
        cell[str(r.heatmap_size)] = round(float(r.nme), 4)
    ma = sweeps[sweeps.knob == "ma_weight"]
    return {"nme": nme, "ma_weight_nme": {f"{v:g}": round(float(n), 4) for v, n in zip(ma.value, ma.nme, strict=True)}}
