"""Figure 4: the steps from KeyPosS to POPoS (IGNO, MA loss, PPPSC) as grouped bars per dataset."""

from __future__ import annotations

import matplotlib.patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from popos.config import Params
from popos.report.style import ABLATION_STEPS, color, datasets, grid_figure, label, legend_columns, log_y, suptitle


def ablation_figure(params: Params, table: pd.DataFrame) -> Figure:
    """NME (%, log scale, one scale per dataset) per heatmap size, one bar per step: the step's decoder's
    colour, hatched without the MA loss."""
    steps = [s for s in ABLATION_STEPS if s[0] in set(table["step"])]
    sizes = params.grid.heatmap_sizes
    fig, axes = grid_figure(len(params.grid.datasets), 3, (5.0, 3.2))
    width = 0.8 / max(len(steps), 1)
    for ax, d in zip(axes, datasets(params), strict=True):
        part = table[table.dataset == d]
        for i, (step, method, loss) in enumerate(steps):
            nme = part[part.step == step].set_index("heatmap_size").loc[sizes, "nme"]
            ax.bar(np.arange(len(sizes)) + (i - (len(steps) - 1) / 2) * width, nme, width, color=color(method),
                   hatch=None if loss == "mse_ma" else "///", edgecolor="white", linewidth=0.5, label=step)
        ax.set_xticks(np.arange(len(sizes)), [f"{s}x{s}" for s in sizes])
        log_y(ax, part["nme"])
        ax.set_ylabel("NME (%)")
        ax.set_title(label(d))
        ax.grid(axis="y", alpha=0.3)
    handles = [matplotlib.patches.Patch(facecolor=color(m), hatch=None if loss == "mse_ma" else "///",
                                        edgecolor="white", label=s) for s, m, loss in steps]
    fig.legend(handles=handles, loc="outside lower center", ncols=legend_columns(fig, len(steps)), fontsize=8,
               frameon=False)
    suptitle(fig, "Figure 4: from KeyPosS to POPoS (hatched: trained without the MA loss); lower is better")
    return fig
