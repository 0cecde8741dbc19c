"""Figure 6: the paper's decoders' and ours' predictions over the same few test faces at small heatmaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from popos import paper_numbers as paper
from popos.config import Params
from popos.layout import Layout, Run
from popos.report.style import LOSS_LABELS, label, size_label, suptitle

BLOCK_COLORS = ("#ffffff", "#eef2f7")  # alternate backgrounds that keep the heatmap sizes apart
PANEL_IN = 1.55


def overlay_methods(params: Params) -> list[str]:
    """The paper's Figure 6 decoders (its POPoS is the authors' decoder) and ours, those the params decode."""
    return [m for m in (*paper.FIGURE6_METHODS, "popos") if m in params.decode.methods]


def overlay_faces(n_faces: int, count: int) -> np.ndarray:
    """``count`` face indices spread evenly over a split of ``n_faces`` (fewer if the split is smaller)."""
    return np.unique(np.linspace(0, n_faces - 1, min(count, n_faces)).round().astype(int))


def overlay_figure(params: Params, layout: Layout, dataset: str, per_image: pd.DataFrame) -> Figure:
    """Green: ground truth, red: prediction, blue: the error; only labelled (``visible``) landmarks are drawn.
    One block per heatmap size of ``report.overlay_sizes`` (main loss), a row per face, a column per decoder;
    each panel's NME (%) is the evaluation's own (``per_image``: :func:`popos.report.inputs.load_per_image`)."""
    from popos.data.prepared import PreparedSplit
    from popos.geometry import apply_affine
    from popos.report.inputs import test_split_dir

    split = PreparedSplit.open(test_split_dir(params, dataset))
    faces = overlay_faces(len(split), params.report.overlay_faces)
    methods, sizes = overlay_methods(params), params.report.overlay_sizes
    fig = Figure(figsize=(PANEL_IN * max(len(methods), 4), (PANEL_IN * len(faces) + 0.45) * len(sizes) + 0.3),
                 layout="constrained")
    blocks = fig.subfigures(len(sizes), 1, squeeze=False)[:, 0]
    s = split.meta["crop_size"]
    half = s / split.meta["context"] / 2
    for b, (block, size) in enumerate(zip(blocks, sizes, strict=True)):
        run = Run(dataset, size, params.report.main_loss)
        block.set_facecolor(BLOCK_COLORS[b % 2])
        block.suptitle(f"{size_label(size)} heatmaps", fontsize=11, fontweight="bold")
        with np.load(layout.eval_dir(run) / "predictions.npz") as z:
            preds = {m: z[m] for m in methods}
        nme = per_image[per_image.run == run.name].set_index(["method", "index"])["nme"]
        axes = block.subplots(len(faces), len(methods), squeeze=False)
        for f, face in enumerate(faces):
            m_crop = split.crop_affine[face]
            seen = split.visible[face].astype(bool)
            gt = apply_affine(split.landmarks[face], m_crop)[seen]
            for j, m in enumerate(methods):
                ax = axes[f][j]
                pred = apply_affine(preds[m][face], m_crop)[seen]
                ax.imshow(split.crops[face])
                ax.add_collection(LineCollection(np.stack([gt, pred], axis=1), colors="tab:blue", linewidths=0.8,
                                         clip_on=True), autolim=False)
                ax.scatter(gt[:, 0], gt[:, 1], s=5, color="lime", zorder=3, linewidths=0)
                ax.scatter(pred[:, 0], pred[:, 1], s=5, color="red", zorder=4, linewidths=0)
                ax.set_xlim(s / 2 - half, s / 2 + half)
                ax.set_ylim(s / 2 + half, s / 2 - half)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.text(0.03, 0.97, f"{100 * nme.loc[(m, face)]:.1f}%", transform=ax.transAxes, va="top",
                        fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "lw": 0})
                if f == 0:
                    ax.set_title(label(m), fontsize=9)
                if j == 0:
                    ax.set_ylabel(f"face {face}", fontsize=8)
    suptitle(fig, f"Figure 6, {label(dataset)} ({LOSS_LABELS[params.report.main_loss]} models)\ngreen: ground truth, "
                 "red: prediction, blue: error; the face's NME (%) in the corner")
    return fig
