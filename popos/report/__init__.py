"""The report: the paper's tables and figures, ours beside the paper's, from the current params' runs.

:func:`build_report` reads only the outputs of the runs the params ask for (:mod:`popos.layout`,
:mod:`.inputs`), never whatever else lies under the results root, and writes ``<out_dir>/``:

* ``report.md`` (:mod:`.markdown`): the headline (POPoS, the authors' decoder and the paper per dataset
  and heatmap size, with a verdict per dataset), the paper's tables and figures, an appendix;
* the tables (:mod:`.tables`) as CSV: ``headline.csv``, ``table1.csv``, ``per_resolution.csv``,
  ``decoder_speed.csv`` (Table 2), ``ablation.csv`` (Figure 4), ``sweeps.csv`` and ``fig5_<knob>.csv``
  (Figure 5), ``oracle.csv``;
* the figures (:mod:`.figures`): ``fig3_radar.png``, ``fig4_ablation.png``, ``fig5_sweeps.png``,
  ``ced.png``, ``speed.png``, ``nme_grid.png``, ``fig6_<dataset>.jpg``;
* ``metrics.json``: NME (%) per dataset x loss x decoder x heatmap size, for ``dvc metrics``.

NME and FR are in percent, AUC is a fraction in [0, 1] (all at ``evaluate.fr_threshold``); oracle
errors are in input px. The folder is written beside ``out_dir`` and renamed into place when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from popos.config import Params
from popos.io import atomic_dir
from popos.layout import Layout, grid_runs, ma_sweep_runs
from popos.report import inputs, tables
from popos.report.figures.ablation import ablation_figure
from popos.report.figures.ced import ced_figure
from popos.report.figures.nme_grid import nme_grid_figure
from popos.report.figures.overlays import overlay_figure
from popos.report.figures.radar import radar_figure
from popos.report.figures.speed import speed_figure
from popos.report.figures.sweeps import sweeps_figure
from popos.report.inputs import required_inputs
from popos.report.markdown import report_md
from popos.report.provenance import environment
from popos.report.style import DPI, datasets

__all__ = ["build_report", "required_inputs"]


def build_report(params: Params, results: str | Path, out_dir: str | Path) -> Path:
    """Write the report of ``params``' runs under ``results`` into ``out_dir``; returns ``report.md``'s path.

    Raises ``FileNotFoundError`` listing every missing input file (run the workflow first).
    """
    layout = Layout(results)
    inputs.check_inputs(params, layout)
    runs = inputs.report_runs(params)
    summary = inputs.load_summaries(params, layout, grid_runs(params))
    per_image = inputs.load_per_image(params, layout, runs)
    face_problems = inputs.check_faces(params, per_image)
    sweep_runs = {r.name for r in ma_sweep_runs(params).values()}
    sweeps = inputs.sweep_table(params, layout, per_image[per_image.run.isin(sweep_runs)])
    grid_images = per_image[per_image.run.isin({r.name for r in grid_runs(params)})]

    per_res = tables.per_resolution(params, summary, grid_images)
    result = {
        "headline": tables.headline(params, summary),
        "table1": tables.table1(params, summary, pd.read_csv(layout.model_info)),
        "per_resolution": per_res,
        "decoder_speed": tables.decoder_speed(inputs.load_bench(params, layout)),
        "ablation": tables.ablation(params, summary),
        "sweeps": sweeps,
        "oracle": inputs.load_oracle(params, layout),
    }
    figures = {
        "fig3_radar.png": lambda: radar_figure(params, per_res),
        "fig4_ablation.png": lambda: ablation_figure(params, result["ablation"]),
        "fig5_sweeps.png": lambda: sweeps_figure(params, sweeps),
        "ced.png": lambda: ced_figure(params, grid_images),
        "speed.png": lambda: speed_figure(result["decoder_speed"]),
        "nme_grid.png": lambda: nme_grid_figure(params, per_res),
    }
    for d in datasets(params):
        figures[f"fig6_{d}.jpg"] = lambda d=d: overlay_figure(params, layout, d, grid_images)
    with atomic_dir(out_dir) as tmp:
        for name, frame in result.items():
            frame.to_csv(tmp / f"{name}.csv", index=False)
        for knob, part in sweeps.groupby("knob", sort=False):
            part[["value", "nme", "nme_se"]].to_csv(tmp / f"fig5_{knob}.csv", index=False)
        for name, draw in figures.items():
            photo = {"pil_kwargs": {"quality": 85}} if name.endswith(".jpg") else {}  # faces: JPEG keeps them small
            draw().savefig(tmp / name, dpi=DPI, **photo)
        (tmp / "metrics.json").write_text(json.dumps(tables.metrics(per_res, sweeps), indent=2) + "\n")
        (tmp / "report.md").write_text(report_md(params, result, list(figures), environment(), face_problems))
    return Path(out_dir) / "report.md"
