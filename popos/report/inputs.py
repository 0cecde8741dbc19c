"""What the report reads: exactly the outputs of the runs the params ask for (:mod:`popos.layout`), checked.

Every loader returns a long pandas table; NME, FR and AUC stay fractions here (the tables turn them into %).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from popos.bench import FLOOR
from popos.choices import DECODER_KNOBS
from popos.config import Params
from popos.layout import Layout, Run, grid_runs, ma_sweep_runs, split_dir

SWEEP_COLUMNS = ["knob", "value", "nme", "nme_se", "fr", "auc"]
BENCH_COLUMNS = ["device", "heatmap_size", "method", "batch", "ms", "ms_q1", "ms_q3", "faces_per_s",
                 "ratio_to_one_hot", "compiled"]


def test_split_dir(params: Params, dataset: str) -> Path:
    """The prepared test split of ``dataset`` (the faces every model of it is evaluated on)."""
    return split_dir(params, dataset, "test")


def report_runs(params: Params) -> list[Run]:
    """The grid's runs, then the MA-weight sweep's own runs."""
    return list(dict.fromkeys(grid_runs(params) + list(ma_sweep_runs(params).values())))


def required_inputs(params: Params, layout: Layout) -> list[Path]:
    """Every file :func:`popos.report.build_report` reads for ``params`` (the workflow's report rule declares
    them)."""
    files = [layout.model_info, layout.decoder_sweep]
    files += [layout.bench(d) for d in params.bench.devices]
    files += [layout.oracle(d) for d in params.grid.datasets]
    for run in report_runs(params):
        files += [layout.eval_dir(run) / "summary.csv", layout.eval_dir(run) / "per_image.csv"]
        if run in grid_runs(params) and run.loss == params.report.main_loss \
                and run.heatmap_size in params.report.overlay_sizes:
            files.append(layout.eval_dir(run) / "predictions.npz")
    for d in params.grid.datasets:
        files += [test_split_dir(params, d) / "meta.json", test_split_dir(params, d) / "annotations.npz"]
    return list(dict.fromkeys(files))


def check_inputs(params: Params, layout: Layout) -> None:
    """``FileNotFoundError`` listing every missing input file."""
    missing = [str(f) for f in required_inputs(params, layout) if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the report needs {len(missing)} missing file(s); run the workflow first:\n  " + "\n  ".join(missing)
        )


def _run_columns(run: Run) -> dict:
    return {"dataset": run.dataset, "heatmap_size": run.heatmap_size, "loss": run.loss, "run": run.name}


def load_summaries(params: Params, layout: Layout, runs: list[Run]) -> pd.DataFrame:
    """Long table: dataset, heatmap_size, loss, run, method, nme, fr, auc (fractions), one row per run x
    decoder of ``decode.methods``."""
    frames = []
    for run in runs:
        path = layout.eval_dir(run) / "summary.csv"
        table = pd.read_csv(path)
        missing = sorted(set(params.decode.methods) - set(table["method"]))
        if missing:
            raise ValueError(f"{path}: no rows for decoder(s) {missing}; re-run `popos evaluate` with these params")
        table = table[table["method"].isin(params.decode.methods)]
        frames.append(table.assign(**_run_columns(run)))
    return pd.concat(frames, ignore_index=True)


def load_per_image(params: Params, layout: Layout, runs: list[Run]) -> pd.DataFrame:
    """Per-image NME (fraction): dataset, heatmap_size, loss, run, index, image, method, nme."""
    frames = []
    for run in runs:
        table = pd.read_csv(layout.eval_dir(run) / "per_image.csv")
        frames.append(table[table["method"].isin(params.decode.methods)].assign(**_run_columns(run)))
    return pd.concat(frames, ignore_index=True)


def check_faces(params: Params, per_image: pd.DataFrame) -> list[str]:
    """One line per run whose per-image table does not list exactly its prepared test split's faces, in
    order (a model evaluated on another version of the split); empty if all match."""
    problems = []
    for d in params.grid.datasets:
        split = test_split_dir(params, d)
        with np.load(split / "annotations.npz") as z:
            expected = z["image"].astype(str)
        for run, part in per_image[per_image.dataset == d].groupby("run", sort=False):
            counts = part.groupby("method", sort=False).size()
            if (counts != len(expected)).any():
                method = counts.index[(counts != len(expected)).argmax()]
                problems.append(f"{run} ({method}): {counts[method]} faces, the split has {len(expected)} ({split})")
                continue
            faces = part.drop_duplicates(["index", "image"]).sort_values("index")
            got = faces["image"].astype(str).to_numpy()
            if len(got) != len(expected) or (got != expected).any():
                first = int(np.flatnonzero(got[: len(expected)] != expected[: len(got)])[0])
                ours, theirs = str(got[first]), str(expected[first])
                problems.append(f"{run}: face {first} is {ours!r}, the split's is {theirs!r} ({split})")
    return problems


def load_bench(params: Params, layout: Layout) -> pd.DataFrame:
    """The decoder benchmark of every ``bench.devices`` (``popos bench decoders``' columns): the eager
    decoders only, as the paper's Table 2 (the ``max_floor`` pass and compiled rows stay in the CSV)."""
    frames = []
    for device in params.bench.devices:
        path = layout.bench(device)
        table = pd.read_csv(path)
        missing = [c for c in BENCH_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; re-run `popos bench decoders`")
        frames.append(table[(table.method != FLOOR) & ~table.compiled.astype(bool)])
    return pd.concat(frames, ignore_index=True)


def load_oracle(params: Params, layout: Layout) -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(layout.oracle(d)).assign(dataset=d) for d in params.grid.datasets], ignore_index=True
    )


def sweep_table(params: Params, layout: Layout, per_image: pd.DataFrame) -> pd.DataFrame:
    """Figure 5 as one long table: knob, value, nme (%), nme_se (%, standard error over faces), fr (%), auc;
    decoder ``sweeps.method`` throughout. ``per_image``: :func:`load_per_image` of the MA sweep's runs."""
    path = layout.decoder_sweep
    decoders = pd.read_csv(path)
    missing = [c for c in SWEEP_COLUMNS if c not in decoders.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; re-run `popos sweep decoders`")
    expected = {k: list(getattr(params.sweeps, k)) for k in DECODER_KNOBS}
    for knob, values in expected.items():
        got = decoders.loc[decoders["knob"] == knob, "value"].tolist()
        if sorted(got) != sorted(float(v) for v in values):
            raise ValueError(f"{path}: {knob} values {got} differ from sweeps.{knob} {values}; re-run")
    weights = ma_sweep_runs(params)
    ma = load_summaries(params, layout, list(weights.values()))
    ma = ma[ma["method"] == params.sweeps.method].set_index("run")
    rows = []
    for weight, run in weights.items():
        faces = per_image.loc[(per_image.run == run.name) & (per_image.method == params.sweeps.method), "nme"]
        summary = ma.loc[run.name]
        rows.append({"knob": "ma_weight", "value": float(weight), "nme": summary["nme"], "nme_se": faces.sem(),
                     "fr": summary["fr"], "auc": summary["auc"]})
    table = pd.DataFrame(rows)
    table = pd.concat([decoders[SWEEP_COLUMNS], table], ignore_index=True)
    return table.assign(nme=table["nme"] * 100, nme_se=table["nme_se"] * 100, fr=table["fr"] * 100)
