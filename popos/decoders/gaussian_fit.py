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
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from popos.decoders.base import tracing

#: relative ridge on the normal equations' diagonal (keeps flat or one-pixel windows solvable)
RIDGE = 1e-9
#: the smallest value the log fit takes the logarithm of: its square, the weight of the values at or below it,
#: is negligible and still a normal float32 (an underflow would cost a microcode assist per pixel on x86)
TINY = 1e-15


class Sums(NamedTuple):
    """The sums over the pixels of windows that a Gauss-Newton step needs, at parameters ``c``: the data's
    normal equations ``jtj [k, k, ...]`` and ``jtr [k, ...]`` (no prior), the residual sum of squares ``rss
    [...]`` and the number of pixels ``count [...]``, for a batch of shape ``[...]``."""

    jtj: Tensor
    jtr: Tensor
    rss: Tensor
    count: Tensor

    def rss_after(self, step: Tensor) -> Tensor:
        """The residual sum of squares ``[...]`` on these pixels after the step ``[k, ...]``, predicted by the
        linearised model: ``|r - J step|^2``."""
        quadratic = (step * (self.jtj * step[None]).sum(1)).sum(0)
        return (self.rss - 2 * (step * self.jtr).sum(0) + quadratic).clamp_min(0)


class Linearisation(NamedTuple):
    """A fit at its parameters ``c [k, B]`` before a step: the Gaussian ``g [P, B]``, the residuals ``[P, B]``
    (0 on the pixels not used), the pixels ``used [P, B]`` (float 0 / 1) and their packed sums ``moments
    [M, B]`` (:meth:`WindowModel.moments`)."""

    c: Tensor
    g: Tensor
    residuals: Tensor
    used: Tensor
    moments: Tensor


class WindowFit(NamedTuple):
    """A fit per window (all ``[B]``): ``centre`` ``[2, B]`` (x, y) in heatmap px from the window's centre,
    ``rss`` the residual sum of squares (after a last step, as its linearisation predicts it; ``inf`` where
    the fit is not a peak: ``Q`` not negative definite, or the centre over a pixel outside the window),
    ``used`` the pixels fitted ``[P, B]`` (float 0 / 1), ``pixels`` their number and ``dof`` the number of
    parameters."""

    centre: Tensor
    rss: Tensor
    used: Tensor
    pixels: Tensor
    dof: int


def _build_tables(side: int, baseline: bool, sigma: float, device: torch.device) -> tuple[Tensor, ...]:
    """The constant tables of :class:`WindowModel`: the monomials ``[6, P]``, their products ``[36, P]``, where
    each entry of the normal equations is among :meth:`WindowModel.moments` (``[k * k]`` indices),
    the prior's values and the mask of the parameters it holds, ``[k]`` each, and the identity ``[k, k]``."""
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
    return mono, products, normal.flatten(), prior, on_shape, torch.eye(k, device=device)


_cached_tables = functools.lru_cache(maxsize=None)(_build_tables)


class WindowModel:
    """The model on square windows of ``side`` pixels: ``sigma`` (heatmap px) the prior's width, ``baseline``
    whether ``b`` is fitted, ``shape_prior`` the prior's standard deviation on the quadratic coefficients and
    ``b`` (0: no prior). See the module docstring."""

    def __init__(self, side: int, *, sigma: float, baseline: bool, shape_prior: float, device: torch.device):
        # cached in eager mode; while compiling or exporting built afresh, so that no tensor made by the tracer
        # outlives it
        build = _build_tables if tracing() else _cached_tables
        self.mono, self.products, self.normal, self.prior, self.on_shape, self.eye = build(
            side, baseline, float(sigma), device
        )
        self.side, self.baseline, self.shape_prior = side, baseline, shape_prior
        self.dof = 7 if baseline else 6

    def log_fit(self, values: Tensor, used: Tensor) -> Tensor:
        """The parameters ``[k, B]`` of the weighted least-squares fit of ``ln h`` to ``values [P, B]`` on the
        pixels ``used [P, B]`` (``b = 0``) that hold a positive value."""
        n = values.shape[1]
        positive = values.clamp_min(TINY)
        weight = positive.square() * used
        jtj, jtr = self.products @ weight, self.mono @ (weight * positive.log())
        c = solve_spd(jtj.view(6, 6, n) + _ridge(jtj.view(6, 6, n))[:, None] * self.eye[:6, :6, None], jtr)
        return torch.cat([c, values.new_zeros(1, n)])[: self.dof]

    def evaluate(self, values: Tensor, used: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The Gaussian ``g = exp(quadratic)`` at ``c [k, B]`` and the residuals ``values - m`` on the pixels
        ``used``, 0 elsewhere, both ``[P, B]``."""
        g = torch.exp(self.mono.T @ c[:6])
        model = g + c[6] if self.baseline else g
        return g, (values - model) * used

    def moments(self, g: Tensor, residuals: Tensor, used: Tensor, pixels: Tensor | None = None) -> Tensor:
        """The sums over the pixels ``used [P, B]`` (``residuals [P, B]`` 0 elsewhere) that make up
        :class:`Sums`, packed ``[M, B]`` (:meth:`unpack`; packed sums over disjoint pixels add up), or over
        subsets of them: the pixels at the indices ``pixels [..., L]``, and then ``g``, ``residuals`` and
        ``used`` are ``[..., L, B]``, taken at those pixels, and the result ``[..., M, B]``."""
        mono, products = self.mono, self.products
        if pixels is not None:
            mono, products = mono[:, pixels].movedim(0, -2), products[:, pixels].movedim(0, -2)
        gu = g * used
        parts = [products @ (gu * g)] + ([mono @ gu] if self.baseline else []) + [used.sum(-2, keepdim=True)]
        parts += [mono @ (g * residuals)] + ([residuals.sum(-2, keepdim=True)] if self.baseline else [])
        return torch.cat(parts + [residuals.square().sum(-2, keepdim=True)], -2)

    def unpack(self, moments: Tensor) -> Sums:
        """:class:`Sums` ``[k, k, ...]``, ``[k, ...]``, ``[...]``, ``[...]`` from packed :meth:`moments`
        ``[M, ...]``."""
        rows = 43 if self.baseline else 37  # the products, the Jacobian's sums, the count
        jtj = moments.index_select(0, self.normal).unflatten(0, (self.dof, self.dof))
        return Sums(jtj, moments[rows : rows + self.dof], moments[-1], moments[rows - 1])

    def normal_equations(self, sums: Sums, c: Tensor) -> tuple[Tensor, Tensor]:
        """The normal equations ``[k, k, ...]``, ``[k, ...]`` of the Gauss-Newton step from ``c [k, ...]`` on the
        pixels summed in ``sums`` (of any batch shape ``[...]``), with the prior and the ridge."""
        batch = (1,) * sums.rss.dim()
        diagonal, jtr = _ridge(sums.jtj), sums.jtr  # [k, ...]
        if self.shape_prior > 0:  # the prior as k more observations of the parameters, weighted by the noise
            weight = self.on_shape.view(-1, *batch) * (
                sums.rss / (sums.count - self.dof).clamp_min(1) / self.shape_prior**2)  # fmt: skip
            diagonal = diagonal + weight
            jtr = jtr - weight * (c - self.prior.view(-1, *batch))
        return sums.jtj + diagonal[:, None] * self.eye.view(self.dof, self.dof, *batch), jtr

    def step(self, sums: Sums, c: Tensor) -> Tensor:
        """The Gauss-Newton step ``[k, B]`` from ``c [k, B]`` on the pixels summed in ``sums``, with the prior."""
        return solve_spd(*self.normal_equations(sums, c))


def fit(
    values: Tensor,
    used: Tensor,
    model: WindowModel,
    *,
    steps: int,
    first_step: Callable[[Linearisation], tuple[Tensor, Tensor, Tensor]] | None = None,
) -> WindowFit:
    """Fit ``model`` to square windows ``values [P, B]`` (``P = side^2`` pixels in row-major order, batch last,
    scaled so the peak is near 1) on the pixels marked in ``used [P, B]`` (float 0 / 1).

    ``steps``: Gauss-Newton steps from the log fit; ``first_step``: takes the fit before its first step and
    returns that step ``[k, B]``, the pixels the fit goes on with ``[P, B]`` and their predicted residual sum
    of squares ``[B]`` after the step (the border-line test); by default the step on the same pixels.
    """
    c = model.log_fit(values, used)
    for step in range(steps):
        g, residuals = model.evaluate(values, used, c)
        moments = model.moments(g, residuals, used)
        if first_step is not None and step == 0:
            delta, used, rss = first_step(Linearisation(c, g, residuals, used, moments))
        else:
            sums = model.unpack(moments)
            delta = model.step(sums, c)
            rss = sums.rss_after(delta)
        c = c + delta
    if not steps:
        rss = model.evaluate(values, used, c)[1].square().sum(0)
    centre, is_peak = centre_of(c)
    inside = (centre.abs() <= (model.side - 1) / 2 + 1).all(0)
    return WindowFit(centre, torch.where(is_peak & inside, rss, torch.inf), used, used.sum(0), model.dof)


def solve_spd(a: Tensor, b: Tensor) -> Tensor:
    """Solve ``a x = b`` for a batch of symmetric positive definite systems, batch last: ``a [n, n, ...]``,
    ``b [n, ...]`` -> ``x [n, ...]`` (Gauss-Jordan elimination without pivoting).

    >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]])[..., None]
    >>> [round(x, 6) for x in solve_spd(a, torch.tensor([[1.0], [2.0]])).flatten().tolist()]
    [0.090909, 0.636364]
    """
    n = a.shape[0]
    aug = torch.cat([a, b[:, None]], 1)  # [n, n + 1, ...]; after step k only the columns right of k are kept
    for k in range(n):
        row = aug[k, 1:] / aug[k, :1]
        factor = aug[:, 0].clone()
        factor[k] -= 1  # row k becomes the normalised row, the others lose their column k
        aug = aug[:, 1:] - factor[:, None] * row[None]
    return aug[:, 0]


def _ridge(jtj: Tensor) -> Tensor:
    """The ridge ``[k, ...]`` that keeps the normal equations ``jtj [k, k, ...]`` solvable: :data:`RIDGE` times
    the largest diagonal entry."""
    ridge = RIDGE * jtj.diagonal(0, 0, 1).amax(-1) + 1e-30
    return ridge.expand(jtj.shape[0], *ridge.shape)


def centre_of(c: Tensor) -> tuple[Tensor, Tensor]:
    """Centre ``[2, B]`` (heatmap px from the window's centre) of the log-quadratics ``c [6, B]``, and bool
    ``[B]``: it is a peak (``Q`` negative definite)."""
    a, b, d = 2 * c[3], c[4], 2 * c[5]
    det = a * d - b * b
    safe = torch.where(det != 0, det, 1.0)
    x = (b * c[2] - d * c[1]) / safe
    y = (b * c[1] - a * c[2]) / safe
    return torch.stack([x, y]), (a < 0) & (det > 0)
