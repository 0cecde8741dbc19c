"""Decoder ablations without the model (Figure 5a-c): the authors' POPoS re-decoding one model's saved test
heatmaps with one knob of its grid changed at a time.

Each swept value is the variant ``sweeps.method`` (``popos_authors``, as the paper's Figure 5; our
``popos`` fits a window and has no grid, anchors or region to sweep) with that one option replaced;
errors are measured in image px as :func:`popos.evaluate.evaluate` does (flip test fused the same way).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from popos.config import Params

#: sweeps.<knob> -> the option of :func:`popos.decoders.popos_authors.popos_authors` it sets.
KNOB_OPTIONS = {"region": "region", "samples_per_pixel": "samples_per_pixel", "anchors": "anchors"}
COLUMNS = ["knob", "value", "nme", "nme_se", "fr", "auc", "threshold", "n_images"]


def sweep_variants(params: Params) -> dict[str, tuple[str, dict, str, float]]:
    """``{variant name: (method, options, knob, value)}`` for every value of every decoder knob in ``params.sweeps``.

    >>> from popos.config import load_params
    >>> sorted(sweep_variants(load_params(overrides=["sweeps.anchors=[10]", "sweeps.region=[1]",
    ...                                              "sweeps.samples_per_pixel=[4]"])))
    ['anchors=10', 'region=1', 'samples_per_pixel=4']
    """
    from popos.decoders import resolve_variants

    name = params.sweeps.method
    method, base = resolve_variants([name], params.decode.popos.model_dump())[name]
    out = {}
    for knob, option in KNOB_OPTIONS.items():
        for value in getattr(params.sweeps, knob):
            out[f"{knob}={value:g}"] = (method, {**base, option: value}, knob, float(value))
    return out


def decoder_sweep(
    params: Params, heatmaps: str | Path, *, input_size: int, flip_index: list[int] | None
) -> pd.DataFrame:
    """Summary per swept value: knob, value, nme, nme_se (its standard error over faces), fr, auc (fractions,
    at ``evaluate.fr_threshold``), threshold, n_images.

    ``heatmaps``: a ``heatmaps.npz`` saved by ``popos evaluate`` (``[N, K, h, h]`` float16, with its
    ground truth); ``input_size``: the model's input side (input px = heatmap px x stride);
    ``flip_index``: the dataset's left/right swap, needed when the file holds flip-test heatmaps. Sigma is
    ``decode.sigma`` (heatmap px).
    """
    from popos.evaluate import evaluate_saved_heatmaps, summarize_table

    variants = sweep_variants(params)
    per_image = evaluate_saved_heatmaps(
        heatmaps,
        {name: (method, options) for name, (method, options, _, _) in variants.items()},
        flip_index,
        input_size,
        params.decode.sigma,
    )
    summary = summarize_table(per_image, params.evaluate.fr_threshold)
    summary["nme_se"] = per_image.groupby("method", sort=False)["nme"].sem().loc[summary["method"]].to_numpy()
    summary["knob"] = [variants[name][2] for name in summary["method"]]
    summary["value"] = [variants[name][3] for name in summary["method"]]
    return summary[COLUMNS]


def run_decoder_sweep(params: Params, heatmaps: str | Path, checkpoint: str | Path, out: str | Path) -> pd.DataFrame:
    """:func:`decoder_sweep` of the heatmaps that ``checkpoint``'s model produced (its stored config gives
    the input size and flip index), printed and written to ``out`` as CSV (atomically)."""
    from popos.checkpoint import load_checkpoint
    from popos.io import atomic_path

    cfg = load_checkpoint(checkpoint)["config"]
    table = decoder_sweep(params, heatmaps, input_size=cfg["model"]["input_size"], flip_index=cfg["flip_index"])
    print(table.to_string(index=False))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return table
