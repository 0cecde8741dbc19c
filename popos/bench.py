"""Decoder speed benchmark: every decoder variant at every heatmap size, on realistic heatmaps.

The heatmaps are unbiased Gaussians at random points in the central part of the input with the
``ampnoise`` perturbation of :mod:`popos.oracle` (peak ``x U(0.6, 1)`` per landmark, ``+ N(0, 0.02^2)``),
so that iterative decoders do the work they do on network outputs. Each decoder is called ``warmup``
times, then all are timed in ``repeats`` interleaved rounds (one call of each per round; CUDA is
synchronised around each call), so that a shared machine's slow spells hit every decoder alike. Reported:
the median time, and the median over rounds of the ratio to ``one_hot`` in the same round.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from popos.device import resolve_device
from popos.io import write_csv_atomic
from popos.oracle import oracle_heatmaps, random_points, seeded_generator

COLUMNS = ["device", "heatmap_size", "method", "batch", "ms", "ms_q1", "ms_q3", "faces_per_s", "ratio_to_one_hot"]
REFERENCE = "one_hot"


def _round_times_ms(calls: dict, warmup: int, repeats: int, dev: torch.device) -> dict[str, np.ndarray]:
    """``{name: fn}`` -> ``{name: [repeats] ms}``: each round calls every ``fn`` once, in order."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    sync()
    times = {name: np.empty(repeats) for name in calls}
    for r in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name][r] = 1000.0 * (time.perf_counter() - start)
    return times


def bench_decoders(
    device: str,
    batch: int,
    num_landmarks: int,
    heatmap_sizes: list[int],
    warmup: int,
    repeats: int,
    out: str | Path | None = None,
    *,
    methods: list[str] | None = None,
    sigma: float = 2.0,
    popos_options: dict | None = None,
    seed: int = 0,
    input_size: int = 256,
) -> pd.DataFrame:
    """Time each decoder variant on ``[batch, num_landmarks, H, H]`` heatmaps for each ``H`` in ``heatmap_sizes``.

    ``methods`` defaults to every variant of ``popos.decoders.VARIANTS``; ``one_hot`` is always timed too, as
    the reference of ``ratio_to_one_hot`` (the median over rounds of ``ms / ms of one_hot`` in the same round:
    how many times slower). ``sigma`` (heatmap
    px) and ``popos_options`` go to the decoders as in evaluation (``popos.decoders.resolve_variants``).
    Prints the table and, with ``out``, writes it as CSV (atomically). Returns a DataFrame with the columns
    ``COLUMNS``: ``ms`` per batch (median; ``ms_q1``, ``ms_q3``: its quartiles over the rounds),
    ``faces_per_s = batch / ms * 1000``.
    """
    from popos.decoders import VARIANTS, decode, resolve_variants

    dev = resolve_device(device)
    for name, value in (("batch", batch), ("num_landmarks", num_landmarks), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value}")
    if warmup < 0:
        raise ValueError(f"warmup: expected a non-negative integer, got {warmup}")
    names = list(VARIANTS) if methods is None else list(methods)
    unknown = [m for m in names if m not in VARIANTS]
    if unknown:
        raise ValueError(f"methods: unknown decoder variants {unknown}; available: {', '.join(VARIANTS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    variants = resolve_variants(names, popos_options)
    points = random_points(batch, num_landmarks, input_size, "center", seeded_generator(seed))
    rows = []
    progress = tqdm(total=len(heatmap_sizes) * len(names), desc=f"bench decoders ({device})", unit="run")
    for size in heatmap_sizes:
        maps = oracle_heatmaps(points, "ampnoise", size, input_size=input_size, sigma=sigma,
                               generator=seeded_generator(seed, size)).to(dev)
        calls = {name: partial(decode, maps, variants[name][0], sigma=sigma, **variants[name][1]) for name in names}
        times = _round_times_ms(calls, warmup, repeats, dev)
        for name in names:
            ms = float(np.median(times[name]))
            q1, q3 = np.percentile(times[name], [25, 75])
            rows.append({"device": device, "heatmap_size": size, "method": name, "batch": batch, "ms": ms,
                         "ms_q1": float(q1), "ms_q3": float(q3),
                         "faces_per_s": batch / ms * 1000.0,
                         "ratio_to_one_hot": float(np.median(times[name] / times[REFERENCE]))})
        progress.update(len(names))
    progress.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    print(f"decoder speed on {device}: batch {batch} x {num_landmarks} landmarks, "
          f"median of {repeats} interleaved rounds")
    print(format_bench_table(table))
    if out is not None:
        write_csv_atomic(table, out)
    return table


def format_bench_table(table: pd.DataFrame) -> str:
    """The benchmark as text: one line per device x size x decoder: ms per batch, faces/s, ratio to one_hot."""
    shown = table.assign(
        ms=table.ms.map("{:.3f}".format),
        faces_per_s=table.faces_per_s.map("{:,.0f}".format),
        ratio_to_one_hot=table.ratio_to_one_hot.map("{:.1f}x".format),
    )
    names = {"heatmap_size": "size", "ms": "ms/batch", "faces_per_s": "faces/s", "ratio_to_one_hot": "vs one_hot"}
    return shown.rename(columns=names).to_string(index=False)
