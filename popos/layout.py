"""Where the pipeline steps write, and which trained models the params ask for.

One definition shared by ``workflow/`` (which builds the jobs) and :mod:`popos.report` (which reads their
outputs), so that the report reads exactly the runs of the current params and never a stale one left
on disk. Every path is relative to the results root ``grid.results_dir``:

* ``models/<run>/checkpoint.pt`` and ``eval/<run>/{summary.csv, per_image.csv, predictions.npz,
  heatmaps.npz}`` for each run (one trained model);
* ``model_info.csv``, ``oracle/<dataset>.csv``, ``bench/decoders_<device>.csv``, ``sweeps/decoders.csv``;
* ``report/`` (the report), ``logs/`` and ``benchmarks/`` (one file per job).

The prepared data the steps read lies under ``data.prepared_dir`` instead (:func:`split_dir`).

A run is named ``<dataset>_<heatmap size>_<loss>``, e.g. ``300w_32_mse_ma``, trained with
``train.ma_weight``; a run of the MA-weight sweep with another weight ``w`` is ``300w_32_mse_ma_w<w>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from popos.config import Params


class Run(NamedTuple):
    """One trained model: dataset x heatmap size x loss (x an MA weight other than ``train.ma_weight``)."""

    dataset: str
    heatmap_size: int
    loss: str
    ma_weight: float | None = None

    @property
    def name(self) -> str:
        """Folder name under ``models/`` and ``eval/``.

        >>> Run("300w", 32, "mse_ma", 2.0).name
        '300w_32_mse_ma_w2'
        """
        base = f"{self.dataset}_{self.heatmap_size}_{self.loss}"
        return base if self.ma_weight is None else f"{base}_w{self.ma_weight:g}"


def grid_runs(params: Params) -> list[Run]:
    """The grid ``grid.datasets x grid.heatmap_sizes x grid.losses``, in that nesting order."""
    g = params.grid
    return [Run(d, s, loss) for d in g.datasets for s in g.heatmap_sizes for loss in g.losses]


def ma_sweep_runs(params: Params) -> dict[float, Run]:
    """MA weight -> the run trained with it on ``sweeps.dataset`` at ``sweeps.heatmap_size`` (Figure 5d).

    Weight ``train.ma_weight`` is the ordinary ``mse_ma`` run and weight 0 the ``mse`` run
    (``L_MSE + 0 * L_MA = L_MSE``), so those reuse grid models when the grid has them.
    """
    d, s = params.sweeps.dataset, params.sweeps.heatmap_size
    runs = {}
    for w in params.sweeps.ma_weight:
        if w == params.train.ma_weight:
            runs[w] = Run(d, s, "mse_ma")
        elif w == 0:
            runs[w] = Run(d, s, "mse")
        else:
            runs[w] = Run(d, s, "mse_ma", float(w))
    return runs


def decoder_sweep_run(params: Params) -> Run:
    """The run whose saved test heatmaps the decoder sweeps (Figure 5a-c) decode."""
    return Run(params.sweeps.dataset, params.sweeps.heatmap_size, params.sweeps.loss)


def split_dir(params: Params, dataset: str, split: str) -> Path:
    """The prepared folder of ``dataset``'s ``split`` under ``data.prepared_dir``: ``"train"`` and ``"test"``
    name the dataset's default splits (:mod:`popos.data.registry`), anything else a split folder.

    >>> from popos.config import load_params
    >>> split_dir(load_params(), "300w", "test").as_posix()
    'data/prepared/300w/full'
    """
    from popos.data.registry import get_dataset

    spec = get_dataset(dataset)
    name = {"train": spec.train_split, "test": spec.test_split}.get(split, split)
    return Path(params.data.prepared_dir) / dataset / name


def all_runs(params: Params) -> list[Run]:
    """Every run the workflow trains for these params: the grid, then the sweeps' extra runs (no duplicates)."""
    runs = grid_runs(params) + list(ma_sweep_runs(params).values()) + [decoder_sweep_run(params)]
    return list(dict.fromkeys(runs))


class Layout:
    """Paths of every pipeline output under ``root`` (``grid.results_dir``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def model_dir(self, run: Run | str) -> Path:
        return self.root / "models" / _name(run)

    def checkpoint(self, run: Run | str) -> Path:
        return self.model_dir(run) / "checkpoint.pt"

    def eval_dir(self, run: Run | str) -> Path:
        return self.root / "eval" / _name(run)

    @property
    def model_info(self) -> Path:
        return self.root / "model_info.csv"

    def oracle(self, dataset: str) -> Path:
        return self.root / "oracle" / f"{dataset}.csv"

    def bench(self, device: str) -> Path:
        return self.root / "bench" / f"decoders_{device}.csv"

    @property
    def decoder_sweep(self) -> Path:
        return self.root / "sweeps" / "decoders.csv"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"


def _name(run: Run | str) -> str:
    return run.name if isinstance(run, Run) else run
