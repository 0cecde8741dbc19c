"""Figure 3: per dataset a radar of NME (%) with one axis per heatmap size and one polygon per decoder."""

from __future__ import annotations

import matplotlib.lines
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from popos.config import Params
from popos.report.style import (
    PAPER_LINE,
    color,
    datasets,
    grid_figure,
    label,
    legend_columns,
    line_width,
    log_ticks,
    suptitle,
    z_order,
)


def radar_figure(params: Params, per_res: pd.DataFrame) -> Figure:
    """Main loss's models; log radius with its own scale per dataset (smaller is better, the centre is
    best); the paper's polygons dashed with open markers where it has them."""
    sizes = params.grid.heatmap_sizes
    methods = params.decode.methods
    fig, axes = grid_figure(len(params.grid.datasets), 3, (4.4, 4.4), projection="polar")
    data = per_res[per_res.loss == params.report.main_loss]
    theta = np.linspace(0, 2 * np.pi, len(sizes), endpoint=False)
    closed = np.append(theta, theta[0])
    drew_paper = False
    for ax, d in zip(axes, datasets(params), strict=True):
        part = data[data.dataset == d]
        values = np.concatenate([part["nme"].to_numpy(float), part["paper_nme"].dropna().to_numpy(float)])
        ticks = log_ticks(values.min(), values.max())
        span = np.log10(ticks[-1]) - np.log10(ticks[0])
        lo = np.log10(ticks[0]) - 0.15 * span  # the best value sits off the centre

        def radius(v, lo=lo):
            r = np.log10(v) - lo
            return np.append(r, r[0])

        ax.set_theta_zero_location("N")
        ax.set_theta_direction(-1)
        for m in methods:
            row = part[part.method == m].set_index("heatmap_size").loc[sizes]
            ax.plot(closed, radius(row["nme"].to_numpy(float)), color=color(m), lw=line_width(m), zorder=z_order(m),
                    label=label(m))
            theirs = row["paper_nme"].to_numpy(float)
            if np.isfinite(theirs).all():
                ax.plot(closed, radius(theirs), color=color(m), zorder=6, **PAPER_LINE)
                drew_paper = True
        ax.set_xticks(theta, [f"{s}x{s}" for s in sizes])
        ax.tick_params(axis="x", pad=8)
        ax.set_yticks(np.log10(ticks) - lo, [f"{t:g}" for t in ticks], fontsize=7)
        ax.set_ylim(0, np.log10(ticks[-1]) - lo)
        ax.set_rlabel_position(180 / len(sizes))
        ax.set_title(f"{label(d)}: NME (%)", pad=16)
    handles, labels = axes[0].get_legend_handles_labels()
    if drew_paper:
        handles.append(matplotlib.lines.Line2D([], [], color="gray", **PAPER_LINE))
        labels.append("the paper (its POPoS: the authors' decoder)")
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(fig, len(labels)), fontsize=8,
               frameon=False)
    suptitle(fig, "Figure 3: NME (%) per heatmap size, log radius, one scale per dataset; nearer the centre is "
                 "better")
    return fig
