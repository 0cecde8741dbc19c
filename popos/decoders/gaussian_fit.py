"""Least-squares fit of a Gaussian of free amplitude, position and shape to the pixels of a window.

The model of the window pixel at ``(u, v)`` (heatmap px from the window's centre pixel) is
``m = exp(c0 + c1 u + c2 v + c3 u^2 + c4 u v + c5 v^2) + b``: a Gaussian of any amplitude, centre and
covariance (the log-quadratic ``c``) on a baseline ``b``. Its centre is where the quadratic's gradient
vanishes, ``p = -Q^-1 (c1, c2)`` with ``Q = [[2 c3, c4], [c4, 2 c5]]`` (negative definite for a peak),
its covariance ``-Q^-1``. The fit minimises ``sum (h - m)^2`` over the pixels used, the maximum
likelihood under i.i.d. pixel noise, by damped Gauss-Newton in ``c`` (the Jacobian is
``g (1, u, v, u^2, u v, v^2)`` and ``1`` for ``b``), started from the weighted least-squares fit of
``ln h`` (weights ``h^2``, the inverse variance of ``ln h`` under pixel noise), which is already exact on
a clean Gaussian.

Every window of a batch has the same pixel offsets, so every sum over pixels is one matrix product of
``[B, P]`` values with a shared ``[P, ...]`` table of monomials of ``(u, v)``. Parameters outside a row's
``free`` mask keep their start value (e.g. the width given: ``c3 = c5 = -1 / (2 sigma^2)``, ``c4 = 0``;
no baseline: ``b = 0``), so rows fit different models in one pass. Fixed iteration counts, masks instead
of data-dependent branches.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from popos.decoders.levenberg_marquardt import levenberg_marquardt

#: parameters: log-amplitude, linear (u, v), quadratic (u^2, u v, v^2) and the baseline
PARAMETERS = ("c0", "cu", "cv", "cuu", "cuv", "cvv", "b")
#: the parameters of each model (the others stay at their start value)
MODELS = {
    "width": ("c0", "cu", "cv"),
    "shape": ("c0", "cu", "cv", "cuu", "cuv", "cvv"),
    "baseline": ("c0", "cu", "cv", "cuu", "cuv", "cvv", "b"),
}


def free_mask(model: str, device: torch.device | None = None) -> Tensor:
    """Bool ``[7]``: the parameters :data:`MODELS` ``[model]`` fits."""
    return torch.tensor([p in MODELS[model] for p in PARAMETERS], device=device)


@functools.lru_cache(maxsize=32)
def monomials(height: int, width: int, device: torch.device) -> Monomials:
    """The :class:`Monomials` of a ``height x width`` window, built once per shape and device."""
    return Monomials(height, width, device)


class Monomials:
    """The shared tables of a ``height x width`` window: ``phi [P, 6] = (1, u, v, u^2, u v, v^2)`` per pixel
    (``u, v`` from the window's centre pixel ``(width // 2, height // 2)``, heatmap px) and their pairwise
    products ``outer [P, 36]``."""

    def __init__(self, height: int, width: int, device: torch.device):
        v, u = torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float32) - height // 2,
            torch.arange(width, device=device, dtype=torch.float32) - width // 2,
            indexing="ij",
        )
        u, v = u.flatten(), v.flatten()
        self.u, self.v = u, v
        self.phi = torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], -1)
        self.outer = (self.phi[:, :, None] * self.phi[:, None, :]).reshape(-1, 36)
        # J^T J of the 7 parameters = g^2 @ quadratic + g @ mixed + used @ baseline (J = (g phi, 1) per pixel)
        psi = torch.cat([self.phi, torch.ones_like(u)[:, None]], -1)
        outer7 = (psi[:, :, None] * psi[:, None, :]).reshape(-1, 7, 7)
        block = torch.zeros(3, 7, 7, device=device)
        block[0, :6, :6] = 1
        block[1, :6, 6] = block[1, 6, :6] = 1
        block[2, 6, 6] = 1
        self.jtj_tables = [(outer7 * b).reshape(-1, 49) for b in block]
        self.jtr_tables = (torch.cat([self.phi, torch.zeros_like(u)[:, None]], -1), torch.eye(7, device=device)[6])


def log_quadratic_start(values: Tensor, weight: Tensor, start: Tensor, free: Tensor, mono: Monomials) -> Tensor:
    """The weighted least-squares fit of ``ln h`` by the log-quadratic: ``c [B, 7]``.

    ``values [B, P]`` (``h``, positive where ``weight > 0``), ``weight [B, P]`` (e.g. ``h^2`` on the pixels
    used, 0 elsewhere), ``start [B, 7]`` (the values of the parameters not ``free [B, 7]``; the baseline is
    kept). A singular system leaves the start values.
    """
    logs = torch.log(values.clamp_min(1e-30))
    free6 = free[:, :6]
    fixed = torch.where(free6, 0.0, start[:, :6])
    target = torch.addmm(logs, fixed, mono.phi.T, alpha=-1)  # ln h less the fixed parameters' part
    normal = (weight @ mono.outer).view(-1, 6, 6)
    rhs = (weight * target) @ mono.phi * free6
    both = (free6[:, :, None] & free6[:, None, :]).float()
    # a fixed parameter gets an identity row and column and a zero right-hand side, so a zero step
    normal = torch.addcmul(torch.eye(6, device=values.device) * (1 - both), normal, both)
    theta, info = torch.linalg.solve_ex(normal, rhs)
    ok = (info == 0)[:, None] & torch.isfinite(theta)
    c6 = torch.where(free6 & ok, theta, start[:, :6])
    return torch.cat([c6, start[:, 6:]], -1)


def _evaluate(
    c: Tensor, used_values: Tensor, used: Tensor, log_used: Tensor, baseline_jtj: Tensor, mono: Monomials
) -> tuple[Tensor, Tensor, Tensor]:
    """Cost ``sum used (m - h)^2`` ``[B]``, ``J^T J [B, 7, 7]`` and ``J^T r [B, 7]`` at ``c [B, 7]``, from
    ``used_values = used h``, ``log_used = ln used`` (0 or ``-inf``) and ``baseline_jtj = used @ table``
    (the part of ``J^T J`` that does not depend on ``c``), all precomputed."""
    g = torch.exp(torch.addmm(log_used, c[:, :6], mono.phi.T).clamp_max_(80.0))  # 0 on the pixels not used
    r = torch.addcmul(g - used_values, c[:, 6:], used)
    quadratic, mixed, _ = mono.jtj_tables
    jtj = torch.addmm(torch.addmm(baseline_jtj, g * g, quadratic), g, mixed).view(-1, 7, 7)
    jtr = (g * r) @ mono.jtr_tables[0]
    jtr[:, 6] = r.sum(-1)
    return torch.linalg.vecdot(r, r), jtj, jtr


def gauss_newton_fit(
    values: Tensor, used: Tensor, c: Tensor, free: Tensor, mono: Monomials, iterations: int
) -> tuple[Tensor, Tensor]:
    """:func:`levenberg_marquardt` on ``sum used (h - m)^2`` from ``c [B, 7]``.

    ``values [B, P]``, ``used [B, P]`` (1 on the pixels fitted, 0 elsewhere), ``free [B, 7]`` bool.
    Returns ``c [B, 7]`` and its cost ``[B]``, never worse than the start's.
    """
    data = (values * used, used, torch.log(used), used @ mono.jtj_tables[2], mono)
    return levenberg_marquardt(lambda theta: _evaluate(theta, *data), c, iterations, free)


def centre_of(c: Tensor) -> tuple[Tensor, Tensor]:
    """The centre ``(u, v) [B, 2]`` of the log-quadratic ``c [B, 7]`` and whether it is a maximum (``Q``
    negative definite) ``[B]`` bool; elsewhere the centre is 0."""
    quu, quv, qvv = 2 * c[:, 3], c[:, 4], 2 * c[:, 5]
    det = quu * qvv - quv * quv
    peak = (quu < 0) & (det > 0)
    det = torch.where(peak, det, 1.0)
    u = -(qvv * c[:, 1] - quv * c[:, 2]) / det
    v = -(quu * c[:, 2] - quv * c[:, 1]) / det
    return torch.where(peak[:, None], torch.stack([u, v], -1), 0.0), peak
