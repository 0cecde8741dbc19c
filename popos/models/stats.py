"""Measured model cost: parameters and GFLOPs per heatmap size (the paper's Table 1 columns).

GFLOPs follow the paper, which quotes mmcv's ``get_flops``: 1 "FLOP" = one multiply-accumulate. torch's
``FlopCounterMode`` counts a multiply-accumulate as 2 FLOPs, so the figures here are its count / 2 (for the
authors' 64-pixel model, 4.721 "GFLOPs" matches MACs, not 2 x MACs). Only convolutions and matrix
products are counted; mmcv also counts BatchNorm, ReLU and upsampling elements (+1.3 % on the 64 model).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from popos.choices import HEATMAP_SIZES
from popos.io import write_csv_atomic
from popos.models.hrnet import build_model


def model_stats(model: nn.Module, input_size: int) -> tuple[int, float]:
    """``(parameters, GFLOPs)`` of ``model`` on one ``[1, 3, input_size, input_size]`` image.

    GFLOPs are 1e9 multiply-accumulates (mmcv's convention, as in the paper). The model is run once in
    eval mode without gradients and restored to its previous mode.
    """
    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)
    return params, counter.get_total_flops() / 2 / 1e9


def model_table(num_landmarks: int, width: int = 18, input_size: int = 256, **knobs) -> list[dict]:
    """One row ``{heatmap_size, params_m, gflops}`` per heatmap size (64..4) available at ``input_size``.

    ``knobs`` are further :func:`popos.models.build_model` keywords (slim settings). Sizes without an
    architecture at this input size are left out.
    """
    rows = []
    for size in HEATMAP_SIZES:
        try:
            model = build_model(num_landmarks, size, width=width, input_size=input_size, **knobs)
        except ValueError:
            continue
        params, gflops = model_stats(model, input_size)
        rows.append({"heatmap_size": size, "params_m": params / 1e6, "gflops": gflops})
    return rows


def print_model_table(
    num_landmarks: int, width: int = 18, input_size: int = 256, out: str | Path | None = None, **knobs
) -> list[dict]:
    """Print (and optionally write as CSV to ``out``, atomically) the :func:`model_table`; returns its rows."""
    rows = model_table(num_landmarks, width=width, input_size=input_size, **knobs)
    if not rows:
        raise ValueError(f"input_size {input_size}: no heatmap size of {HEATMAP_SIZES} has an architecture")
    print(f"HRNetV2-W{width}, {num_landmarks} landmarks, input {input_size}x{input_size} (GFLOPs = 1e9 MACs)")
    print(f"{'heatmap':>9} {'params (M)':>11} {'GFLOPs':>8}")
    for r in rows:
        print(f"{r['heatmap_size']:>6}x{r['heatmap_size']:<2} {r['params_m']:>11.3f} {r['gflops']:>8.3f}")
    if out is not None:
        write_csv_atomic(pd.DataFrame(rows).round(4), out)
    return rows
