"""Multilateration decoders: KeyPosS (linear least squares) and IGNO (iterative least squares), and their parts.

A heatmap value ``h`` at anchor pixel ``a`` is read as a range: ``d^2 = -2 sigma^2 ln h`` is the squared
distance from ``a`` to the Gaussian's centre ``p`` (:func:`popos.codec.distance_maps`), so each anchor
gives one equation ``|a - p|^2 = d^2``. ``heatmaps [..., K, H, W] -> [..., K, 2]`` float32 ``(x, y)`` in
heatmap px, pixel ``i`` centred at ``i``.

The parts shared with :mod:`popos.decoders.popos`: top-K anchors in a window around the argmax, the
per-anchor range residuals, and a batched, damped Gauss-Newton (Levenberg-Marquardt) loop. IGNO's
squared-range least squares has its own damped Newton loop (:func:`squared_range_newton`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from popos.codec import distance_maps
from popos.decoders.base import (
    argmax_xy,
    check_choice,
    check_float,
    check_int,
    clamp_to_map,
    flat_maps,
    no_peak,
    peak,
    register,
    tracing,
    unflatten,
    window,
)

#: the authors' Gauss-Newton anchor count per heatmap side (KeyPosS ``keypoints_from_heatmaps_tril_topK``)
IGNO_ANCHORS = {64: 30, 32: 30, 16: 30, 8: 15, 4: 10}
IGNO_ANCHORS_OTHER = 30
#: a clipped heatmap value below this reads as the farthest range (as the authors' code)
EPS = 1e-9

# evaluate(theta [B, 3]) -> (cost [B], J^T W J [B, 3, 3], J^T W r [B, 3]) of a least-squares problem
Evaluate = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def anchor_window(anchors: int) -> int:
    """Side of the square window around the argmax that holds the ``anchors`` largest pixels of a peak.

    The K nearest pixels to a point lie within ``sqrt(K / pi)`` plus about a pixel of it, and the point
    is within half a pixel of the argmax per axis. ``anchor_window(30) == 11``.
    """
    return 2 * math.ceil(math.sqrt(anchors / math.pi) + 1) + 1


def top_anchors(maps: Tensor, x: Tensor, y: Tensor, anchors: int, side: int) -> tuple[Tensor, Tensor]:
    """The ``anchors`` largest pixels in a ``side`` window around each argmax ``(x, y)`` (int64 ``[B]``).

    ``maps [B, H, W]`` -> values float32 ``[B, K]`` (in no particular order) and pixel coordinates ``[B, K, 2]``
    ``(x, y)``; ``K = min(anchors, pixels in the window)``. The authors take the top K of the whole map;
    on a single peak that is the same set, and the window keeps a second peak from lending anchors.
    """
    values, x0, y0 = window(maps, x, y, side)
    n, wy, wx = values.shape
    top, idx = values.reshape(n, -1).topk(min(anchors, wy * wx), dim=-1, sorted=False)
    coords = torch.stack([x0[:, None] + idx % wx, y0[:, None] + torch.div(idx, wx, rounding_mode="floor")], -1)
    return top, coords.float()


def linear_least_squares(anchors: Tensor, d2: Tensor) -> Tensor:
    """KeyPosS's linearised multilateration: ``[B, K, 2]`` anchors, ``[B, K]`` squared ranges -> ``[B, 2]``.

    Subtracting the last anchor's equation from the others cancels ``|p|^2`` and leaves the linear system
    ``2 (a_L - a_i) . p = d_i^2 - d_L^2 + |a_L|^2 - |a_i|^2``, solved by normal equations (Cramer's rule on
    2 x 2); where the anchors are collinear (singular system) the result is the last anchor. Only range
    differences enter, so a common offset of all ``d^2`` (a heatmap scaled by a constant, as long as no
    value is clipped at 1) does not change the result.
    """
    ref = anchors[:, -1:]
    rel = anchors[:, :-1] - ref  # equations in coordinates relative to the last anchor
    rows = -rel
    rhs = 0.5 * (d2[:, :-1] - d2[:, -1:] - (rel**2).sum(-1))
    mxx, myy = (rows[..., 0] ** 2).sum(-1), (rows[..., 1] ** 2).sum(-1)
    mxy = (rows[..., 0] * rows[..., 1]).sum(-1)
    bx, by = (rows[..., 0] * rhs).sum(-1), (rows[..., 1] * rhs).sum(-1)
    det = mxx * myy - mxy**2
    ok = det > 1e-6 * (mxx * myy).clamp_min(1e-12)
    det = torch.where(ok, det, torch.ones_like(det))
    p = torch.stack([myy * bx - mxy * by, mxx * by - mxy * bx], -1) / det[:, None]
    return ref[:, 0] + torch.where(ok[:, None], p, torch.zeros_like(p))


def keyposs_station(maps: Tensor, x: Tensor, y: Tensor, sigma: float) -> Tensor:
    """KeyPosS's 4-anchor estimate on ``maps [B, H, W]`` (H, W >= 2) with argmax ``(x, y)`` -> ``[B, 2]`` px.

    Ours (``keyposs(block="peak")`` and ``popos``'s ``station="keyposs"``). Anchors: of the 2 x 2 blocks
    inside the map that contain the argmax, the one with the largest sum (first in row-major order on
    ties). The authors' rule (:func:`authors_block`) also scans blocks that miss the argmax, never uses
    the last row or column and keeps the last of equal blocks.
    """
    n, height, width = maps.shape
    corner = torch.tensor([[-1, -1], [0, -1], [-1, 0], [0, 0]], device=maps.device)  # block top-left - argmax
    bx = (x[:, None] + corner[:, 0]).clamp(0, width - 2)  # [B, 4 blocks]
    by = (y[:, None] + corner[:, 1]).clamp(0, height - 2)
    cell = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=maps.device)  # pixel in block, row-major
    ax = bx[:, :, None] + cell[:, 0]  # [B, 4 blocks, 4 pixels]
    ay = by[:, :, None] + cell[:, 1]
    values = maps.reshape(n, -1).gather(1, (ay * width + ax).reshape(n, -1)).float().reshape(n, 4, 4)
    best = values.sum(-1).argmax(-1)[:, None, None]
    pick = torch.stack([ax, ay], -1).gather(1, best[..., None].expand(-1, 1, 4, 2))[:, 0].float()
    d2 = distance_maps(values.gather(1, best.expand(-1, 1, 4))[:, 0], sigma, EPS, squared=True)
    return linear_least_squares(pick, d2)


def authors_argmax(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Each map's first maximum (row-major) and mmpose's ``_get_max_preds`` of it, which the authors'
    decoders start from: two ``[B, 2]`` float32 ``(x, y)``, the second ``-1`` where the maximum is not positive."""
    x, y, top, _ = peak(maps)
    xy = torch.stack([x, y], -1).float()
    return xy, torch.where((top > 0)[:, None], xy, -1.0)


def authors_ranges(values: Tensor, sigma: float) -> Tensor:
    """The authors' ranges ``d = sqrt(-2 sigma^2 ln h)``, ``h`` clipped to ``[1e-9, 1]``, in float64 as their
    NumPy code computes them (a float32 value clipped by Python floats promotes): ``[...]`` heatmap px."""
    return ((-2.0 * sigma) * sigma * torch.log(values.double().clamp(EPS, 1.0))).sqrt()


#: the authors' 2 x 2 block scan keeps its first block unless a sum reaches this (their starting best)
AUTHORS_BLOCK_FLOOR = -99999999.0
#: pixels of a 2 x 2 block, row-major, as offsets (x, y) from its top-left pixel; the last is the reference
_BLOCK = ((0, 0), (1, 0), (0, 1), (1, 1))


def _lls_matrix() -> list[list[Tensor]]:
    """``(X^T X)^-1 X^T`` of the authors' 2 x 2 block solve, ``X`` rows ``a_L - a_i`` (the same for every
    block), as their float32 ``np.linalg.inv`` gives it: the float32 rounding of the exact inverse (LAPACK
    is exact here up to that rounding), times ``X^T`` (entries 0 and 1: exact). 2 x 3 float32 scalars."""
    rows = torch.tensor([[_BLOCK[3][0] - bx, _BLOCK[3][1] - by] for bx, by in _BLOCK[:3]], dtype=torch.float64)
    inv = torch.linalg.inv(rows.T @ rows).float().double()
    return [list(r.unbind()) for r in (inv @ rows.T).float()]


_LLS = _lls_matrix()


def authors_block(maps: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
    """Top-left pixel ``(x0, y0)`` (two int64 ``[B]``) of the authors' KeyPosS block (``block_search``).

    ``maps [B, H, W]`` (H, W >= 2), ``start [B, 2]`` (the second of :func:`authors_argmax`). With
    ``c = int(start + 0.5)`` per axis, the scan covers the 2 x 2 blocks whose top-left corner runs from
    ``max(c - 2, 0)`` to ``min(c + 3, size) - 3`` (rows outer, columns inner): up to 3 x 3 blocks, some miss the
    argmax, and none reaches the last row or column. It keeps the block of largest float32 sum
    ``((h00 + h01) + h10) + h11``, the LAST of equal sums (``>=``); with no block scanned on an axis (a
    side of 2) or no sum at least :data:`AUTHORS_BLOCK_FLOOR`, the first block ``(max(c - 2, 0), ...)``.
    """
    n, height, width = maps.shape
    size = torch.tensor([width, height], device=maps.device)
    c = torch.trunc(start + 0.5).long()  # Python's int()
    low = (c - 2).clamp_min(0)
    count = torch.minimum(c + 3, size) - low - 2  # blocks scanned per axis (may be <= 0)
    step = torch.arange(3, device=maps.device)
    corner = torch.minimum(low[:, None, :] + step[:, None], size - 2)  # [B, 3, 2] (clamped: unscanned anyway)
    scanned = step < count[:, :, None]  # [B, 2 (x, y), 3]
    bx = corner[:, None, :, 0].expand(n, 3, 3).reshape(n, 9)  # scan order: row (y) outer, column (x) inner
    by = corner[:, :, None, 1].expand(n, 3, 3).reshape(n, 9)
    ok = (scanned[:, 1, :, None] & scanned[:, 0, None, :]).reshape(n, 9)
    flat = maps.reshape(n, height * width).float()
    pixels = (by * width + bx)[:, :, None] + torch.tensor([dy * width + dx for dx, dy in _BLOCK], device=maps.device)
    v = flat.gather(1, pixels.reshape(n, 36)).reshape(n, 9, 4)  # one gather: the 4 pixels of the 9 blocks
    sums = ((v[..., 0] + v[..., 1]) + v[..., 2]) + v[..., 3]
    sums = torch.where(ok & (sums.double() >= AUTHORS_BLOCK_FLOOR), sums, -math.inf)
    last = 8 - sums.flip(-1).argmax(-1)  # the last of the largest
    last = torch.where(sums.amax(-1) > -math.inf, last, 0)  # none: the first block
    return bx.gather(1, last[:, None])[:, 0], by.gather(1, last[:, None])[:, 0]


def authors_station(maps: Tensor, start: Tensor, sigma: float) -> Tensor:
    """The authors' KeyPosS estimate (``block_search`` + ``LLS_solve``), bit for bit: ``[B, 2]`` float32 px.

    Anchors: the 4 pixels of :func:`authors_block`, ranges by :func:`authors_ranges` (float64). With the
    last anchor ``a_L`` as reference, ``y_i = ((((d_i^2 + x_L^2) + y_L^2) - d_L^2) - x_i^2) - y_i^2) / 2`` in
    float64, rounded to float32, and ``p = M y`` in float32, summed in order, ``M`` from :func:`_lls_matrix`.
    """
    n, height, width = maps.shape
    x0, y0 = authors_block(maps, start)
    ax = torch.stack([x0 + dx for dx, _ in _BLOCK], -1).double()
    ay = torch.stack([y0 + dy for _, dy in _BLOCK], -1).double()
    values = maps.reshape(n, height * width).float().gather(1, (ay * width + ax).long())
    d = authors_ranges(values, sigma)
    d2 = d * d
    rhs = ((((d2[:, :3] + ax[:, 3:] ** 2) + ay[:, 3:] ** 2) - d2[:, 3:]) - ax[:, :3] ** 2) - ay[:, :3] ** 2
    rhs = (rhs * 0.5).float()
    out = []
    for m in _LLS:
        acc = m[0] * rhs[:, 0]
        acc = acc + m[1] * rhs[:, 1]
        out.append(acc + m[2] * rhs[:, 2])
    return torch.stack(out, -1)


@register("keyposs")
def keyposs(heatmaps: Tensor, *, sigma: float = 2.0, block: str = "authors") -> Tensor:
    """KeyPosS (Bao et al., ACM MM 2023): linear least squares on a 2 x 2 block of anchors at the peak.

    ``[..., K, H, W] -> [..., K, 2]`` heatmap px (H, W >= 2). ``block="authors"`` (default): their
    ``keypoints_from_heatmaps_tril`` bit for bit (:func:`authors_station`: their block rule, float32
    solve; maps without a positive value use the block at the top-left corner, as theirs). ``"peak"``
    (ours, variant ``keyposs_peak``): the best block containing the argmax (:func:`keyposs_station`),
    Cramer's rule, clamped to the map. Exact on clean Gaussians of width ``sigma`` and unchanged by a
    constant factor on the heatmap (while no value exceeds 1); sensitive to noise (4 anchors, no weighting).
    """
    check_float("sigma", sigma, 0.0, strict=True)
    check_choice("block", block, ("authors", "peak"))
    maps = flat_maps(heatmaps, min_size=2)
    if block == "authors":
        return unflatten(authors_station(maps, authors_argmax(maps)[1], sigma), heatmaps)
    x, y = argmax_xy(maps)
    return unflatten(clamp_to_map(keyposs_station(maps, x, y, sigma), *maps.shape[1:]), heatmaps)


def range_residuals(anchors: Tensor, d2: Tensor, objective: str) -> Evaluate:
    """Least-squares form of the range equations of ``[B, K, 2]`` anchors with ``[B, K]`` squared ranges.

    ``theta = (x, y, c)``. ``"l2"`` (the paper's Eq. 3 plus a common offset ``c``, the pseudo-range clock
    bias): ``r = |a - p|^2 + c - d^2``, cost ``sum r^2``. ``"l1"`` (the authors' code):
    ``r = |a - p| - d``, cost ``sum |r|``, minimised by iteratively reweighted least squares (weights
    ``1 / |r|``); ``c`` is unused. Returns :data:`Evaluate` for :func:`gauss_newton`.
    """
    if objective == "l2":
        return _squared_range_residuals(anchors, d2)
    d = d2.clamp_min(0).sqrt()
    zero = torch.zeros_like(d2)[..., None]

    def evaluate(theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u = anchors - theta[:, None, :2]
        rho = (u * u).sum(-1).clamp_min(1e-12).sqrt()
        r = rho - d
        jac = torch.cat([-u / rho[..., None], zero], -1)
        wjac = jac / r.abs().clamp_min(1e-4)[..., None]
        return r.abs().sum(-1), torch.einsum("bki,bkj->bij", wjac, jac), torch.einsum("bki,bk->bi", wjac, r)

    return evaluate


class _RangeSums:
    """Per-heatmap sums of the squared-range residuals ``r_k = |a_k - p|^2 + c - d_k^2``, float64 ``[B]`` each.

    In coordinates centred on the anchors' mean ``(cx, cy)``, which zeroes ``sum a``, and with
    ``e = |a|^2 - d^2``, ``q = |p|^2 + c``: ``r_k = e_k - 2 a_k . p + q``, so ``sum r = K q + sum e``
    and ``sum r^2 = sum (e - mean e)^2 + (sum r)^2 / K + 4 p . (S p - sum e a)`` with ``S = sum a a^T``
    (``sxx, sxy, syy``) and ``sum e a`` (``bx, by``): a few operations per heatmap whatever ``K``. Float64
    because that cost cancels heavily. Everything is kept per coordinate, as contiguous ``[B, K]`` and
    ``[B]`` tensors: on a CPU, operations along a last dimension of 2 cost many times more.
    """

    def __init__(self, anchors: Tensor, d2: Tensor):
        x, y = anchors[..., 0].double(), anchors[..., 1].double()
        self.cx, self.cy = x.mean(-1), y.mean(-1)
        ax, ay = x - self.cx[:, None], y - self.cy[:, None]
        e = ax * ax + ay * ay - d2.double()
        self.k = e.shape[1]
        self.s_e = e.sum(-1)
        self.spread = ((e - self.s_e[:, None] / self.k) ** 2).sum(-1)
        self.sxx, self.sxy, self.syy = (ax * ax).sum(-1), (ax * ay).sum(-1), (ay * ay).sum(-1)
        self.bx, self.by = (e * ax).sum(-1), (e * ay).sum(-1)

    def cost(self, px: Tensor, py: Tensor, c: Tensor | float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``sum r^2``, ``sum r`` and ``S p`` (x, y) at the centred point ``(px, py)`` with offset ``c``."""
        spx = self.sxx * px + self.sxy * py
        spy = self.sxy * px + self.syy * py
        sum_r = self.k * (px * px + py * py + c) + self.s_e
        cost = self.spread + sum_r * sum_r / self.k + 4 * (px * (spx - self.bx) + py * (spy - self.by))
        return cost, sum_r, spx, spy


def _squared_range_residuals(anchors: Tensor, d2: Tensor) -> Evaluate:
    """The ``"l2"`` case of :func:`range_residuals`, from :class:`_RangeSums` (the cost comes back float64).

    With ``J_k = (-2 (a_k - p), 1)``: ``J^T J = [[4 (S + K p p^T), 2 K p], [2 K p^T, K]]`` and
    ``J^T r = (2 ((sum r) p + 2 S p - sum e a), sum r)``.
    """
    sums = _RangeSums(anchors, d2)
    k = sums.k

    def evaluate(theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        px, py = theta[:, 0].double() - sums.cx, theta[:, 1].double() - sums.cy
        cost, sum_r, spx, spy = sums.cost(px, py, theta[:, 2].double())
        xy = 4 * (sums.sxy + k * px * py)
        jtj = torch.stack(
            [4 * (sums.sxx + k * px * px), xy, 2 * k * px,
             xy, 4 * (sums.syy + k * py * py), 2 * k * py,
             2 * k * px, 2 * k * py, torch.full_like(px, k)], -1,
        ).reshape(-1, 3, 3)  # fmt: skip
        jtr = torch.stack([2 * (sum_r * px + 2 * spx - sums.bx), 2 * (sum_r * py + 2 * spy - sums.by), sum_r], -1)
        return cost, jtj.to(theta.dtype), jtr.to(theta.dtype)

    return evaluate


def squared_range_newton(anchors: Tensor, d2: Tensor, start: Tensor, iterations: int, tol: float = 1e-3) -> Tensor:
    """Damped Newton on the squared-range cost ``F = sum_k (|a_k - p|^2 - d_k^2)^2`` from ``start [B, 2]``.

    ``[B, K, 2]`` anchors, ``[B, K]`` squared ranges; returns ``[B, 2]`` float32 heatmap px. In the
    notation of :class:`_RangeSums`, ``F / 4`` has the gradient ``(sum r) p + 2 S p - sum e a`` and the
    Hessian ``H = M + (sum r) I``, where ``M = 2 (S + K p p^T)`` is Gauss-Newton's matrix and
    ``(sum r) I`` the residuals' own curvature, which Gauss-Newton drops. That term matters whenever the
    ranges do not meet in a point, as with any peak below 1 (``sum r < 0``): Gauss-Newton then converges
    only linearly (on ``ampnoise`` maps at 8 x 8, 20 steps stop up to 2 heatmap px short), Newton
    quadratically.

    ``H`` can be indefinite away from the minimum, so each step solves ``(H + mu I) delta = -gradient``
    with ``mu`` twice the negative part of ``H``'s smallest eigenvalue (mirroring it) plus ``lam`` times
    ``M``'s smallest eigenvalue. As in :func:`gauss_newton`, a step is kept only where it lowers the
    cost, so the result is never worse than the start; ``lam`` grows tenfold after a rejected step and
    drops tenfold after a kept one, but not below its start 1e-3 (from lower, a rejection where the
    curvature changes would cost several steps). The loop stops once no step exceeds ``tol`` px, or
    after ``iterations`` steps.
    """
    sums = _RangeSums(anchors, d2)
    px, py = start[:, 0].double() - sums.cx, start[:, 1].double() - sums.cy
    cost, sum_r, spx, spy = sums.cost(px, py)
    lam = torch.full_like(cost, 1e-3)
    running = torch.ones((), dtype=torch.bool, device=cost.device)  # false once no step exceeds tol
    for _ in range(iterations):
        grad_x, grad_y = sum_r * px + 2 * spx - sums.bx, sum_r * py + 2 * spy - sums.by
        mxx, myy = 2 * (sums.sxx + sums.k * px * px), 2 * (sums.syy + sums.k * py * py)  # M
        mxy = 2 * (sums.sxy + sums.k * px * py)
        half_gap = 0.5 * (mxx - myy)  # (sqrt of a sum of squares: torch.hypot does not export to ONNX)
        smallest = 0.5 * (mxx + myy) - (half_gap * half_gap + mxy * mxy).sqrt()  # its smallest eigenvalue
        shift = sum_r + 2 * (-(smallest + sum_r)).clamp_min(0) + lam * smallest  # H + mu I = M + shift I
        axx, ayy = mxx + shift, myy + shift
        det = axx * ayy - mxy * mxy  # the matrix is positive semi-definite by construction
        det = torch.where(det > 0, det, torch.inf)  # singular (collinear anchors): no step
        dx, dy = (mxy * grad_y - ayy * grad_x) / det, (mxy * grad_x - axx * grad_y) / det
        tx, ty = px + dx, py + dy
        state = (tx, ty, *sums.cost(tx, ty))
        better = (state[2] < cost) & running
        px, py, cost, sum_r, spx, spy = (
            torch.where(better, new, old) for new, old in zip(state, (px, py, cost, sum_r, spx, spy), strict=True)
        )
        lam = torch.where(running, (lam * torch.where(better, 0.1, 10.0)).clamp_min(1e-3), lam)
        running = running & (dx * dx + dy * dy > tol * tol).any()
        if not tracing() and not bool(running):  # eager: stop; a graph runs on with its state frozen
            break
    return torch.stack([px + sums.cx, py + sums.cy], -1).float()


def gauss_newton(
    evaluate: Evaluate,
    theta: Tensor,
    iterations: int,
    *,
    free: tuple[bool, bool, bool],
    slack: Tensor | float = 0.0,
    tol: float = 1e-3,
    restrict: Callable[[Tensor], Evaluate] | None = None,
) -> Tensor:
    """Batched damped Gauss-Newton (Levenberg-Marquardt) from ``theta [B, 3]``; returns ``[B, 3]``.

    Each step solves ``(J^T W J + lam diag(J^T W J)) delta = -J^T W r`` for the parameters marked in
    ``free``, keeps the trial point only where it does not raise the cost by more than ``slack`` (the
    cost's rounding error, ``[B]`` or a number; else it stays and raises ``lam`` tenfold; on success
    ``lam`` drops tenfold), and stops early once no step exceeds ``tol`` (in the units of ``theta``, heatmap
    px for the position). Singular systems give a zero step, so the better point (up to ``slack``) is
    always returned. ``restrict(rows)``, when given, returns the evaluator of those rows of the batch: rows
    whose step fell below ``tol`` then leave the iteration once they are half of those still running, so
    that a slowly converging tail (reweighted least squares converges only linearly) does not cost
    full-batch iterations.
    """
    fixed = torch.tensor([not f for f in free], device=theta.device)
    out = theta.clone()
    rows = torch.arange(theta.shape[0], device=theta.device)
    slack = torch.as_tensor(slack, dtype=theta.dtype, device=theta.device).expand(theta.shape[0])
    cost, jtj, jtr = evaluate(theta)
    lam = torch.full_like(theta[:, 0], 1e-3)
    for iteration in range(iterations):
        a = jtj + lam[:, None, None] * torch.diagonal(jtj, dim1=1, dim2=2).diag_embed()
        rhs = -jtr
        if not all(free):  # fixed parameters: identity row and column, zero right-hand side, so zero step
            a = torch.where(fixed[:, None] | fixed[None, :], torch.eye(3, device=theta.device), a)
            rhs = torch.where(fixed, 0.0, rhs)
        step, info = torch.linalg.solve_ex(a, rhs)
        step = torch.where(((info == 0) & torch.isfinite(step).all(-1))[:, None], step, 0.0)
        trial = theta + step
        trial_cost, trial_jtj, trial_jtr = evaluate(trial)
        better = trial_cost < cost + slack
        theta = torch.where(better[:, None], trial, theta)
        moving = (step.abs() > tol).any(-1)
        if iteration == iterations - 1 or not bool(moving.any()):
            break
        cost = torch.where(better, trial_cost, cost)
        jtj = torch.where(better[:, None, None], trial_jtj, jtj)
        jtr = torch.where(better[:, None], trial_jtr, jtr)
        lam = lam * torch.where(better, 0.1, 10.0)
        if restrict is not None and 2 * int(moving.sum()) <= moving.numel():
            out[rows] = theta
            rows, theta, cost, jtj, jtr, lam, slack = (
                t[moving] for t in (rows, theta, cost, jtj, jtr, lam, slack)
            )
            evaluate = restrict(rows)
    out[rows] = theta
    return out


def authors_top_anchors(maps: Tensor, anchors: int) -> tuple[Tensor, Tensor]:
    """The authors' anchors (``topK``): the ``anchors`` largest pixels of the whole map, largest first.

    ``maps [B, H, W]`` -> values float32 ``[B, K]`` and pixel coordinates float64 ``[B, K, 2]`` ``(x, y)``.
    Equal values come in an unspecified order (theirs: NumPy's unstable sort); only sums over anchors
    depend on it, to their rounding.
    """
    n, height, width = maps.shape
    values, idx = maps.reshape(n, height * width).float().topk(min(anchors, height * width), dim=-1)
    return values, torch.stack([idx % width, torch.div(idx, width, rounding_mode="floor")], -1).double()


def _solve_float32(h00: Tensor, h01: Tensor, h11: Tensor, b0: Tensor, b1: Tensor) -> tuple[Tensor, Tensor]:
    """``[[h00, h01], [h01, h11]] delta = (b0, b1)`` for float32 ``[B]`` entries, as the authors'
    ``np.linalg.solve`` in float32 gives it: the float32 rounding of the exact solution (float64 Cramer's
    rule is that up to a rare last-bit tie). A singular system (theirs raises) gives a zero step."""
    h00, h01, h11, b0, b1 = (t.double() for t in (h00, h01, h11, b0, b1))
    det = h00 * h11 - h01 * h01
    ok = det != 0
    det = torch.where(ok, det, 1.0)
    return (torch.where(ok, (h11 * b0 - h01 * b1) / det, 0.0).float(),
            torch.where(ok, (h00 * b1 - h01 * b0) / det, 0.0).float())  # fmt: skip


def sum_in_order(terms: Tensor) -> Tensor:
    """Sum ``terms [K, ...]`` over the first dimension, first to last, in their dtype: ``[...]``.

    ``K - 1`` additions of whole ``[...]`` tensors, rounding as the authors' NumPy loops of ``+=`` (``sum``
    rounds otherwise). Compiled, the chain stays in order too (no reassociation), so compiled IGNO equals
    eager IGNO; with ``sum`` it would differ by up to 1e-3 px where its float32 normal equations cancel.
    """
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _products(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``[K, len(pairs), B]``: the products ``a * b`` of ``[K, B]`` pairs, written in place (no stacking copy)."""
    first = pairs[0][0]
    out = first.new_empty(first.shape[0], len(pairs), first.shape[1])
    for i, (a, b) in enumerate(pairs):
        torch.mul(a, b, out=out[:, i])
    return out


def authors_gauss_newton(anchors: Tensor, d: Tensor, start: Tensor, iterations: int) -> Tensor:
    """The authors' ``fit_gauss_newton``, bit for bit, batched: ``[B, 2]`` float32 heatmap px.

    Anchors float64 ``[B, K, 2]`` (summed in their order), ranges float64 ``[B, K]``, ``start [B, 2]``
    float32. Each step: residuals ``e_k = |a_k - p|^2 - d_k^2`` and ``J_k = -2 (a_k - p)``;
    ``H = sum J J^T``, ``B = -sum e J`` accumulated in float32 (:func:`sum_in_order`); ``delta = H^-1 B``
    (:func:`_solve_float32`); cost ``sum e^2``. The first step computes ``e`` and the cost in float64
    (NumPy scalars), the later ones in float32 (the point has become a float32 array). From the second
    step on, a cost at least the previous one (compared in float32) stops the loop before the update:
    the point of that larger cost is returned. At most ``iterations`` updates; undamped.
    """
    ax, ay = anchors.permute(2, 1, 0).contiguous()  # [K, B] each: anchor k's row is contiguous
    d2 = (d * d).T.contiguous()
    ax32, ay32, d2_32 = ax.float(), ay.float(), d2.float()
    x, y = start.unbind(-1)
    active = torch.ones_like(x, dtype=torch.bool)
    last = torch.zeros_like(d2[0])
    for step in range(iterations):
        if step == 0:  # float64 residual, rounded to float32 where it meets the float32 arrays
            ex, ey = ax - x.double(), ay - y.double()
            e = (ex * ex + ey * ey) - d2
            ne, jx, jy = (-e).float(), (-2 * ex).float(), (-2 * ey).float()
            cost = sum_in_order(e * e)
            h00, h01, h11, b0, b1 = sum_in_order(_products([(jx, jx), (jx, jy), (jy, jy), (ne, jx), (ne, jy)]))
        else:
            ex, ey = ax32 - x, ay32 - y
            e = (ex * ex + ey * ey) - d2_32
            ne, jx, jy = -e, -2 * ex, -2 * ey
            cost, h00, h01, h11, b0, b1 = sum_in_order(
                _products([(e, e), (jx, jx), (jx, jy), (jy, jy), (ne, jx), (ne, jy)]))
            active &= ~(cost >= last.float())  # (a NaN cost does not stop theirs)
        dx, dy = _solve_float32(h00, h01, h11, b0, b1)
        x, y = torch.where(active, x + dx, x), torch.where(active, y + dy, y)
        last = torch.where(active, cost.double(), last)
        if not tracing() and not bool(active.any()):  # eager: stop; a graph runs on, changing nothing
            break
    return torch.stack([x, y], -1)


@register("igno")
def igno(
    heatmaps: Tensor,
    *,
    sigma: float = 2.0,
    anchors: int | None = None,
    iterations: int = 20,
    solver: str = "authors",
    objective: str = "l2",
) -> Tensor:
    """IGNO (the paper's Eq. 3 and 6): least squares on the range equations of the top-K anchors.

    ``[..., K, H, W] -> [..., K, 2]`` heatmap px. The ``anchors`` largest pixels (default
    :data:`IGNO_ANCHORS` for the map height, else 30), ranges ``d^2 = -2 sigma^2 ln h`` with ``h`` clipped
    to ``[1e-9, 1]``, start at the argmax, at most ``iterations`` unweighted steps. No amplitude handling:
    peaks below 1 bias the ranges, as upstream.

    ``solver="authors"`` (default): the authors' ``keypoints_from_heatmaps_tril_topK`` bit for bit
    (anchors of the whole map, :func:`authors_gauss_newton`; ``objective`` must be ``"l2"``). It may
    return a point of higher cost than its start, or diverge, as theirs.

    ``solver="damped"`` (ours, variant ``igno_damped``): batched, damped, never returns a worse point
    than it had, anchors from a window around the argmax (:func:`top_anchors`), stops once every step is
    below 1e-3 px; ``objective="l2"`` (squared-range residuals ``|a - p|^2 - d^2``) takes damped Newton
    steps (:func:`squared_range_newton`) to the minimum that Gauss-Newton approaches only linearly
    whenever the peak is below 1; ``"l1"`` (range residuals) reweighted least squares by
    :func:`gauss_newton`; the result is clamped to the map.

    Both: maps with no peak among the anchors (:func:`~popos.decoders.base.no_peak`: all values <= 0 or
    all equal, where the authors' result depends on the order of equal values) give the argmax.
    """
    maps = flat_maps(heatmaps, min_size=2)
    _, height, width = maps.shape
    k = IGNO_ANCHORS.get(height, IGNO_ANCHORS_OTHER) if solver == "authors" or height == width else IGNO_ANCHORS_OTHER
    check_float("sigma", sigma, 0.0, strict=True)
    k = check_int("anchors", k if anchors is None else anchors, 3)
    check_int("iterations", iterations, 0)
    check_choice("solver", solver, ("authors", "damped"))
    check_choice("objective", objective, ("l2", "l1"))
    if solver == "authors" and objective != "l2":
        raise ValueError("objective='l1' needs solver='damped' (the authors' Gauss-Newton is on squared ranges)")
    if solver == "authors":
        values, coords = authors_top_anchors(maps, k)
        top, start = authors_argmax(maps)
        p = authors_gauss_newton(coords, authors_ranges(values, sigma), start, iterations)
        return unflatten(torch.where(no_peak(values)[:, None], top, p), heatmaps)
    x, y = argmax_xy(maps)
    start = torch.stack([x, y], -1).float()
    values, coords = top_anchors(maps, x, y, k, anchor_window(k))
    d2 = distance_maps(values, sigma, EPS, squared=True)
    if objective == "l2":
        p = squared_range_newton(coords, d2, start, iterations)
    else:
        theta = torch.cat([start, torch.zeros_like(start[:, :1])], -1)
        p = gauss_newton(
            range_residuals(coords, d2, "l1"), theta, iterations, free=(True, True, False),
            restrict=lambda rows: range_residuals(coords[rows], d2[rows], "l1"),
        )[:, :2]
    p = torch.where(no_peak(values)[:, None], start, clamp_to_map(p, height, width))
    return unflatten(p, heatmaps)
