"""Figure 5: NME of one decoder over sampling area, sampling rate, anchors K and MA loss weight."""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from popos import paper_numbers as paper
from popos.config import Params
from popos.report.style import LOSS_LABELS, color, grid_figure, label, suptitle

SWEEP_KNOBS = {
    "region": "(a) sampling area (side, heatmap px)",
    "samples_per_pixel": "(b) sampling rate tau (samples / heatmap px)",
    "anchors": "(c) anchors K",
    "ma_weight": "(d) MA loss weight",
}


def sweeps_figure(params: Params, sweeps: pd.DataFrame) -> Figure:
    """NME (%) of ``sweeps.method`` per value of each knob, shaded +- one standard error over faces; the
    paper's stated optimum shaded or dashed in grey."""
    fig, axes = grid_figure(len(SWEEP_KNOBS), 4, (3.6, 3.0))
    line = color(params.sweeps.method)
    for ax, (knob, title) in zip(axes, SWEEP_KNOBS.items(), strict=True):
        part = sweeps[sweeps.knob == knob].sort_values("value")
        low, high, wording = paper.FIGURE5_OPTIMA[knob]
        if high > low:
            ax.axvspan(low, high, color="0.8", alpha=0.5, label=f"paper: {wording}")
        else:
            ax.axvline(low, color="0.4", ls="--", label=f"paper: {wording}")
        ax.fill_between(part["value"], part["nme"] - part["nme_se"], part["nme"] + part["nme_se"], color=line,
                        alpha=0.2, lw=0, label="+- 1 standard error over faces")
        sns.lineplot(data=part, x="value", y="nme", marker="o", color=line, ax=ax, label="ours")
        # at least +-5 % of the level, so that differences in the noise do not look like trends
        lo, hi = (part["nme"] - part["nme_se"]).min(), (part["nme"] + part["nme_se"]).max()
        mid, half = (lo + hi) / 2, max((hi - lo) / 2, 0.05 * part["nme"].mean())
        ax.set_ylim(mid - 1.2 * half, mid + 1.2 * half)
        ax.set_xlabel(title)
        ax.set_ylabel("NME (%)")
        ax.legend(fontsize=7)
    s = params.sweeps
    suptitle(fig, f"Figure 5: {label(s.method)} on {label(s.dataset)} at {s.heatmap_size}x{s.heatmap_size}: "
                 f"(a-c) decoder knobs on the saved heatmaps of the {LOSS_LABELS[s.loss]} model, "
                 "(d) one model per MA weight")
    return fig
