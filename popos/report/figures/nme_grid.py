"""NME per decoder x heatmap size, one annotated heatmap per dataset (the whole grid at a glance)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from popos.config import Params
from popos.report.style import LOSS_LABELS, datasets, grid_figure, label, size_label, suptitle


def nme_grid_figure(params: Params, per_res: pd.DataFrame) -> Figure:
    """Main loss's models; a log colour scale per dataset; each cell ours and, below it, the paper's in
    parentheses where it has one; the best decoder of each heatmap size framed."""
    sizes, methods = params.grid.heatmap_sizes, params.decode.methods
    fig, axes = grid_figure(len(params.grid.datasets), 3, (4.6, 0.45 * len(methods) + 1.3))
    data = per_res[per_res.loss == params.report.main_loss]
    for ax, d in zip(axes, datasets(params), strict=True):
        part = data[data.dataset == d]
        ours = part.pivot(index="method", columns="heatmap_size", values="nme").loc[methods, sizes]
        theirs = part.pivot(index="method", columns="heatmap_size", values="paper_nme").loc[methods, sizes]
        text = np.vectorize(lambda o, t: f"{o:.2f}" + (f"\n({t:.2f})" if np.isfinite(t) else ""))(
            ours.to_numpy(float), theirs.to_numpy(float))
        sns.heatmap(ours, ax=ax, annot=text, fmt="", cmap="viridis_r", norm=LogNorm(), cbar=False,
                    annot_kws={"fontsize": 7}, linewidths=0.5, linecolor="white",
                    xticklabels=[size_label(s) for s in sizes], yticklabels=[label(m) for m in methods])
        for j, best in enumerate(np.nanargmin(ours.to_numpy(float), axis=0)):
            ax.add_patch(Rectangle((j, best), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xlabel("heatmap size")
        ax.set_ylabel("")
        ax.set_title(f"{label(d)}: NME (%)")
    suptitle(fig, f"NME per decoder and heatmap size ({LOSS_LABELS[params.report.main_loss]} models; the paper's "
                 "in parentheses; red frame: best of the column)")
    return fig
