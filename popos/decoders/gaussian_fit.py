"""Least-squares fit of a Gaussian of free amplitude, centre and shape to the pixels of a window.

The model of the window pixel at ``(u, v)`` (heatmap px from the window's centre) is
``m = exp(c0 + c1 u + c2 v + c3 u^2 + c4 u v + c5 v^2) + b``: a Gaussian of any amplitude, centre and
covariance (the log-quadratic ``c``), optionally on a baseline ``b``. Its centre is where the quadratic's
gradient vanishes, ``p = -Q^-1 (c1, c2)`` with ``Q = [[2 c3, c4], [c4, 2 c5]]`` (negative definite for a
peak). The fit starts from the weighted least-squares fit of ``ln h`` (weights ``h^2``: the inverse variance
of ``ln h`` under pixel noise), already exact on any clean Gaussian, then takes Gauss-Newton steps on
``sum (h - m)^2``, the maximum likelihood under i.i.d. pixel noise (Jacobian ``g (1, u, v, u^2, u v, v^2)``
and ``1`` for ``b``).

The shape has a prior: the width ``sigma`` the maps were trained with, round and on no baseline, with a
standard deviation ``shape_prior`` on each quadratic coefficient (and on ``b``). Its weight in the normal
equations is the fit's own residual variance over ``shape_prior^2`` (an empirical-Bayes ridge), so a clean
map, whose residuals vanish, is fitted exactly whatever its shape, while under noise the shape leans on the
prior and the centre keeps the accuracy of a fit of known width.

Windows are ``[P, B]``, batch last: every window of a batch has the same pixel offsets, so every sum over
pixels is one matrix product with a shared ``[., P]`` table of monomials of ``(u, v)``, and the per-window
``7 x 7`` systems are solved by Gauss-Jordan elimination on ``[7, 8, B]`` (no pivoting: the systems are
positive definite), a few dozen whole-batch operations that compile and export as a graph.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from popos.decoders.base import tracing

#: relative ridge on the normal equations' diagonal (keeps flat or one-pixel windows solvable)
RIDGE = 1e-9


def _build_tables(side: int, baseline: bool, sigma: float, device: torch.device) -> tuple[Tensor, ...]:
    """The constant tables of :func:`fit` for a window side: the monomials ``[6, P]``, their products ``[36,
    P]``, where each entry of the normal equations is among the sums :func:`fit` takes (``[k * k]`` indices),
    the prior's values and the mask of the parameters it holds, ``[k, 1]`` each, and the identity ``[k, k, 1]``."""
    offsets = torch.arange(side, dtype=torch.float32, device=device) - (side - 1) / 2
    v, u = torch.meshgrid(offsets, offsets, indexing="ij")
    u, v = u.flatten(), v.flatten()
    mono = torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v])  # [6, P]
    products = (mono[:, None] * mono[None]).reshape(36, -1)
    # jtj's entries as rows of (products @ g^2, mono @ g, pixels): the Jacobian row of a pixel is (g m, 1)
    k = 7 if baseline else 6
    normal = torch.arange(36, device=device).view(6, 6)
    if baseline:
        normal = torch.cat([torch.cat([normal, torch.arange(36, 42, device=device)[:, None]], 1),
                            torch.arange(36, 43, device=device)[None]])  # fmt: skip
    prior = torch.tensor([0.0, 0.0, 0.0, -0.5 / sigma**2, 0.0, -0.5 / sigma**2, 0.0][:k], device=device)
    on_shape = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0][:k], device=device)
    eye = torch.eye(k, device=device)[:, :, None]
    return mono, products, normal.flatten(), prior[:, None], on_shape[:, None], eye


_cached_tables = functools.lru_cache(maxsize=None)(_build_tables)


def _tables(side: int, baseline: bool, sigma: float, device: torch.device) -> tuple[Tensor, ...]:
    """:func:`_build_tables`, cached in eager mode; while compiling or exporting built afresh, so that no tensor
    made by the tracer outlives it."""
    return _build_tables(side, baseline, sigma, device) if tracing() else _cached_tables(side, baseline, sigma, device)


def solve_spd(a: Tensor, b: Tensor) -> Tensor:
    """Solve ``a x = b`` for a batch of symmetric positive definite systems, batch last: ``a [n, n, B]``,
    ``b [n, B]`` -> ``x [n, B]`` (Gauss-Jordan elimination without pivoting).

    >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]])[..., None]
    >>> [round(x, 6) for x in solve_spd(a, torch.tensor([[1.0], [2.0]])).flatten().tolist()]
    [0.090909, 0.636364]
    """
    n = a.shape[0]
    aug = torch.cat([a, b[:, None]], 1)  # [n, n + 1, B]; after step k only the columns right of k are kept
    for k in range(n):
        row = aug[k, 1:] / aug[k, :1]
        factor = aug[:, 0].clone()
        factor[k] -= 1  # row k becomes the normalised row, the others lose their column k
        aug = aug[:, 1:] - factor[:, None] * row[None]
    return aug[:, 0]


class WindowFit(NamedTuple):
    """A fit per window (all ``[B]``): ``centre`` ``[2, B]`` (x, y) in heatmap px from the window's centre,
    ``rss`` the residual sum of squares (``inf`` where the fit is not a peak: ``Q`` not negative definite, or
    the centre over a pixel outside the window), ``pixels`` the pixels used, ``residuals`` ``[P, B]`` (on
    every pixel, used or not), ``params`` ``[dof, B]`` (``c``, then ``b``) and ``dof`` their number."""

    centre: Tensor
    rss: Tensor
    pixels: Tensor
    residuals: Tensor
    params: Tensor
    dof: int


def fit(
    values: Tensor,
    used: Tensor,
    side: int,
    *,
    sigma: float,
    baseline: bool,
    steps: int,
    shape_prior: float,
    start: Tensor | None = None,
) -> WindowFit:
    """Fit the model to square windows ``values [P, B]`` (``P = side^2`` pixels in row-major order, batch last,
    scaled so the peak is near 1) on the pixels marked in ``used [P, B]`` (float 0 / 1).

    ``sigma`` (heatmap px): the prior's width; ``baseline``: fit ``b`` too; ``steps``: Gauss-Newton steps;
    ``shape_prior``: the prior's standard deviation on the quadratic coefficients and ``b`` (0: no prior);
    ``start``: the parameters ``[k, B]`` to start from (e.g. a fit of the same windows on other pixels)
    instead of the log fit. See the module docstring.
    """
    mono, products, normal, prior, on_shape, eye = _tables(side, baseline, float(sigma), values.device)
    n = values.shape[1]
    k = 7 if baseline else 6
    pixels = used.sum(0)
    if start is None:
        weight = used * (values > 0) * values.square()
        log_values = torch.log(torch.where(values > 0, values, 1.0))
        jtj, jtr = products @ weight, mono @ (weight * log_values)
        c = torch.cat([_solve(jtj.view(6, 6, n), jtr, eye[:6, :6]), values.new_zeros(1, n)])[:k]  # [k, B]
    else:
        c = start
    for step in range(steps + 1):
        g = torch.exp(mono.T @ c[:6])  # [P, B]
        residuals = values - g - c[6] if baseline else values - g
        r = residuals * used
        rss = r.square().sum(0)
        if step == steps:
            break
        gu = g * used
        sums = [products @ (gu * g)] + ([mono @ gu, pixels[None]] if baseline else [])  # [36 (+ 7), B]
        jtj = torch.cat(sums)[normal].view(k, k, n)
        jtr = torch.cat([mono @ (gu * r)] + ([r.sum(0, keepdim=True)] if baseline else []))
        if shape_prior > 0:  # the prior as k more observations of the parameters, weighted by the noise
            weight = on_shape * (rss / (pixels - k).clamp_min(1) / shape_prior**2)  # [k, B]
            jtj = jtj + weight[:, None] * eye
            jtr = jtr - weight * (c - prior)
        c = c + _solve(jtj, jtr, eye)
    centre, is_peak = centre_of(c)
    inside = (centre.abs() <= (side - 1) / 2 + 1).all(0)
    return WindowFit(centre, torch.where(is_peak & inside, rss, torch.inf), pixels, residuals, c, k)


def _solve(jtj: Tensor, jtr: Tensor, eye: Tensor) -> Tensor:
    """Solve the normal equations ``jtj [k, k, B]``, ``jtr [k, B]`` with a relative ridge of :data:`RIDGE`."""
    ridge = RIDGE * jtj.diagonal(0, 0, 1).amax(1) + 1e-30  # [B]
    return solve_spd(jtj + ridge * eye, jtr)


def centre_of(c: Tensor) -> tuple[Tensor, Tensor]:
    """Centre ``[2, B]`` (heatmap px from the window's centre) of the log-quadratics ``c [6, B]``, and bool
    ``[B]``: it is a peak (``Q`` negative definite)."""
    a, b, d = 2 * c[3], c[4], 2 * c[5]
    det = a * d - b * b
    safe = torch.where(det != 0, det, 1.0)
    x = (b * c[2] - d * c[1]) / safe
    y = (b * c[1] - a * c[2]) / safe
    return torch.stack([x, y]), (a < 0) & (det > 0)
