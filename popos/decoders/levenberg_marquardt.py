"""Damped Gauss-Newton (Levenberg-Marquardt) with a fixed number of steps, batched over heatmaps.

The least-squares fits of :mod:`.likelihood` and :mod:`.gaussian_fit` share it. It has no data-dependent
Python control flow (a rejected step is masked, not skipped), so it compiles and exports as a graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``theta [B, n] -> (cost [B], J^T J [B, n, n], J^T r [B, n])`` of a least-squares objective
Evaluate = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def levenberg_marquardt(
    evaluate: Evaluate, theta: Tensor, iterations: int, free: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Minimise ``evaluate``'s cost from ``theta [B, n]`` in exactly ``iterations`` steps.

    Each step solves ``(J^T J + lam diag(J^T J)) step = -J^T r`` and is kept only where it lowers the
    cost (``lam`` then drops tenfold, else it grows tenfold; from 1e-3, kept in [1e-7, 1e7]), so the
    result is never worse than the start. ``free [B, n]`` bool (default: all) holds the parameters that
    may move; a fixed one gets an identity row and column and a zero right-hand side. Returns ``theta
    [B, n]`` and its cost ``[B]``.
    """
    cost, jtj, jtr = evaluate(theta)
    lam = torch.full_like(cost, 1e-3)
    if free is not None:
        eye = torch.eye(theta.shape[-1], device=theta.device)
        both = (free[:, :, None] & free[:, None, :]).float()
        fixed_eye = eye * (1 - both)
    for _ in range(iterations):
        if free is None:
            a, rhs = jtj + lam[:, None, None] * torch.diag_embed(jtj.diagonal(0, 1, 2)), -jtr
        else:
            a, rhs = torch.addcmul(fixed_eye, jtj * both, 1 + lam[:, None, None] * eye), torch.where(free, -jtr, 0.0)
        step, info = torch.linalg.solve_ex(a, rhs)
        trial = theta + torch.where((info == 0)[:, None] & torch.isfinite(step), step, 0.0)
        trial_cost, trial_jtj, trial_jtr = evaluate(trial)
        better = trial_cost < cost
        theta = torch.where(better[:, None], trial, theta)
        cost = torch.where(better, trial_cost, cost)
        jtj = torch.where(better[:, None, None], trial_jtj, jtj)
        jtr = torch.where(better[:, None], trial_jtr, jtr)
        lam = (lam * torch.where(better, 0.1, 10.0)).clamp(1e-7, 1e7)
    return theta, cost
