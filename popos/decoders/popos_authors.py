"""The authors' POPoS decoder (teslatasy/POPoS, ``keypoints_from_heatmaps_randomsample_lls``), bit for bit.

``heatmaps [..., K, H, W] -> [..., K, 2]`` float32 ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.

The paper (AAAI 2025, section 3.3) reads the heatmap value at each anchor pixel ``a_i`` as a range,
``d_i^2 = -2 sigma^2 ln h_i``, and picks, from a grid of candidate points around the KeyPosS station,
the one whose ranges best match: the least sum of absolute range residuals ``| |a_i - p| - d_i |``
(objective ``"l1"``). :func:`popos_authors` repeats their NumPy code's float32/float64 operations (station
of :mod:`.multilateration`, float64 grid and costs, summed in NumPy's order), so it returns their float32
coordinates to the bit; only the order of equal heatmap values among the top K (NumPy's unstable sort)
is not reproduced. The grid is searched by branch and bound (:func:`_l1_search`). Per heatmap side, the
anchors K and the search region come from :data:`popos.anchors.AUTHORS_SIZES`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from popos.anchors import AUTHORS_OTHER, AUTHORS_SIZES
from popos.decoders.base import check_float, check_int, flat_maps, no_peak, register, unflatten
from popos.decoders.multilateration import (
    authors_argmax,
    authors_ranges,
    authors_station,
    authors_top_anchors,
)

#: most elements of one candidate x anchor tensor; the search runs over chunks of heatmaps that fit
CHUNK_ELEMENTS = 1 << 22


def _chunks(n: int, per_item: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(per_item, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


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
    b = len(d2)
    found = _l1_prune(anchors, d2, centre, steps)
    if found is None:
        return torch.full((b,), -1, device=d2.device)
    row, key, cost, _ = found
    low, best = _least(cost, row, b, key)
    return torch.where(torch.isfinite(low), best, -1)  # no candidate left, or NaN (amin propagates it)


def _l1_prune(
    anchors: Tensor, d2: Tensor, centre: Tensor, steps: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """The branch and bound of :func:`_l1_search` on one chunk of ``b`` heatmaps, down to the candidates it
    keeps: their heatmap ``row``, index ``key`` (``i * n + j``) and float32 ``cost`` (three ``[M]``), and
    each heatmap's rounding ``margin [b]``; every candidate whose cost is within ``margin`` of its
    heatmap's least is among them. A heatmap over the cell budget keeps none; ``None``: none kept any."""
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
            return None
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
    return row.repeat(4), (i[:, None] * n + j).flatten(), cost.flatten(), margin


def _least(values: Tensor, row: Tensor, b: int, key: Tensor) -> tuple[Tensor, Tensor]:
    """Per row ``0..b-1`` of entries ``values [N]`` in rows ``row [N]``: the least value, and the least ``key``
    (int64 ``[N]``) among the entries that have it: two ``[b]`` (``inf`` and the largest int64 for a row
    with no entries; ``low`` in the dtype of ``values``)."""
    low = torch.full((b,), math.inf, dtype=values.dtype, device=values.device).scatter_reduce_(0, row, values, "amin")
    none = torch.iinfo(torch.int64).max
    tied = torch.where(values == low.index_select(0, row), key, none)
    return low, torch.full((b,), none, device=values.device).scatter_reduce_(0, row, tied, "amin")


def numpy_sum(values: Tensor) -> Tensor:
    """Sum over the last dim, rounded as NumPy's ``np.sum`` along a contiguous axis (the authors' costs):
    pairwise, with 8 running partial sums over blocks of up to 128 values. ``[..., n] -> [...]``."""
    n = values.shape[-1]
    if n < 8:
        out = torch.zeros_like(values[..., 0])
        for i in range(n):
            out = out + values[..., i]
        return out
    if n > 128:
        half = n // 2 - (n // 2) % 8
        return numpy_sum(values[..., :half]) + numpy_sum(values[..., half:])
    lanes = values[..., :8].clone()
    whole = n - n % 8
    for i in range(8, whole, 8):
        lanes += values[..., i : i + 8]
    r = lanes.unbind(-1)
    out = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(whole, n):
        out = out + values[..., i]
    return out


def authors_grid(station: Tensor, region: float, tau: float, n: int) -> Tensor:
    """The authors' candidate grid (``random_sample_around_rhomboid``) per axis: float64 ``[B, 2, n]``.

    For each axis of ``station [B, 2]``: ``n`` points from ``(s - region / 2) - tau / 2`` to
    ``(s + region / 2) - tau / 2``, rounded as NumPy's ``linspace`` in float64 (``i * step + start``,
    the last point set to the end). Candidate ``(i, j)`` is ``(x_j, y_i)``.
    """
    s = station.double()
    start, stop = (s - region / 2) - tau / 2, (s + region / 2) - tau / 2
    if n == 1:
        return start[..., None]
    i = torch.arange(n, dtype=torch.float64, device=station.device)
    grid = i * ((stop - start) / (n - 1))[..., None] + start[..., None]
    grid[..., -1] = stop
    return grid


def _exact_l1_costs(anchors: Tensor, d: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The authors' cost ``sum_k | |a_k - (x, y)| - d_k |`` in float64, rounded as theirs, for float64
    anchors ``[b, K, 2]`` and ranges ``[b, K]`` and points ``x, y [b, ...]``: ``[b, ...]``."""
    shape = (len(d),) + (1,) * (x.ndim - 1) + (d.shape[1],)
    ax, ay, d = anchors[..., 0].view(shape), anchors[..., 1].view(shape), d.view(shape)
    rho = ((x[..., None] - ax) ** 2 + (y[..., None] - ay) ** 2).sqrt()
    return numpy_sum((rho - d).abs())


def _authors_choice(anchors: Tensor, d: Tensor, station: Tensor, grid: Tensor, region: float, tau: float) -> Tensor:
    """Index ``i * n + j`` of the first candidate of least :func:`_exact_l1_costs`, ``[B]`` int64.

    Where the grid allows (:func:`_l1_levels`), the float32 branch and bound of :func:`_l1_search` (on the
    float32 grid ``station + offset``, which it covers with its rounding slack) prunes the grid, and the
    candidates it keeps within its rounding margin of the least float32 cost are rescored exactly;
    heatmaps it cannot settle, and other grids, are scored in full.
    """
    b, n = len(d), grid.shape[-1]
    best = torch.full((b,), -1, dtype=torch.long, device=d.device)
    if _l1_levels(n):
        steps = (torch.linspace(-region / 2, region / 2, n, dtype=torch.float64, device=d.device) - tau / 2).float()
        coords, d2 = anchors.float(), d.square().float()
        for sl in _chunks(b, max((n // _l1_levels(n)[0]) ** 2, 4 * L1_CELLS) * d.shape[1]):
            found = _l1_prune(coords[sl], d2[sl], station[sl], steps)
            if found is None:
                continue
            row, key, cost, margin = found
            low = _least(cost, row, len(d2[sl]), key)[0]
            near = (cost <= (low + margin).index_select(0, row)).nonzero()[:, 0]
            row, key = row.index_select(0, near), key.index_select(0, near)
            g = grid[sl].index_select(0, row)
            x, y = g[:, 0].gather(1, (key % n)[:, None])[:, 0], g[:, 1].gather(1, (key // n)[:, None])[:, 0]
            exact = _exact_l1_costs(anchors[sl].index_select(0, row), d[sl].index_select(0, row), x, y)
            low, choice = _least(exact, row, len(d2[sl]), key)
            best[sl] = torch.where(torch.isfinite(low), choice, -1)
    rows = (best < 0).nonzero()[:, 0]
    for sl in _chunks(rows.numel(), n * n * d.shape[1]):
        r = rows[sl]
        g = grid.index_select(0, r)
        cost = _exact_l1_costs(anchors.index_select(0, r), d.index_select(0, r), g[:, 0, None, :], g[:, 1, :, None])
        best[r] = cost.flatten(1).argmin(-1)
    return best


@register("popos_authors")
def popos_authors(
    heatmaps: Tensor,
    *,
    sigma: float = 2.0,
    anchors: int | None = None,
    region: float | None = None,
    samples_per_pixel: float | None = None,
) -> Tensor:
    """The authors' POPoS decoder, bit for bit: ``[..., K, H, W] -> [..., K, 2]`` heatmap px (H, W >= 2).

    Their ``keypoints_from_heatmaps_randomsample_lls`` after mmpose's argmax: the KeyPosS station
    (:func:`~popos.decoders.multilateration.authors_station`), a grid of ``n = int(region / tau)``
    candidates per axis around it (:func:`authors_grid`, ``tau = H / 128`` heatmap px), the ``anchors``
    largest pixels of the whole map with ranges ``d_k`` (float64), and the first candidate of least
    ``sum_k | |a_k - p| - d_k |`` (float64, :func:`_exact_l1_costs`), returned as float32. ``anchors`` and
    ``region`` default to :data:`popos.anchors.AUTHORS_SIZES` for the map height (else :data:`AUTHORS_OTHER`);
    ``samples_per_pixel`` (sweeps) sets ``tau = 1 / samples_per_pixel`` and
    ``n = floor(region * samples_per_pixel)``. No clamping (a point may leave the map, as theirs). Maps with
    no peak among the anchors (:func:`~popos.decoders.base.no_peak`: all values <= 0 or all equal, where
    their result depends on the order of equal values) give the argmax.
    """
    check_float("sigma", sigma, 0.0, strict=True)
    maps = flat_maps(heatmaps, min_size=2)
    height = maps.shape[1]
    k, s = AUTHORS_SIZES.get(height, AUTHORS_OTHER)
    k = check_int("anchors", k if anchors is None else anchors, 3)
    s = check_float("region", s if region is None else region, 0.0)
    if samples_per_pixel is None:
        tau = height / 128
        n = int(s / tau)
    else:
        tau = 1 / check_float("samples_per_pixel", samples_per_pixel, 0.0, strict=True)
        n = math.floor(s * samples_per_pixel + 1e-9)
    top, start = authors_argmax(maps)
    station = authors_station(maps, start, sigma)
    values, coords = authors_top_anchors(maps, k)
    d = authors_ranges(values, sigma)
    grid = authors_grid(station, s, tau, max(n, 1))
    best = _authors_choice(coords, d, station, grid, s, tau)
    m = grid.shape[-1]
    p = torch.stack([grid[:, 0].gather(1, (best % m)[:, None]), grid[:, 1].gather(1, (best // m)[:, None])], -1)[:, 0]
    return unflatten(torch.where(no_peak(values)[:, None], top.double(), p), heatmaps)
