"""``report.md``: the headline first, then the paper's tables and figures in its order, then an appendix
(FR / AUC, the oracle). In every table the best value of each column is in bold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from popos import paper_numbers as paper
from popos.config import Params
from popos.report.style import LOSS_LABELS, datasets, decoder_order, label, paper_shown, size_label
from popos.report.tables import AUTHORS, OURS


def fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals (a sign with ``sign``); ``-`` for a missing one.

    >>> fmt(0.4567), fmt(-0.2, sign=True), fmt(float("nan"))
    ('0.46', '-0.20', '-')
    """
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def best(values, lowest: bool = True) -> np.ndarray:
    """Mask of the best finite value(s) of ``values`` (ties included); all False if none is finite.

    >>> best([3.0, 1.0, np.nan, 1.0]).tolist()
    [False, True, False, True]
    """
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).any():
        return np.zeros(len(values), bool)
    target = np.nanmin(values) if lowest else np.nanmax(values)
    return values == target


def bold(text: str, on: bool) -> str:
    return f"**{text}**" if on and text != "-" else text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _sizes_header(first: str, sizes) -> list[str]:
    return [first, *[size_label(s) for s in sizes]]


# ---------------------------------------------------------------- headline
def verdict(params: Params, part: pd.DataFrame) -> str:
    """One line for one dataset of the headline table: is the paper's POPoS reproduced by the authors'
    decoder on our models, and is ours better than the authors' at 8x8 and 4x4 (the paper's claim)?"""
    name = f"**{label(part.dataset.iloc[0])}**"
    first = part[part.heatmap_size.isin((8, 4))]
    first = first if len(first) else part
    clauses = []
    with_paper = part[np.isfinite(part.paper.astype(float)) & np.isfinite(part.authors.astype(float))]
    if len(with_paper):
        rel = (with_paper.authors_vs_paper / with_paper.paper).abs()
        off = with_paper[rel > params.report.reproduced_within]
        tol = f"{100 * params.report.reproduced_within:g} %"
        worst = with_paper.loc[with_paper.authors_vs_paper.abs().idxmax()]
        if off.empty:
            clauses.append(f"the paper's POPoS is reproduced within {tol} at every size (largest difference "
                           f"{fmt(worst.authors_vs_paper, sign=True)} points at {size_label(worst.heatmap_size)})")
        else:
            cells = ", ".join(f"{size_label(r.heatmap_size)} {fmt(r.authors_vs_paper, sign=True)}"
                              for r in off.itertuples())
            clauses.append(f"the paper's POPoS is NOT reproduced within {tol} at {cells} points")
    elif AUTHORS not in params.decode.methods:
        cells = ", ".join(f"{size_label(r.heatmap_size)} {fmt(r.ours_vs_paper, sign=True)}"
                          for r in first.itertuples() if np.isfinite(r.ours_vs_paper))
        clauses.append("the authors' decoder (popos_authors) is not in decode.methods"
                       + (f"; POPoS, ours - the paper's POPoS: {cells}" if cells else ""))
    elif not paper_shown(params):
        clauses.append(f"the paper's numbers are not shown (its models were trained with {LOSS_LABELS[paper.LOSS]})")
    else:
        clauses.append("the paper has no numbers for this dataset")
    if np.isfinite(first.ours_vs_authors.astype(float)).any():
        better = first.ours_vs_authors < 0
        cells = ", ".join(f"{size_label(r.heatmap_size)} {fmt(r.ours_vs_authors, sign=True)}"
                          for r in first.itertuples())
        word = "better" if better.all() else "not better" if not better.any() else "better at some"
        clauses.append(f"POPoS, ours is {word} than the authors' decoder ({cells})")
        beaten = first[first.best_other_nme < first.ours]
        if len(beaten):
            clauses.append("another decoder beats ours at " + ", ".join(
                f"{size_label(r.heatmap_size)} ({label(r.best_other)} {fmt(r.best_other_nme)})"
                for r in beaten.itertuples()))
    return f"{name}: " + "; ".join(clauses) + "."


def headline_md(params: Params, head: pd.DataFrame, face_problems: list[str]) -> str:
    main = LOSS_LABELS[params.report.main_loss]
    intro = (f"NME (%) of the {main} models at every heatmap size, 8x8 and 4x4 first (the paper's claim). "
             "POPoS (authors' decoder) is our reproduction of the decoder behind the paper's POPoS numbers, run on "
             "our models; POPoS, ours is this project's decoder. Differences are in NME points (negative: the "
             "first is better); the best NME of each row is in bold.")
    if not paper_shown(params):
        intro += f" The paper's numbers are not shown: its models were trained with {LOSS_LABELS[paper.LOSS]}."
    blocks = [intro, "\n".join(f"- {verdict(params, head[head.dataset == d])}" for d in datasets(params))]
    header = ["heatmap", "POPoS (authors' decoder)", "POPoS, ours", "best other decoder", "paper's POPoS",
              "ours - authors'", "ours - paper", "authors' - paper"]
    for d in datasets(params):
        part = head[head.dataset == d]
        rows = []
        for r in part.itertuples():
            mark = best([r.authors, r.ours, r.best_other_nme])
            other = "-" if r.best_other is None else f"{label(r.best_other)} {bold(fmt(r.best_other_nme), mark[2])}"
            rows.append([size_label(r.heatmap_size), bold(fmt(r.authors), mark[0]), bold(fmt(r.ours), mark[1]), other,
                         fmt(r.paper), fmt(r.ours_vs_authors, sign=True), fmt(r.ours_vs_paper, sign=True),
                         fmt(r.authors_vs_paper, sign=True)])
        blocks.append(f"{label(d)}:\n\n{table(header, rows)}")
    if face_problems:
        blocks.append("**Warning: these models' predictions do not cover exactly their prepared test split's faces** "
                      "(re-run their evaluation):\n\n" + "\n".join(f"- {p}" for p in face_problems))
    else:
        blocks.append("Checked: every model's predictions cover exactly the faces of its prepared test split.")
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- paper tables
def table1_md(params: Params, t1: pd.DataFrame) -> str:
    if t1.empty:
        return "_The grid has neither 64 nor 32 pixel heatmaps._"
    order = datasets(params)
    who = {"paper": "paper", AUTHORS: "authors' decoder, our models", OURS: "POPoS, ours"}
    rows = []
    for size, block in t1.groupby("heatmap_size", sort=False):
        block = block.set_index("source")
        marks = {d: dict(zip(block.index, best(block[d]), strict=True)) for d in order}
        for source, r in block.iterrows():
            cells = []
            for d in order:
                text = bold(fmt(r[d]), marks[d][source])
                if source == "paper" and (size, d) in paper.TABLE1_IGNO:
                    text += "*"
                diffs = [f"{fmt(r[d] - block.loc[ref, d], sign=True)} vs {name}"
                         for ref, name in ((AUTHORS, "authors'"), ("paper", "paper"))
                         if ref in block.index and ref != source and source != "paper"
                         and np.isfinite(block.loc[ref, d]) and np.isfinite(r[d])]
                cells.append(text + (f" ({', '.join(diffs)})" if diffs else ""))
            rows.append([f"{size_label(size)}: {who[source]}", *cells, fmt(r["params_m"], 1), fmt(r["gflops"])])
    note = ("Params and GFLOPs (1e9 multiply-accumulates) are of our model for the first dataset's landmarks; "
            "the paper's * marks its IGNO results. Datasets in the paper's order.")
    return table(["POPoS", *[label(d) for d in order], "params (M)", "GFLOPs"], rows) + "\n\n" + note


def per_resolution_md(params: Params, per_res: pd.DataFrame, dataset: str) -> str:
    sizes = params.grid.heatmap_sizes
    blocks = []
    for loss in sorted(params.grid.losses, key=lambda x: x != paper.LOSS):  # the paper's loss first
        part = per_res[(per_res.dataset == dataset) & (per_res.loss == loss)]
        methods = params.decode.methods
        wide = part.pivot(index="method", columns="heatmap_size", values="nme").loc[methods, sizes]
        theirs = part.pivot(index="method", columns="heatmap_size", values="paper_nme").loc[methods, sizes]
        marks = np.column_stack([best(wide[s]) for s in sizes])
        rows = []
        for i, m in enumerate(params.decode.methods):
            rows.append([label(m), *[bold(fmt(v), marks[i, j]) + ("" if not np.isfinite(t) else f" ({fmt(t)})")
                                     for j, (v, t) in enumerate(zip(wide.loc[m], theirs.loc[m], strict=True))]])
        if loss == paper.LOSS:
            what = (f"{LOSS_LABELS[loss]} models (the paper's loss): ours (the paper's, its POPoS beside the "
                    "authors' decoder)")
        else:
            what = f"{LOSS_LABELS[loss]} models (the paper has no numbers for this loss)"
        blocks.append(f"NME %, {what}:\n\n" + table(_sizes_header("decoder", sizes), rows))
    return "\n\n".join(blocks)


def fr_auc_md(params: Params, per_res: pd.DataFrame, dataset: str) -> str:
    sizes = params.grid.heatmap_sizes
    part = per_res[(per_res.dataset == dataset) & (per_res.loss == params.report.main_loss)]
    fr = part.pivot(index="method", columns="heatmap_size", values="fr").loc[params.decode.methods, sizes]
    auc = part.pivot(index="method", columns="heatmap_size", values="auc").loc[params.decode.methods, sizes]
    fr_best = np.column_stack([best(fr[s]) for s in sizes])
    auc_best = np.column_stack([best(auc[s], lowest=False) for s in sizes])
    rows = [[label(m), *[f"{bold(fmt(fr.loc[m, s], 1), fr_best[i, j])} / {bold(fmt(auc.loc[m, s], 3), auc_best[i, j])}"
                         for j, s in enumerate(sizes)]] for i, m in enumerate(params.decode.methods)]
    thr = params.evaluate.fr_threshold
    return (f"{label(dataset)}, FR@{thr:g} (%) / AUC@{thr:g}, {LOSS_LABELS[params.report.main_loss]} models:\n\n"
            + table(_sizes_header("decoder", sizes), rows))


def speed_md(speed: pd.DataFrame) -> str:
    blocks = []
    for device, part in speed.groupby("device", sort=False):
        sizes = list(dict.fromkeys(part["heatmap_size"]))
        methods = decoder_order(part["method"])
        wide = part.pivot(index="method", columns="heatmap_size", values="faces_per_s").loc[methods, sizes]
        marks = np.column_stack([best(wide[s], lowest=False) for s in sizes])
        rows = [[label(m), *[bold(f"{v:,.0f}", marks[i, j]) for j, v in enumerate(wide.loc[m])]]
                for i, m in enumerate(methods)]
        batch = int(part["batch"].iloc[0])
        blocks.append(f"Faces per second on {device} (batch {batch}; median of the interleaved rounds):\n\n"
                      + table(_sizes_header("decoder", sizes), rows))
        size = paper.TABLE2_HEATMAP_SIZE
        at = part[part.heatmap_size == size].set_index("method")
        if not at.empty:
            at = at.loc[[m for m in methods if m in at.index]]
            ours, theirs = best(at["time_vs_one_hot"]), best(at["paper_time_vs_one_hot"])
            rows = [[label(m), fmt(r.ms, 3), f"{r.ms_per_face:.4f}", f"{r.faces_per_s:,.0f}",
                     bold(fmt(r.time_vs_one_hot), ours[i]), fmt(r.paper_ms), fmt(r.paper_fps, 1),
                     bold(fmt(r.paper_time_vs_one_hot), theirs[i])] for i, (m, r) in enumerate(at.iterrows())]
            blocks.append(
                f"At {size_label(size)} on {device}, beside the paper's Table 2. **Time vs one-hot** is a decoder's "
                "time divided by one-hot's time, for ours and the paper's alike (1 = as fast as one-hot, 2 = twice as "
                "slow); the paper does not name its device, so compare these ratios, not absolute speeds. The "
                "paper's POPoS row is beside the authors' decoder.\n\n"
                + table(["decoder", "ms / batch", "ms / face", "faces/s", "time vs one-hot (ours)", "paper ms",
                         "paper FPS", "time vs one-hot (paper)"], rows)
            )
    return "\n\n".join(blocks)


def ablation_md(params: Params, abl: pd.DataFrame) -> str:
    """Figure 4's numbers: NME per step, per dataset (the appendix)."""
    if abl.empty:
        return "_No ablation step is in this grid (needs keyposs, igno or popos and the losses)._"
    sizes = params.grid.heatmap_sizes
    blocks = []
    for d in datasets(params):
        part = abl[abl.dataset == d]
        steps = list(dict.fromkeys(part["step"]))
        wide = part.pivot(index="step", columns="heatmap_size", values="nme").loc[steps, sizes]
        marks = np.column_stack([best(wide[s]) for s in sizes])
        rows = [[step, *[bold(fmt(v), marks[i, j]) for j, v in enumerate(wide.loc[step])]]
                for i, step in enumerate(steps)]
        blocks.append(f"{label(d)}, NME %:\n\n" + table(_sizes_header("step", sizes), rows))
    return "\n\n".join(blocks)


def ma_gain_md(params: Params, abl: pd.DataFrame) -> str:
    """How much the MA loss lowers POPoS's NME at 4x4, ours beside the paper's (section 4.4)."""
    gains = []
    for d in datasets(params):
        part = abl[(abl.dataset == d) & (abl.heatmap_size == 4) & (abl.method == "popos")].set_index("loss")
        if {"mse", "mse_ma"} <= set(part.index):
            ours = 1 - part.loc["mse_ma", "nme"] / part.loc["mse", "nme"]
            theirs = paper.MA_LOSS_GAIN_4X4.get(d)
            gains.append([label(d), f"{100 * ours:.0f}%", "-" if theirs is None else f"{100 * theirs:.0f}%"])
    if not gains:
        return "_The grid lacks POPoS at 4x4 with both losses._"
    return ("POPoS error reduction from the MA loss at 4x4 (higher is better; every step's NME is in appendix C):"
            "\n\n" + table(["dataset", "ours", "paper"], gains))


def sweeps_md(params: Params, sweeps: pd.DataFrame) -> str:
    rows = []
    for knob, part in sweeps.groupby("knob", sort=False):
        marks = best(part["nme"])
        cells = ", ".join(bold(f"{v:g}: {n:.2f} +- {e:.2f}", on)
                          for v, n, e, on in zip(part["value"], part["nme"], part["nme_se"], marks, strict=True))
        top = part[marks]
        rows.append([knob, cells, ", ".join(f"{v:g}" for v in top["value"]), paper.FIGURE5_OPTIMA[knob][2]])
    s = params.sweeps
    return (f"{label(s.method)} on {label(s.dataset)} at {size_label(s.heatmap_size)}; decoder knobs on the saved "
            f"heatmaps of the {LOSS_LABELS[s.loss]} model, MA weight by training one model per weight. "
            "NME % +- its standard error over faces:\n\n"
            + table(["knob", "value: NME %", "best (ours)", "paper's optimum"], rows))


def oracle_md(params: Params, oracle: pd.DataFrame) -> str:
    blocks = []
    for d in datasets(params):
        part = oracle[oracle.dataset == d]
        sizes = list(dict.fromkeys(part["heatmap_size"]))
        rows = []
        for cond, block in part.groupby("condition", sort=False):
            methods = list(dict.fromkeys(block["method"]))
            mean = block.pivot(index="method", columns="heatmap_size", values="mean_px").loc[methods, sizes]
            median = block.pivot(index="method", columns="heatmap_size", values="median_px").loc[methods, sizes]
            marks = np.column_stack([best(mean[s]) for s in sizes])
            rows += [[cond, label(m), *[bold(f"{mean.loc[m, s]:.3f}", marks[i, j]) + f" [{median.loc[m, s]:.3f}]"
                                        for j, s in enumerate(sizes)]] for i, m in enumerate(methods)]
        blocks.append(f"{label(d)} ground truth, mean [median] error in input px (best mean per condition in bold):"
                      "\n\n" + table(["condition", "decoder", *[size_label(s) for s in sizes]], rows))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- the document
def report_md(params: Params, tables: dict[str, pd.DataFrame], figures: list[str], env: dict[str, str],
              face_problems: list[str]) -> str:
    """The whole ``report.md``; ``figures``: the file names of the figures, Figure 6's in dataset order."""
    g = params.grid
    main = LOSS_LABELS[params.report.main_loss]
    parts = [
        f"# {params.report.title}",
        f"Made with popos at commit `{env['commit']}`, torch {env['torch']}, Python {env['python']}, on CPU "
        f"{env['cpu']}, GPU {env['gpu']} (where this report was built; NMEs differ slightly between CPU models). "
        f"Datasets {', '.join(label(d) for d in datasets(params))}; heatmaps "
        f"{', '.join(size_label(s) for s in g.heatmap_sizes)}; losses {', '.join(LOSS_LABELS[x] for x in g.losses)}; "
        f"decoders {', '.join(label(m) for m in params.decode.methods)}. NME and FR in %; every table names its "
        "models' loss; the best value of each column is in bold. The paper's one-hot and two-hot rows appear to "
        "come from other checkpoints than its DarkPose and POPoS rows (biased-target models); ours decode the same "
        "model with every decoder.",
        "## Headline: POPoS against the paper",
        headline_md(params, tables["headline"], face_problems),
        f"## Table 1: POPoS ({main} models) against the paper",
        table1_md(params, tables["table1"]),
        "## NME at every heatmap size (the paper's per-resolution table)",
        "![NME per decoder and heatmap size](nme_grid.png)",
    ]
    for d in datasets(params):
        parts += [f"### {label(d)}", per_resolution_md(params, tables["per_resolution"], d)]
    parts += [
        "## Figure 3: radar plots", "![Figure 3](fig3_radar.png)",
        "## Table 2: decoder speed", speed_md(tables["decoder_speed"]), "![Table 2 as bars](speed.png)",
        "## Figure 4: ablation of IGNO, MA loss and PPPSC", "![Figure 4](fig4_ablation.png)",
        ma_gain_md(params, tables["ablation"]),
        "## Figure 5: sampling area, sampling rate, anchors, MA weight", sweeps_md(params, tables["sweeps"]),
        "![Figure 5](fig5_sweeps.png)",
        f"## Cumulative error distributions ({main} models)", "![CED](ced.png)",
        f"## Figure 6: predictions at low resolution ({main} models)",
        *[f"![Figure 6, {label(name[5:-4])}]({name})" for name in figures if name.startswith("fig6_")],
        "## Appendix",
        "Every table above is also a CSV beside this file: `headline.csv`, `table1.csv`, `per_resolution.csv` "
        "(every dataset x loss x decoder x heatmap size: NME, its standard error, FR, AUC, the paper's NME), "
        "`decoder_speed.csv`, `ablation.csv`, `sweeps.csv`, `oracle.csv`; `metrics.json` is what `dvc metrics` reads.",
        f"### A. Failure rate and AUC ({main} models)",
        *[fr_auc_md(params, tables["per_resolution"], d) for d in datasets(params)],
        "### B. Decoding without a model (oracle)",
        "Each dataset's test landmarks encoded as heatmaps, perturbed and decoded (popos.oracle). Conditions: "
        "clean; noise (+N(0, 0.05)); amp07 (peak x0.7); ampnoise (peak x U(0.6, 1) + N(0, 0.02)); flip (flip test "
        "averaging the maps); flipcoord (flip test averaging the decoded points, as the evaluation does); flipshift "
        "(mmpose's flip test as the authors ran it: a whole-column shift that moves x by +0.5 input px).",
        oracle_md(params, tables["oracle"]),
        "### C. Figure 4's numbers: every step from KeyPosS to POPoS",
        ablation_md(params, tables["ablation"]),
    ]
    return "\n\n".join(parts) + "\n"
