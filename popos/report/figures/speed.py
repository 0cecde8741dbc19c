"""Table 2 as bars: decoding time per face and relative to one-hot, per heatmap size and decoder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from popos import paper_numbers as paper
from popos.report.style import color, decoder_order, label, size_label, suptitle


def speed_figure(speed: pd.DataFrame) -> Figure:
    """Per device: ms per face (log; whiskers: the quartiles over the interleaved rounds) and the time over
    one-hot's time (log; above 1 is slower), the paper's at its heatmap size as open diamonds."""
    devices = list(dict.fromkeys(speed["device"]))
    fig = Figure(figsize=(12, 3.6 * len(devices) + 0.5), layout="constrained")
    axes = fig.subplots(len(devices), 2, squeeze=False)
    for row, device in zip(axes, devices, strict=True):
        part = speed[speed.device == device].copy()
        sizes = sorted(set(part.heatmap_size), reverse=True)
        methods = decoder_order(part.method)
        part["size"] = pd.Categorical(part.heatmap_size.map(size_label), [size_label(s) for s in sizes])
        part["decoder"] = part.method.map(label)
        palette = {label(m): color(m) for m in methods}
        hue_order = [label(m) for m in methods]
        for ax, y in zip(row, ("ms_per_face", "time_vs_one_hot"), strict=True):
            sns.barplot(data=part, x="size", y=y, hue="decoder", hue_order=hue_order, palette=palette,
                        errorbar=None, ax=ax, legend=ax is row[0])
            ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
            ax.set_xlabel("heatmap size")
        # whiskers and the paper's markers at each bar's centre (seaborn draws one container per hue level)
        for m, bars in zip(methods, list(row[0].containers), strict=True):
            cells = part[part.method == m].set_index("heatmap_size").loc[sizes]
            x = np.array([b.get_x() + b.get_width() / 2 for b in bars])
            y = cells["ms_per_face"].to_numpy()
            lo, hi = cells["ms_q1"].to_numpy() / cells["batch"], cells["ms_q3"].to_numpy() / cells["batch"]
            row[0].errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor="black", lw=0.8, capsize=2)
        for m, bars in zip(methods, list(row[1].containers), strict=True):
            cells = part[part.method == m].set_index("heatmap_size").loc[sizes]
            x = np.array([b.get_x() + b.get_width() / 2 for b in bars])
            theirs = cells["paper_time_vs_one_hot"].to_numpy(float)
            shown = np.isfinite(theirs)
            row[1].plot(x[shown], theirs[shown], "D", color=color(m), markerfacecolor="white", markersize=6,
                        zorder=5)
        row[1].axhline(1, color="gray", lw=0.8)
        row[1].set_ylim(bottom=0.5)  # one-hot's bars (1) stay visible
        row[0].set_ylabel("ms per face")
        row[1].set_ylabel("time / one-hot's time")
        row[0].set_title(f"{device}, batch {int(part.batch.iloc[0])}: ms per face", fontsize=10)
        row[1].set_title(f"{device}: time / one-hot's time (1: as fast; 2: twice as slow)", fontsize=10)
        row[0].legend(fontsize=7, ncols=2)
    suptitle(fig, "Table 2 as bars: decoding speed, lower is faster\n(bars: median over the interleaved rounds, "
                 f"whiskers: quartiles; open diamonds: the paper at {size_label(paper.TABLE2_HEATMAP_SIZE)})")
    return fig
