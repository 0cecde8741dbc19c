"""Cumulative error distributions: the share of faces with NME at most x, per dataset x heatmap size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from popos.config import Params
from popos.report.style import LOSS_LABELS, color, datasets, label, line_width, size_label, suptitle, z_order

QUANTILE = 0.95  # each panel's x axis reaches the slowest decoder's 95th percentile
STEPS = 401  # a larger test set is drawn from this many quantiles: the same picture, many times faster


def ced_figure(params: Params, per_image: pd.DataFrame) -> Figure:
    """Main loss's models; each panel has its own x scale (up to the worst decoder's 95th percentile NME);
    the FR / AUC threshold dashed where it is inside."""
    sets, sizes, methods = datasets(params), params.grid.heatmap_sizes, params.decode.methods
    threshold = 100 * params.evaluate.fr_threshold
    fig = Figure(figsize=(2.7 * len(sizes), 2.3 * len(sets) + 0.6), layout="constrained")
    axes = fig.subplots(len(sets), len(sizes), squeeze=False, sharey=True)
    data = per_image[per_image.loss == params.report.main_loss].assign(nme=lambda t: 100 * t.nme)
    for i, d in enumerate(sets):
        for j, s in enumerate(sizes):
            ax = axes[i][j]
            part = data[(data.dataset == d) & (data.heatmap_size == s)]
            for m in methods:
                nme = part.loc[part.method == m, "nme"].to_numpy()
                if len(nme) > STEPS:
                    nme = np.quantile(nme, np.linspace(0, 1, STEPS))
                sns.ecdfplot(x=nme, ax=ax, color=color(m),
                             lw=line_width(m) * 0.8, zorder=z_order(m), label=label(m))
            right = 1.1 * part.groupby("method")["nme"].quantile(QUANTILE).max()
            if threshold < right:
                ax.axvline(threshold, color="gray", ls="--", lw=0.8)
            ax.set_xlim(0, right)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{label(d)}, {size_label(s)}", fontsize=9)
            ax.set_xlabel("NME (%)" if i == len(sets) - 1 else "")
            ax.set_ylabel("share of faces" if j == 0 else "")
            ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(methods), 7),
               fontsize=8, frameon=False)
    suptitle(fig, f"Cumulative error distribution ({LOSS_LABELS[params.report.main_loss]} models; one x scale per "
                 f"panel; dashed: the FR / AUC threshold {threshold:g} %)")
    return fig
