"""POPoS: pseudo-range multilateration by parallel search over a candidate grid, then Gauss-Newton.

``heatmaps [..., K, H, W] -> [..., K, 2]`` float32 ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.

The paper (AAAI 2025, section 3.3) reads the heatmap value at each anchor pixel ``a_i`` as a range,
``d_i^2 = -2 sigma^2 ln h_i``, and picks, from a grid of candidate points around the peak, the one that
best satisfies the range equations ``|a_i - p|^2 = d_i^2``. Ours keeps that search and adds:

* **the pseudo-range offset**: a network's peak has an unknown amplitude ``A`` (MSE training gives
  ``A < 1``), and ``ln h = ln A - |a - p|^2 / (2 sigma^2)`` adds the same ``c = -2 sigma^2 ln A`` to every
  squared range, like a GPS receiver's clock bias. It is solved jointly with the position
  (``amplitude="joint"``) instead of assumed zero (the authors' decoder errs by 65 input px at 4 x 4 for
  ``A = 0.7``) or divided out by the maximum (which biases clean maps);
* **the maximum-likelihood objective** ``"ml"``: the range equations mapped back through the Gaussian,
  ``r_i = A exp(-|a_i - p|^2 / (2 sigma^2)) - h_i``, i.e. squared-range residuals weighted by the inverse
  of their noise variance under i.i.d. pixel noise (``var(d_i^2) ~ 1 / h_i^2``). Its parts are separable
  in x and y, so the whole candidate grid costs two small matrix products per heatmap, over every pixel
  of a window around the peak;
* **a closed-form station**: the grid is centred on the vertex of the log-parabola through the argmax
  and its neighbours on each axis (:func:`parabola_station`), exact for any clean Gaussian, so a small
  grid (default 5 x 5 over 2 px) suffices;
* **refinement**: a few damped Gauss-Newton steps on the same objective from the grid optimum, so the
  result is exact on clean heatmaps at every size rather than limited to the grid spacing;
* **bounded memory and batching**: one pass for all heatmaps; candidate x anchor tensors (objectives
  ``"l1"``, ``"l2"``) are processed in chunks of at most :data:`CHUNK_ELEMENTS`.

``preset="authors"`` reproduces the authors' released decoder (see :data:`AUTHORS_SIZES`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from popos.anchors import AUTHORS_OTHER, AUTHORS_SIZES, OUR_WINDOW, our_anchors
from popos.codec import distance_maps
from popos.decoders.base import (
    argmax_xy,
    check_choice,
    check_float,
    check_int,
    clamp_to_map,
    flat_maps,
    no_peak,
    register,
    unflatten,
    window,
)
from popos.decoders.multilateration import (
    EPS,
    anchor_window,
    gauss_newton,
    keyposs_station,
    range_residuals,
    top_anchors,
)

#: our decoder's settings, at every heatmap size (``anchors=None``: every pixel of the window)
OURS = dict(
    anchors=None,
    window=OUR_WINDOW,
    station="parabola",
    region=2.0,
    samples_per_pixel=2.5,
    grid_offset=0.0,
    objective="ml",
    amplitude="joint",
    refine=1,
    border_ratio=100.0,
)
# [i, j] = y power i, x power j (flattened i * 3 + j) -> the order (ux, uy, 1) x (ux, uy, 1)
_GN_LAYOUT = [2, 4, 1, 4, 6, 3, 1, 3, 0]
#: most elements of one candidate x anchor tensor; the search runs over chunks of heatmaps that fit
CHUNK_ELEMENTS = 1 << 22


def authors_preset(height: int, width: int) -> dict:
    """The authors' decoder as options of :func:`popos` for an ``height x width`` map.

    Their K and S come from :data:`AUTHORS_SIZES` (square maps); the sampling step is ``tau = H / 128``
    heatmap px (2 input px at a 256 input), so ``samples_per_pixel = 1 / tau`` and ``n = int(S / tau)``
    candidates per axis spanning ``S`` (spacing ``S / (n - 1)``), shifted by ``-tau / 2``, centred on the
    KeyPosS station; objective: sum of absolute range residuals; no amplitude handling; the grid
    optimum is returned as is. Their anchors are the top K of the whole map, ours of a window around the
    argmax large enough to hold them (the same set on a single peak).
    """
    anchors, region = AUTHORS_SIZES.get(height, AUTHORS_OTHER) if height == width else AUTHORS_OTHER
    tau = height / 128
    return dict(
        anchors=anchors,
        window=anchor_window(anchors),
        station="keyposs",
        region=region,
        samples_per_pixel=1 / tau,
        grid_offset=-tau / 2,
        objective="l1",
        amplitude="none",
        refine=0,
        border_ratio=0.0,
    )


#: preset name -> ``fn(height, width) -> options``; options given to :func:`popos` override these
PRESETS = {"popos": lambda height, width: dict(OURS), "authors": authors_preset}  # noqa: ARG005


def default_anchors(heatmap_size: int) -> int:
    """Anchors of our decoder at a square ``heatmap_size``: every pixel of its window, ``min(9, size)^2``.

    >>> default_anchors(64), default_anchors(4)
    (81, 16)
    """
    return our_anchors(check_int("heatmap_size", heatmap_size, 1))


def parabola_station(maps: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Per axis, the vertex of the parabola through the log values of three pixels at the argmax ``(x, y)``.

    ``maps [B, H, W]``, integer argmax ``[B]`` each -> ``[B, 2]`` heatmap px. The three pixels are the
    argmax and its two neighbours along the axis (shifted inward at the border), so the result is exact
    for any Gaussian, of any amplitude, and takes a handful of operations. Where the parabola does not
    open downward, its vertex is more than a pixel from the argmax, or the map is narrower than 3 px,
    that axis keeps the argmax.
    """
    n, height, width = maps.shape
    flat = maps.reshape(n, -1)

    def vertex(pos: Tensor, size: int, stride: int, base: Tensor) -> Tensor:
        if size < 3:
            return pos.float()
        c = pos.clamp(1, size - 2)
        idx = (base + c * stride)[:, None] + stride * torch.tensor([-1, 0, 1], device=maps.device)
        logs = torch.log(flat.gather(1, idx).float().clamp_min(EPS))
        curvature = logs[:, 0] - 2 * logs[:, 1] + logs[:, 2]
        v = c + 0.5 * (logs[:, 0] - logs[:, 2]) / torch.where(curvature < 0, curvature, -1.0)
        return torch.where((curvature < 0) & ((v - pos).abs() <= 1), v, pos.float())

    return torch.stack([vertex(x, width, 1, y * width), vertex(y, height, width, x)], -1)


def _chunks(n: int, per_item: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(per_item, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _grid(region: float, samples_per_pixel: float, offset: float, device: torch.device) -> Tensor:
    """Candidate offsets along one axis: ``int(region * samples_per_pixel)`` points spanning ``region``."""
    n = max(1, math.floor(region * samples_per_pixel + 1e-9))
    steps = torch.linspace(-region / 2, region / 2, n, device=device) if n > 1 else torch.zeros(1, device=device)
    return steps + offset


def _gaussians(coords: Tensor, centres: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """``u = coords - centre`` and ``exp(-u^2 / 2 sigma^2)``, both ``[B, 2, ..., w]``, for pixel coordinates
    ``[B, 2, w]`` and centres ``[B, 2, ...]`` (axis 1: x, y)."""
    u = coords.reshape(*coords.shape[:2], *([1] * (centres.ndim - 2)), -1) - centres[..., None]
    return u, torch.exp(u * u * (-0.5 / sigma**2))


class _Window:
    """Pixels of a square window around each peak, for the separable ``"ml"`` objective.

    ``values [B, w, w]`` float32, pixel coordinates ``coords [B, 2, w]`` (x of the columns, y of the rows)
    and the pixels used: all, or a ``mask [B, w, w]`` (1 on anchors), or a separable mask given by ``axes
    [B, 2, w]`` (0 on left-out columns, then rows). The unit Gaussian at ``p`` is ``g = gy(y) gx(x)``, so
    sums of ``g^2`` over a window without ``mask`` factor into sums over rows and columns.
    """

    def __init__(self, values: Tensor, coords: Tensor, mask: Tensor | None = None, axes: Tensor | None = None):
        if axes is not None:
            mask = axes[:, 1, :, None] * axes[:, 0, None, :]
        self.values, self.coords, self.mask, self.axes = values, coords, mask, axes
        self.weighted = values if mask is None else values * mask
        self.energy = (self.weighted * values).sum((1, 2))

    @classmethod
    def around(cls, maps: Tensor, centre_x: Tensor, centre_y: Tensor, side: int, anchors: int | None) -> _Window:
        """The ``side``-wide window of ``maps [B, H, W]`` around integer ``(centre_x, centre_y) [B]`` (cut to
        the map, shifted to stay inside it); ``anchors``: only the largest pixels are used (``None``: all)."""
        side = min(side, *maps.shape[1:])
        values, x0, y0 = window(maps, centre_x, centre_y, side)
        n = values.shape[0]
        coords = (torch.stack([x0, y0], 1)[:, :, None] + torch.arange(side, device=maps.device)).float()
        mask = None
        if anchors is not None and anchors < side * side:
            top = values.reshape(n, -1).topk(anchors, dim=-1).indices
            mask = torch.zeros(n, side * side, device=maps.device).scatter_(1, top, 1.0).reshape(values.shape)
        return cls(values, coords, mask)

    def grid_best(self, sl: slice, centres: Tensor, sigma: float, joint: bool) -> tuple[Tensor, Tensor]:
        """The candidate ``(x_j, y_i)`` of least ML cost for ``centres [b, 2, n]`` (first in row-major order on
        ties): its index ``i * n + j`` and its least-squares amplitude ``sum h g / sum g^2``, two ``[b]``."""
        _, g = _gaussians(self.coords[sl], centres, sigma)  # [b, 2, n, w]
        hg = torch.einsum("biy,byx,bjx->bij", g[:, 1], self.weighted[sl], g[:, 0])  # sum of h g over anchors
        if self.mask is None or self.axes is not None:
            sq = (g * g if self.axes is None else g * g * self.axes[sl, :, None]).sum(-1)
            gg = sq[:, 1, :, None] * sq[:, 0, None, :]
        else:
            gg = torch.einsum("biy,byx,bjx->bij", g[:, 1] ** 2, self.mask[sl], g[:, 0] ** 2)
        gg = gg.clamp_min(1e-30)
        # with the best amplitude A = hg / gg (a negative correlation is the worst fit), or with A = 1
        score = -(hg.clamp_min(0) ** 2) / gg if joint else gg - 2 * hg
        best = score.flatten(1).argmin(-1, keepdim=True)
        return best[:, 0], (hg / gg).flatten(1).gather(1, best)[:, 0]

    def moments(self, p: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """Sums over the anchors at points ``p [B, 2]``, with ``u = pixel - p`` and ``g`` the unit Gaussian
        at ``p``: ``[B, 3]`` of ``h g (ux, uy, 1)`` and ``[B, 3, 3]`` of ``g^2 (ux, uy, 1) (ux, uy, 1)^T``
        (the Gauss-Newton matrix of ``A g`` up to the factors of ``A``)."""
        u, g = _gaussians(self.coords, p, sigma)  # [B, 2, w]
        # h g summed over rows (a function of x) and over columns (of y), without the [B, w, w] product
        over_rows = torch.bmm(g[:, 1, None, :], self.weighted)[:, 0] * g[:, 0]
        over_columns = torch.bmm(self.weighted, g[:, 0, :, None])[:, :, 0] * g[:, 1]
        marginals = torch.stack([over_rows, over_columns], 1)
        hgv = torch.cat([(marginals * u).sum(-1), marginals[:, 0].sum(-1, keepdim=True)], -1)
        g2 = g * g if self.axes is None else g * g * self.axes
        g2u = g2 * u
        if self.mask is None or self.axes is not None:  # sum g^2 uy^i ux^j = (sum gy^2 uy^i)(sum gx^2 ux^j)
            sq = torch.stack([g2.sum(-1), g2u.sum(-1), (g2u * u).sum(-1)], 2)  # [B, 2, 3]: g^2 (1, u, u^2)
            sums = sq[:, 1, :, None] * sq[:, 0, None, :]
        else:
            powers = torch.stack([g2, g2u, g2u * u], 2)  # [B, 2, 3, w]
            sums = torch.einsum("biy,byx,bjx->bij", powers[:, 1], self.mask, powers[:, 0])
        return hgv, sums.reshape(-1, 9)[:, _GN_LAYOUT].reshape(-1, 3, 3)

    def residuals(self, theta: Tensor, sigma: float) -> Tensor:
        """``h - A g`` at every window pixel for ``theta [B, 3] = (x, y, A)``: ``[B, w, w]``."""
        _, g = _gaussians(self.coords, theta[:, :2], sigma)
        return self.values - theta[:, 2, None, None] * g[:, 1, :, None] * g[:, 0, None, :]

    def evaluate(self, sigma: float):
        """Least-squares form of the ML objective in ``theta = (x, y, A)`` for :func:`gauss_newton`."""
        scale = torch.tensor([1 / sigma**2, 1 / sigma**2, 0.0], device=self.values.device)
        unit = torch.tensor([0.0, 0.0, 1.0], device=self.values.device)

        def evaluate(theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            hgv, sums = self.moments(theta[:, :2], sigma)
            a = theta[:, 2:]
            # Jacobian of the model A g: (A g ux / s^2, A g uy / s^2, g) = d * g (ux, uy, 1)
            d = a * scale + unit
            jtj = sums * d[:, :, None] * d[:, None, :]
            jtr = d * (a * sums[:, 2] - hgv)
            cost = (a * (a * sums[:, 2, 2:] - 2 * hgv[:, 2:]))[:, 0] + self.energy
            return cost, jtj, jtr

        return evaluate


def _line_deletion_ratio(win: _Window, theta: Tensor, present: Tensor, sigma: float, free: tuple[bool, ...]) -> Tensor:
    """The statistic of :func:`_drop_border_line`, linearised: one Gauss-Newton step from ``theta [B, 3]``
    stands for the refit without each line, so only sums over the lines are needed beyond the full fit's.
    Lines: the window's first and last column, first and last row; ``present [B, 4]`` marks those on the
    map border. Returns ``[B, 4]`` (0 where not present)."""
    cost, jtj, jtr = win.evaluate(sigma)(theta)  # over the whole window: sum r^2, J^T J, -J^T r
    u, g = _gaussians(win.coords, theta[:, :2], sigma)  # [B, 2, w]
    side = u.shape[-1]

    def along(t: Tensor) -> tuple[Tensor, Tensor]:  # [B, 2, w] (x, y) -> [B, 4, w] of x, of y along the lines
        ends = torch.stack([t[:, :, 0], t[:, :, -1]], 1)[..., None].expand(-1, 2, 2, side)  # [B, end, axis, w]
        x = torch.cat([ends[:, :, 0], t[:, None, 0].expand(-1, 2, side)], 1)
        y = torch.cat([t[:, None, 1].expand(-1, 2, side), ends[:, :, 1]], 1)
        return x, y

    (ux, uy), (gx, gy) = along(u), along(g)
    g_line = gx * gy
    values, used = win.values, torch.ones_like(win.values) if win.mask is None else win.mask
    slices = [(slice(None), slice(None), 0), (slice(None), slice(None), -1), (slice(None), 0), (slice(None), -1)]
    h_line = torch.stack([values[s] for s in slices], 1)
    used_line = torch.stack([used[s] for s in slices], 1) * present[..., None]
    a = theta[:, 2, None, None]
    r_line = (h_line - a * g_line) * used_line
    # the line's Jacobian columns (x, y, A), then the normal equations without the line, entry by entry
    # (a fixed parameter gets an identity row, so a zero step); a 3 x 3 solve by cofactors
    ga = g_line * used_line
    jx, jy, ja = ga * ux * (a / sigma**2), ga * uy * (a / sigma**2), ga * free[2]
    jx, jy = jx * free[0], jy * free[1]

    def rest(i: int, j: int, line_sum: Tensor) -> Tensor:
        return jtj[:, i, j, None] - line_sum.sum(-1)

    hxx, hxy, hyy = rest(0, 0, jx * jx), rest(0, 1, jx * jy), rest(1, 1, jy * jy)
    hxa, hya, haa = (rest(0, 2, jx * ja), rest(1, 2, jy * ja), rest(2, 2, ja * ja)) if free[2] else (0, 0, 1)
    gx, gy, gz = (-jtr[:, i, None] - (j * r_line).sum(-1) for i, j in ((0, jx), (1, jy), (2, ja)))
    gz = gz * free[2]
    c00, c01, c02 = hyy * haa - hya * hya, hxa * hya - hxy * haa, hxy * hya - hyy * hxa
    c11, c12, c22 = hxx * haa - hxa * hxa, hxy * hxa - hxx * hya, hxx * hyy - hxy * hxy
    det = hxx * c00 + hxy * c01 + hxa * c02
    det = torch.where(det > 0, det, torch.inf)  # singular: no step
    sx, sy = (c00 * gx + c01 * gy + c02 * gz) / det, (c01 * gx + c11 * gy + c12 * gz) / det
    sz = (c02 * gx + c12 * gy + c22 * gz) / det
    predicted = (r_line - jx * sx[..., None] - jy * sy[..., None] - ja * sz[..., None]) * used_line
    count = used_line.sum(-1)
    rest_ss = cost[:, None] - (r_line**2).sum(-1) - (gx * sx + gy * sy + gz * sz)
    rest_var = rest_ss.clamp_min(0) / (used.sum((1, 2))[:, None] - count - 3).clamp_min(1)
    line_ms = (predicted**2).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, line_ms / rest_var.clamp_min(1e-30), 0.0)


def _drop_border_line(
    win: _Window, theta: Tensor, height: int, width: int, sigma: float, ratio: float, free: tuple[bool, bool, bool]
) -> Tensor:
    """Refit without a map-border line of the window where that line disagrees with the rest of the peak.

    Border pixels are the least trustworthy: a flip test that averages heatmaps fills the column its
    mirror image does not cover with a copy of its neighbour (mmpose's ``shift_heatmap``), and padding
    distorts network outputs there. A least-squares fit follows such a line, and on small maps (a 4 x 4
    map is a quarter border column) it moves far. For every window ``win`` touching the border of the
    ``height x width`` map, each border line (row or column) of the map inside the window is left out in
    turn and ``theta [B, 3] = (x, y, A)`` refitted (3 Gauss-Newton steps on the parameters marked ``free``).
    The line is an outlier when its mean squared residual under the fit without it exceeds ``ratio`` times
    the residual variance of the other pixels (plus a floor of ``1e-4 A`` RMS) and at least 6 pixels
    remain; the fit without the most discordant line is kept. Returns ``[B, 3]``. Only lines whose
    linearised statistic (:func:`_line_deletion_ratio`) reaches a tenth of ``ratio`` are refitted: under
    pixel noise almost none, so the test costs a few sums over the border lines.
    """
    n = win.values.shape[0]
    cx, cy = win.coords[:, 0], win.coords[:, 1]
    lines = torch.stack([cx == 0, cx == width - 1, cy == 0, cy == height - 1], 1)  # [B, 4, w]: on the line
    near = lines.any(-1).any(-1).nonzero(as_tuple=True)[0]  # windows that touch the border
    if near.numel() == 0:
        return theta
    mask = None if win.mask is None else win.mask[near]
    statistic = _line_deletion_ratio(_Window(win.values[near], win.coords[near], mask), theta[near],
                                     lines[near].any(-1), sigma, free)  # fmt: skip
    which, line = (statistic > 0.1 * ratio).nonzero(as_tuple=True)
    if which.numel() == 0:
        return theta
    which = near[which]
    axes = torch.ones(which.numel(), 2, win.values.shape[-1], device=theta.device)
    axes[torch.arange(which.numel(), device=theta.device), line // 2] = (~lines[which, line]).float()
    out = 1 - axes[:, 1, :, None] * axes[:, 0, None, :]
    if win.mask is None:
        sub = _Window(win.values[which], win.coords[which], axes=axes)
    else:
        sub = _Window(win.values[which], win.coords[which], mask=win.mask[which] * (1 - out))
    keep = sub.mask
    fit = gauss_newton(sub.evaluate(sigma), theta[which], 3, free=free, slack=1e-6 * sub.energy)
    r2 = sub.residuals(fit, sigma) ** 2
    line_ms = (r2 * out).sum((1, 2)) / out.sum((1, 2))
    rest_var = (r2 * keep).sum((1, 2)) / (keep.sum((1, 2)) - 3).clamp_min(1)
    excess = line_ms - ratio * rest_var - (1e-4 * fit[:, 2]) ** 2
    excess = torch.where(keep.sum((1, 2)) >= 6, excess, 0.0)  # too few pixels left to judge the line
    # per heatmap, the line most above its threshold (relative excess), and which refit that is
    score = torch.zeros(n, 4, device=theta.device)
    score[which, line] = excess.clamp_min(0) / line_ms.clamp_min(1e-30)
    refit = torch.zeros(n, 4, dtype=torch.long, device=theta.device)
    refit[which, line] = torch.arange(which.numel(), device=theta.device)
    pick = refit.gather(1, score.argmax(1, keepdim=True))[:, 0]
    return torch.where((score.amax(1) > 0)[:, None], fit[pick], theta)


def _range_grid_scores(anchors: Tensor, d2: Tensor, cx: Tensor, cy: Tensor, objective: str, joint: bool) -> Tensor:
    """Range-equation cost of every candidate ``(cx[j], cy[i])``: ``[b, n_y, n_x]`` (see :func:`range_residuals`)."""
    if objective == "l1":
        return _l1_costs(_planes(anchors, d2)[:, None, None], cx[:, None, :], cy[:, :, None])
    rho2 = (anchors[:, None, None, :, 1] - cy[:, :, None, None]) ** 2 + (
        anchors[:, None, None, :, 0] - cx[:, None, :, None]
    ) ** 2  # [b, n_y, n_x, K]
    r = rho2 - d2[:, None, None]
    if joint:  # the best common offset c is the mean residual
        r = r - r.mean(-1, keepdim=True)
    return (r**2).sum(-1)


#: most cells per heatmap that the ``"l1"`` search (:func:`_l1_search`) keeps at a level; heatmaps that
#: need more (rare: 1 of the 5 x 3136 benchmark heatmaps) go to the brute force
L1_CELLS = 32


def _planes(anchors: Tensor, d2: Tensor) -> Tensor:
    """Anchors ``[b, K, 2]`` and squared ranges ``[b, K]`` -> ``[b, 3, K]``: anchor x, anchor y, range."""
    return torch.stack([anchors[..., 0], anchors[..., 1], d2.clamp_min(0).sqrt()], 1)


def _l1_costs(planes: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``sum_k | |a_k - (x, y)| - d_k |`` for :func:`_planes` ``[..., 3, K]`` and points ``x, y`` that broadcast
    with them over ``...``: ``[...]``. Every ``"l1"`` cost goes through here, so equal points give equal bits."""
    ax, ay, d = planes.unbind(-2)
    rho = (ay - y[..., None]).square_() + (ax - x[..., None]).square_()
    return rho.sqrt_().sub_(d).abs_().sum(-1)


def _l1_bounds(planes: Tensor, x: Tensor, y: Tensor, half: Tensor, work: Tensor) -> tuple[Tensor, Tensor]:
    """Lower bounds of the ``"l1"`` cost over the squares of half-side ``half`` centred on ``(x[b], y[a])``, and
    the cost at those centres: two ``[A, B, M]``, for anchors ``planes [3, K, M]`` (anchors first: the
    elementwise work runs along ``M``) and ``x [B, 1, M]``, ``y [A, 1, M]`` (or broadcast over ``M``).
    ``work``: float32 scratch of at least ``2 A B K M`` elements (fresh memory costs more than the arithmetic).

    Each term ``|rho_k - d_k|`` is at least ``s_k (rho_k - d_k)`` with ``s_k`` its sign at the centre
    ``c``. For ``s_k = 1`` that is convex, so above its tangent at ``c``; for ``s_k = -1``,
    ``rho_k(c + e) <= rho_k(c) + u_k . e + |e|^2 / (2 rho_k(c))`` (``u_k`` the unit vector from the
    anchor). Summed: ``cost(c) + g . e - q |e|^2`` with ``q = sum_{s_k = -1} 1 / (2 rho_k)``, whose minimum
    over the square is above ``cost(c) - (|g_x| + |g_y|) half - 2 q half^2``. A centre on an anchor gives
    NaN (no bound).
    """
    ax, ay, d = planes
    vx, vy = x - ax, (y - ay)[:, None]
    shape = (len(vy), len(vx), *d.shape)
    w, e = work[: 2 * math.prod(shape)].view(2, *shape)
    torch.addcmul(vy * vy, vx, vx, out=w).sqrt_()  # rho_k
    torch.sub(w, d, out=e)
    w.reciprocal_().copysign_(e)  # s_k / rho_k
    cost = e.abs_().sum(2)
    slope = torch.mul(w, vx, out=e).sum(2).abs_() + torch.mul(w, vy, out=e).sum(2).abs_()
    return cost - slope * half + w.clamp_max_(0).sum(2) * half * half, cost  # that sum is -2 q


def _l1_levels(n: int) -> list[int]:
    """Cell sides of the ``"l1"`` search on an ``n x n`` grid, halved at each level down to 2: the first is
    the largest power of two that divides ``n`` into at least 4 cells (``[16, 8, 4, 2]`` for 64,
    ``[8, 4, 2]`` for 32 and 48); ``[]`` for odd ``n`` or ``n < 8``."""
    side = n & -n
    while side > 1 and n // side < 4:
        side //= 2
    return [side >> i for i in range(side.bit_length() - 1)]


def _l1_search(anchors: Tensor, d2: Tensor, centre: Tensor, steps: Tensor) -> Tensor:
    """Index of the first best candidate of the ``"l1"`` grid search, row-major, ``[B]`` int64: the brute-force
    argmin of :func:`_range_grid_scores`, bit for bit, for a fraction of its work.

    Anchors ``[B, K, 2]``, squared ranges ``[B, K]``, grid centres ``centre [B, 2]`` and offsets ``steps [n]``
    (candidate ``(i, j)`` at ``centre + (steps[j], steps[i])``) with :func:`_l1_levels` ``(n)`` not empty.
    Branch and bound: the grid is cut into square cells (sides from :func:`_l1_levels`); at each level the
    cells whose lower bound (:func:`_l1_bounds`) exceeds the least candidate cost seen so far, plus a float32
    rounding margin, are dropped and the others split in four, down to single candidates, which are
    scored by :func:`_l1_costs` like the brute force. Candidates in dropped cells cost strictly more
    than the best, so the first best is the brute force's. Heatmaps that keep more than :data:`L1_CELLS`
    cells at a level, or meet a NaN cost, go to the brute force. Memory: as the brute force's, with at
    most ``4 L1_CELLS`` cells per heatmap in place of its ``n^2`` candidates.
    """
    n, k = steps.numel(), anchors.shape[1]
    cells = (n // _l1_levels(n)[0]) ** 2
    best = torch.cat([_l1_search_chunk(anchors[sl], d2[sl], centre[sl], steps)
                      for sl in _chunks(len(anchors), max(cells, 4 * L1_CELLS) * k)])  # fmt: skip
    fail = (best < 0).nonzero()[:, 0]
    for sl in _chunks(fail.numel(), n * n * k):
        rows = fail[sl]
        cx, cy = (centre[rows, :, None] + steps).unbind(1)
        best[rows] = _range_grid_scores(anchors[rows], d2[rows], cx, cy, "l1", False).flatten(1).argmin(-1)
    return best


def _l1_search_chunk(anchors: Tensor, d2: Tensor, centre: Tensor, steps: Tensor) -> Tensor:
    """:func:`_l1_search` on one chunk of heatmaps, ``-1`` where it needs the brute force."""
    b, k = d2.shape
    n = steps.numel()
    dev = d2.device
    planes = _planes(anchors, d2)
    cx, cy = (centre[:, :, None] + steps).unbind(1)  # the brute force's candidates, to the bit
    # for the bounds: [3 K, b], anchors relative to the centre, heatmaps last; the candidates are then off
    # their offsets by the float32 rounding of cx, cy, which the squares' half-side covers (slack)
    rel = planes - torch.cat([centre, torch.zeros_like(centre[:, :1])], 1)[:, :, None]
    rel = rel.permute(1, 2, 0).reshape(3 * k, b)
    slack = 1e-6 * (centre.abs().max() + steps.abs().max() + 1)
    scale = rel.view(3, k, b).abs().sum(0).amax(0) + 2 * steps.abs().max()  # bounds every |rho_k - d_k|
    margin = 1e-6 * k * k * scale  # > float32 rounding of a bound and a cost, sums of k such terms
    upper = torch.full((b,), math.inf, device=dev)
    around = torch.tensor([-1, 0], device=dev)
    levels = _l1_levels(n)
    split = n // levels[0]
    work = torch.empty(2 * max(split**2, 4 * L1_CELLS) * k * b, device=dev)  # one scratch for every level
    row = torch.arange(b, device=dev)  # the cells kept: heatmap, cell row i and column j (at first, the grid)
    i = j = torch.zeros_like(row)
    for side in [*levels, 1]:
        if row.numel() == 0:
            return torch.full((b,), -1, device=dev)
        sub = torch.arange(split, device=dev)[:, None]
        i, j = i * split + sub, j * split + sub  # [split, cells]: the rows and columns of their children
        split = 2
        if side == 1:
            break
        block = steps.view(-1, side)
        mid = 0.5 * (block[:, 0] + block[:, -1])
        half = 0.5 * (block[:, -1] - block[:, 0]).max() + slack
        x, y = (mid.index_select(0, ij.flatten()).view(len(ij), 1, -1) for ij in (j, i))
        bound, cost = _l1_bounds(rel.index_select(1, row).view(3, k, -1), x, y, half, work)  # [rows i, cols j, cells]
        row, i, j = row.expand_as(cost).flatten(), i[:, None].expand_as(cost).flatten(), j.expand_as(cost).flatten()
        # the 2 x 2 candidates at the centre of each heatmap's least-cost cell bound its best cost
        pick = _least(cost.flatten(), row, b, torch.arange(row.numel(), device=dev))[1].clamp_max(row.numel() - 1)
        near_x, near_y = ((ij.index_select(0, pick)[:, None] * side + side // 2 + around) for ij in (j, i))
        near = _l1_costs(planes[:, None, None], cx.gather(1, near_x)[:, None], cy.gather(1, near_y)[:, :, None])
        upper = torch.minimum(upper, near.flatten(1).amin(1))
        keep = ~(bound.flatten() > (upper + margin).index_select(0, row))  # NaN bounds are kept
        keep &= (torch.bincount(row, keep.float(), minlength=b) <= L1_CELLS).index_select(0, row)
        kept = keep.nonzero()[:, 0]
        row, i, j = row.index_select(0, kept), i.index_select(0, kept), j.index_select(0, kept)
    x, y = (c.flatten().index_select(0, (row * n + ij).flatten()).view(2, -1) for c, ij in ((cx, j), (cy, i)))
    cost = _l1_costs(planes.flatten(1).index_select(0, row).view(1, 1, -1, 3, k), x[None], y[:, None])  # [2, 2, cells]
    low, best = _least(cost.flatten(), row.repeat(4), b, (i[:, None] * n + j).flatten())
    return torch.where(torch.isfinite(low), best, -1)  # no candidate left, or NaN (amin propagates it)


def _least(values: Tensor, row: Tensor, b: int, key: Tensor) -> tuple[Tensor, Tensor]:
    """Per row ``0..b-1`` of entries ``values [N]`` in rows ``row [N]``: the least value, and the least ``key``
    (int64 ``[N]``) among the entries that have it: two ``[b]`` (``inf`` and the largest int64 for a row
    with no entries)."""
    low = torch.full((b,), math.inf, device=values.device).scatter_reduce_(0, row, values, "amin")
    none = torch.iinfo(torch.int64).max
    tied = torch.where(values == low.index_select(0, row), key, none)
    return low, torch.full((b,), none, device=values.device).scatter_reduce_(0, row, tied, "amin")


def _settings(preset: str, height: int, width: int, given: dict) -> dict:
    """The preset's options for the map size, overridden by the ``given`` ones that are not ``None``; checked."""
    check_choice("preset", preset, tuple(PRESETS))
    s = {**PRESETS[preset](height, width), **{k: v for k, v in given.items() if v is not None}}
    if s["anchors"] is not None:
        check_int("anchors", s["anchors"], 3)
    check_int("window", s["window"], 2)
    check_choice("station", s["station"], ("parabola", "argmax", "keyposs"))
    check_float("region", s["region"], 0.0)
    check_float("samples_per_pixel", s["samples_per_pixel"], 0.0, strict=True)
    check_float("grid_offset", s["grid_offset"], -math.inf)
    check_choice("objective", s["objective"], ("ml", "l2", "l1"))
    check_choice("amplitude", s["amplitude"], ("joint", "none"))
    check_int("refine", s["refine"], 0)
    check_float("border_ratio", s["border_ratio"], 0.0)
    if given.get("border_ratio") and s["objective"] != "ml":
        raise ValueError("border_ratio > 0 needs objective 'ml' (the border-line test refits that objective)")
    if s["objective"] == "l1" and s["amplitude"] == "joint":
        raise ValueError("amplitude='joint' needs objective 'ml' or 'l2' (a range offset has no closed form in l1)")
    return s


@register("popos")
def popos(
    heatmaps: Tensor,
    *,
    sigma: float = 2.0,
    preset: str = "popos",
    anchors: int | None = None,
    window: int | None = None,
    station: str | None = None,
    region: float | None = None,
    samples_per_pixel: float | None = None,
    grid_offset: float | None = None,
    objective: str | None = None,
    amplitude: str | None = None,
    refine: int | None = None,
    border_ratio: float | None = None,
) -> Tensor:
    """POPoS decoding: ``[..., K, H, W] -> [..., K, 2]`` heatmap px (H, W >= 2).

    Options left at ``None`` take the ``preset``'s value (``"popos"``: :data:`OURS`, the same at every
    size; ``"authors"``: :func:`authors_preset`, per size).

    1. ``station``: the grid centre, ``"parabola"`` (ours, :func:`parabola_station`), ``"argmax"`` (the
       paper) or ``"keyposs"`` (the authors' code, :func:`~popos.decoders.multilateration.keyposs_station`).
    2. anchors: the ``anchors`` largest pixels (``None``: all) of a ``window``-wide square around the
       argmax (cut to the map, shifted to stay inside it).
    3. the grid: ``int(region * samples_per_pixel)`` candidates per axis spanning ``region`` heatmap px,
       centred on the station shifted by ``grid_offset`` (both axes); each is scored and the first best
       (row-major) kept.
    4. ``objective``: ``"ml"`` (ours, see the module docstring), ``"l2"`` (the paper's Eq. 3, squared-range
       residuals) or ``"l1"`` (the authors' code, range residuals). ``amplitude="joint"`` solves the
       peak amplitude (pseudo-range offset) per candidate; ``"none"`` assumes a unit peak and clips
       ``h`` to ``[1e-9, 1]`` as the authors do (``"l1"`` supports only ``"none"``).
    5. ``refine`` damped Gauss-Newton steps (:func:`~popos.decoders.multilateration.gauss_newton`) on the
       same objective (``"l1"``: reweighted least squares), keeping the better point.
    6. ``border_ratio`` (``"ml"`` only; 0: off): the border-line test of :func:`_drop_border_line`, which
       refits without a row or column on the map's border whose residuals exceed ``border_ratio`` times
       the others' (a flip test's copied column; costs nothing under noise at the default 100).

    The result is clamped to the map plus one pixel per side; maps with no peak around the argmax
    (:func:`~popos.decoders.base.no_peak`) give the argmax. Memory: the ``"ml"`` search and
    refinement hold a few ``[B, window, window]`` tensors; ``"l1"``/``"l2"`` candidate x anchor tensors
    are cut into chunks of at most :data:`CHUNK_ELEMENTS` elements.

    >>> from popos.codec import encode_heatmaps
    >>> hm = 0.7 * encode_heatmaps(torch.tensor([[30.25, 3.5]]), 32)  # an under-confident peak
    >>> [round(v, 4) for v in popos(hm).flatten().tolist()]
    [30.25, 3.5]
    """
    check_float("sigma", sigma, 0.0, strict=True)
    maps = flat_maps(heatmaps, min_size=2)
    n, height, width = maps.shape
    given = dict(anchors=anchors, window=window, station=station, region=region,
                 samples_per_pixel=samples_per_pixel, grid_offset=grid_offset, objective=objective,
                 amplitude=amplitude, refine=refine, border_ratio=border_ratio)  # fmt: skip
    s = _settings(preset, height, width, given)
    joint = s["amplitude"] == "joint"
    x, y = argmax_xy(maps)
    if s["station"] == "argmax":
        centre = torch.stack([x, y], -1).float()
    elif s["station"] == "parabola":
        centre = parabola_station(maps, x, y)
    else:
        centre = keyposs_station(maps, x, y, sigma)
    steps = _grid(s["region"], s["samples_per_pixel"], s["grid_offset"], maps.device)
    centres = centre[:, :, None] + steps  # [B, 2, n]: candidate columns (x) and rows (y)
    cx, cy = centres[:, 0], centres[:, 1]

    if s["objective"] == "ml":
        win = _Window.around(maps, x, y, s["window"], s["anchors"])
        per_item = steps.numel() * win.values.shape[-1] * 2
        found = [win.grid_best(sl, centres[sl], sigma, joint) for sl in _chunks(n, per_item)]
        best, amplitude = zip(*found, strict=True)
        evaluate = win.evaluate(sigma)
    else:
        k = s["window"] ** 2 if s["anchors"] is None else s["anchors"]
        values, coords = top_anchors(maps, x, y, k, s["window"])
        d2 = -2 * sigma**2 * torch.log(values.clamp_min(EPS)) if joint else distance_maps(values, sigma, EPS, True)
        if s["objective"] == "l1" and _l1_levels(steps.numel()):
            best = [_l1_search(coords, d2, centre, steps)]
        else:
            per_item = steps.numel() ** 2 * coords.shape[1]
            best = [_range_grid_scores(coords[sl], d2[sl], cx[sl], cy[sl], s["objective"], joint).flatten(1).argmin(-1)
                    for sl in _chunks(n, per_item)]  # fmt: skip
        evaluate = range_residuals(coords, d2, s["objective"])
    best = torch.cat(best)  # index of the first best candidate, row-major over (y, x)
    m = steps.numel()
    p = torch.stack([cx.gather(1, (best % m)[:, None])[:, 0], cy.gather(1, (best // m)[:, None])[:, 0]], -1)

    border = s["objective"] == "ml" and s["border_ratio"] > 0
    if s["refine"] or border:
        if s["objective"] == "ml":
            third = torch.cat(amplitude).clamp_min(1e-6) if joint else torch.ones(n, device=p.device)
        else:  # the best offset at p: the mean of d^2 - |a - p|^2 (zero when not solved)
            third = (d2 - ((coords - p[:, None]) ** 2).sum(-1)).mean(-1) * joint
        free = (True, True, joint)
        theta = torch.cat([p, third[:, None]], -1)
        # the ML cost sums moments of size ~energy, so it is only known to float32 rounding of that
        slack = 1e-6 * win.energy if s["objective"] == "ml" else 0.0
        if s["refine"]:
            theta = gauss_newton(evaluate, theta, s["refine"], free=free, slack=slack)
        if border:
            theta = _drop_border_line(win, theta, height, width, sigma, s["border_ratio"], free)
        p = theta[:, :2]
    p = clamp_to_map(p, height, width)
    flat = no_peak(win.values if s["objective"] == "ml" else values)
    return unflatten(torch.where(flat[:, None], torch.stack([x, y], -1).float(), p), heatmaps)
