"""Decoder speed benchmark: every decoder variant at every heatmap size, on realistic heatmaps.

The heatmaps are unbiased Gaussians at random points in the central part of the input with the
``ampnoise`` perturbation of :mod:`popos.oracle` (peak ``x U(0.6, 1)`` per landmark, ``+ N(0, 0.02^2)``),
so that iterative decoders do the work they do on network outputs. Each decoder is called ``warmup``
times, then all are timed in ``repeats`` interleaved rounds (one call of each per round; CUDA is
synchronised around each call), so that a shared machine's slow spells hit every decoder alike. Reported:
the median time, and the medians over rounds of the ratios to ``one_hot`` and to the floor (one
``flat.max(-1)`` pass over the same maps) in the same round; eager and, if asked, compiled.
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

COLUMNS = ["device", "heatmap_size", "method", "batch", "ms", "ms_q1", "ms_q3", "faces_per_s", "ratio_to_one_hot",
           "compiled", "ratio_to_floor", "compile_s"]
REFERENCE = "one_hot"
#: the row of the hardware floor: ``flat.max(-1)`` (value and index) over the same maps, one pass
FLOOR = "max_floor"
#: the large batch a CUDA run adds (faces)
CUDA_LARGE_BATCH = 1024


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


def _first_call_s(fn, dev: torch.device) -> float:
    """Seconds of one call of ``fn`` (synchronised): for a compiled decoder's first call, its compile time."""
    start = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


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
    compile: bool = False,
) -> pd.DataFrame:
    """Time each decoder variant on ``[batch, num_landmarks, H, H]`` heatmaps for each ``H`` in ``heatmap_sizes``.

    ``methods`` defaults to every variant of ``popos.decoders.VARIANTS``; ``one_hot`` is always timed too, as
    the reference of ``ratio_to_one_hot`` (the median over rounds of ``ms / ms of one_hot`` in the same round:
    how many times slower), and so is the floor :data:`FLOOR` (``flat.max(-1)`` over the same maps: one pass
    that finds every map's maximum and its index, what every decoder must at least do), the reference of
    ``ratio_to_floor``. With ``compile`` every decoder is also timed compiled
    (:func:`popos.decoders.compiled`; rows with ``compiled`` true, in the same rounds; ``compile_s``: their
    first call, which compiles, untimed otherwise). On CUDA, calls are synchronised and a batch of
    :data:`CUDA_LARGE_BATCH` faces is timed too. ``sigma`` (heatmap px) and ``popos_options`` go to the
    decoders as in evaluation (``popos.decoders.resolve_variants``). Prints the table and, with ``out``,
    writes it as CSV (atomically). Returns a DataFrame with the columns ``COLUMNS``: ``ms`` per batch
    (median; ``ms_q1``, ``ms_q3``: its quartiles over the rounds), ``faces_per_s = batch / ms * 1000``.
    """
    from popos.decoders import VARIANTS, compiled, decode, resolve_variants

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
    batches = [batch] + ([CUDA_LARGE_BATCH] if dev.type == "cuda" and batch < CUDA_LARGE_BATCH else [])
    rows = []
    progress = tqdm(total=len(batches) * len(heatmap_sizes) * len(names), desc=f"bench decoders ({device})",
                    unit="run")
    for faces in batches:
        points = random_points(faces, num_landmarks, input_size, "center", seeded_generator(seed))
        for size in heatmap_sizes:
            maps = oracle_heatmaps(points, "ampnoise", size, input_size=input_size, sigma=sigma,
                                   generator=seeded_generator(seed, size)).to(dev)
            flat = maps.reshape(-1, size * size)
            calls = {(FLOOR, False): partial(torch.max, flat, -1)}
            compile_s = {}
            for name in names:  # eager, then compiled beside it
                method, options = variants[name]
                calls[(name, False)] = partial(decode, maps, method, sigma=sigma, **options)
                if compile:
                    calls[(name, True)] = partial(compiled(method, sigma=sigma, **options), maps)
                    compile_s[name] = _first_call_s(calls[(name, True)], dev)
            times = _round_times_ms(calls, warmup, repeats, dev)
            for (name, is_compiled), ms_all in times.items():
                ms = float(np.median(ms_all))
                q1, q3 = np.percentile(ms_all, [25, 75])
                rows.append({"device": device, "heatmap_size": size, "method": name, "batch": faces, "ms": ms,
                             "ms_q1": float(q1), "ms_q3": float(q3), "faces_per_s": faces / ms * 1000.0,
                             "ratio_to_one_hot": float(np.median(ms_all / times[(REFERENCE, False)])),
                             "compiled": is_compiled,
                             "ratio_to_floor": float(np.median(ms_all / times[(FLOOR, False)])),
                             "compile_s": compile_s[name] if is_compiled else float("nan")})
            progress.update(len(names))
    progress.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    print(f"decoder speed on {device}: {num_landmarks} landmarks per face, median of {repeats} interleaved rounds, "
          f"ratios to {FLOOR} (flat.max(-1) over the same maps) and to eager {REFERENCE} in the same round")
    print(format_bench_table(table))
    if out is not None:
        write_csv_atomic(table, out)
    return table


def format_bench_table(table: pd.DataFrame) -> str:
    """The benchmark as text: one line per device x batch x size x decoder: eager ms per batch, faces/s, ratio
    to the max floor and to eager one_hot and, if timed, the compiled decoder's beside them (ms per batch,
    ratio to the floor, compile time)."""
    key = ["device", "batch", "heatmap_size", "method"]
    eager = table[~table.compiled].set_index(key)
    shown = pd.DataFrame({
        "ms/batch": eager.ms.map("{:.3f}".format),
        "faces/s": eager.faces_per_s.map("{:,.0f}".format),
        "vs max": eager.ratio_to_floor.map("{:.2f}x".format),
        "vs one_hot": eager.ratio_to_one_hot.map("{:.2f}x".format),
    })
    if table.compiled.any():
        fast = table[table.compiled].set_index(key).reindex(eager.index)
        shown["compiled ms/batch"] = fast.ms.map(lambda v: "" if np.isnan(v) else f"{v:.3f}")
        shown["compiled vs max"] = fast.ratio_to_floor.map(lambda v: "" if np.isnan(v) else f"{v:.2f}x")
        shown["compile s"] = fast.compile_s.map(lambda v: "" if np.isnan(v) else f"{v:.1f}")
    return shown.reset_index().rename(columns={"heatmap_size": "size"}).to_string(index=False)
