"""The report's look, defined once: one colour per decoder and per ablation step in every figure, labels,
the order of datasets and heatmap sizes, and the helpers that every figure shares.

POPoS (ours) is drawn in red with a thicker line on top of the others, the authors' POPoS decoder in blue;
the paper's values are drawn as dashed lines with open markers, so that they stay visible where they
coincide with ours.
"""

from __future__ import annotations

import textwrap

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from popos import paper_numbers as paper
from popos.config import Params

# One colour per decoder (popos.decoders.VARIANTS), the same in every figure.
DECODER_COLORS = {
    "one_hot": "#8c8c8c",
    "two_hot": "#17becf",
    "dark": "#2ca02c",
    "keyposs": "#9467bd",
    "keyposs_peak": "#c5b0d5",  # our variants: a lighter shade of the published method's colour
    "igno": "#ff7f0e",
    "igno_damped": "#ffbb78",
    "popos_authors": "#1f77b4",
    "popos": "#d62728",
}
HIGHLIGHT = "popos"  # drawn thicker and on top
# Figure 4's steps from KeyPosS to POPoS: (label, decoder, loss). A step has its decoder's colour; the steps
# without the MA loss are hatched.
ABLATION_STEPS = (
    ("KeyPosS (LLS)", "keyposs", "mse"),
    ("+ IGNO", "igno", "mse"),
    ("+ IGNO + MA loss", "igno", "mse_ma"),
    ("PPPSC (no MA loss)", "popos", "mse"),
    ("PPPSC + MA loss = POPoS", "popos", "mse_ma"),
)
LOSS_LABELS = {"mse": "MSE", "mse_ma": "MSE + MA", "mse_biased": "MSE, biased targets"}
PAPER_LINE = {"ls": (0, (4, 2)), "lw": 1.1, "marker": "o", "markerfacecolor": "white", "markersize": 4}
DPI = 100


def label(name: str) -> str:
    """A dataset's or decoder's printed name."""
    return paper.DATASET_LABELS.get(name) or paper.METHOD_LABELS.get(name) or name


def color(method: str) -> str:
    """The decoder's colour; a decoder without its own colour is black."""
    return DECODER_COLORS.get(method, "black")


def line_width(method: str) -> float:
    return 2.6 if method == HIGHLIGHT else 1.4


def z_order(method: str) -> float:
    return 5 if method == HIGHLIGHT else 3


def size_label(size: int) -> str:
    return f"{size}x{size}"


def datasets(params: Params) -> list[str]:
    """The grid's datasets in the paper's order (WFLW, 300W, AFLW, COFW), then the others in grid order."""
    first = [d for d in paper.DATASET_ORDER if d in params.grid.datasets]
    return first + [d for d in params.grid.datasets if d not in first]


def paper_shown(params: Params) -> bool:
    """The paper's NMEs are shown beside the main loss's models only when it is the paper's loss."""
    return params.report.main_loss == paper.LOSS


def grid_figure(n: int, ncols: int, size: tuple[float, float], **subplot_kw) -> tuple[Figure, list]:
    """A constrained-layout figure of ``n`` panels of ``size`` inches, ``ncols`` to a row."""
    ncols = min(n, ncols)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1, **subplot_kw) for i in range(n)]
    return fig, axes


def log_ticks(low: float, high: float) -> np.ndarray:
    """1-2-5 ticks from the one at or below ``low`` to the one at or above ``high``.

    >>> log_ticks(3.0, 40.0).tolist()
    [2.0, 5.0, 10.0, 20.0, 50.0]
    """
    candidates = np.array([m * 10.0**e for e in range(-3, 5) for m in (1, 2, 5)])
    first = candidates[candidates <= low].max()
    last = candidates[candidates >= high].min()
    return candidates[(candidates >= first) & (candidates <= last)]


def log_y(ax, values) -> None:
    """Log y axis with plain-number 1-2-5 ticks covering ``values``."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    ticks = log_ticks(values.min(), values.max())
    ax.set_yscale("log")
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylim(ticks[0] * 0.9, ticks[-1] * 1.1)


def suptitle(fig: Figure, text: str) -> None:
    """The figure's title, wrapped to its width (a one-panel figure is narrower than a long title)."""
    fig.suptitle("\n".join(textwrap.wrap(text, width=max(30, int(fig.get_figwidth() * 8.5)))))


def legend_columns(fig: Figure, n: int) -> int:
    """As many legend columns as fit the figure's width, at most ``n``."""
    return max(1, min(n, int(fig.get_figwidth() / 2.0)))


def decoder_order(methods) -> list[str]:
    """``methods`` in the palette's order, so that every figure lists the decoders alike."""
    known = [m for m in DECODER_COLORS if m in set(methods)]
    return known + [m for m in dict.fromkeys(methods) if m not in DECODER_COLORS]
