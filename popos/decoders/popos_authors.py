"""The authors' POPoS decoder (teslatasy/POPoS, ``keypoints_from_heatmaps_randomsample_lls``), as options of a grid.

``heatmaps [..., K, H, W] -> [..., K, 2]`` float32 ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.

The paper (AAAI 2025, section 3.3) reads the heatmap value at each anchor pixel ``a_i`` as a range,
``d_i^2 = -2 sigma^2 ln h_i``, and picks, from a grid of candidate points around the KeyPosS station,
the one whose ranges best match: the least sum of absolute range residuals ``| |a_i - p| - d_i |``
(objective ``"l1"``). The grid is searched by branch and bound (:func:`_l1_search`), bit for bit the
brute force's choice. Per heatmap side, the anchors K and the search region come from :data:`AUTHORS_SIZES`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from popos.codec import distance_maps
from popos.decoders.base import (
    argmax_xy,
    check_float,
    check_int,
    clamp_to_map,
    flat_maps,
    no_peak,
    register,
    unflatten,
)
from popos.decoders.multilateration import EPS, anchor_window, keyposs_station, top_anchors

#: the authors' anchors K and search region S (heatmap px) per heatmap side (POPoS
#: ``keypoints_from_heatmaps_randomsample_lls``); other sides get :data:`AUTHORS_OTHER`
AUTHORS_SIZES = {64: (30, 8.0), 32: (10, 8.0), 16: (20, 4.0), 8: (15, 3.0), 4: (10, 2.0)}
AUTHORS_OTHER = (30, 8.0)
#: most elements of one candidate x anchor tensor; the search runs over chunks of heatmaps that fit
CHUNK_ELEMENTS = 1 << 22


def authors_preset(height: int, width: int) -> dict:
    """The authors' decoder settings for an ``height x width`` map.

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


def _chunks(n: int, per_item: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(per_item, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _grid(region: float, samples_per_pixel: float, offset: float, device: torch.device) -> Tensor:
    """Candidate offsets along one axis: ``int(region * samples_per_pixel)`` points spanning ``region``."""
    n = max(1, math.floor(region * samples_per_pixel + 1e-9))
    steps = torch.linspace(-region / 2, region / 2, n, device=device) if n > 1 else torch.zeros(1, device=device)
    return steps + offset


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


@register("popos_authors")
def popos_authors(
    heatmaps: Tensor,
    *,
    sigma: float = 2.0,
    anchors: int | None = None,
    region: float | None = None,
    samples_per_pixel: float | None = None,
) -> Tensor:
    """The authors' POPoS decoder: ``[..., K, H, W] -> [..., K, 2]`` heatmap px (H, W >= 2).

    Options left at ``None`` take :func:`authors_preset`'s value for the map size. The grid:
    ``int(region * samples_per_pixel)`` candidates per axis spanning ``region`` heatmap px, centred on the
    KeyPosS station shifted by the preset's ``grid_offset``; the ``anchors`` largest pixels of a window
    around the argmax; the first candidate (row-major) of least ``"l1"`` cost. Maps with no peak around
    the argmax (:func:`~popos.decoders.base.no_peak`) give the argmax.
    """
    check_float("sigma", sigma, 0.0, strict=True)
    maps = flat_maps(heatmaps, min_size=2)
    n, height, width = maps.shape
    s = authors_preset(height, width)
    given = dict(anchors=anchors, region=region, samples_per_pixel=samples_per_pixel)
    s.update({k: v for k, v in given.items() if v is not None})
    check_int("anchors", s["anchors"], 3)
    check_float("region", s["region"], 0.0)
    check_float("samples_per_pixel", s["samples_per_pixel"], 0.0, strict=True)
    x, y = argmax_xy(maps)
    centre = keyposs_station(maps, x, y, sigma)
    steps = _grid(s["region"], s["samples_per_pixel"], s["grid_offset"], maps.device)
    cx, cy = (centre[:, :, None] + steps).unbind(1)  # [B, n]: candidate columns (x) and rows (y)
    values, coords = top_anchors(maps, x, y, s["anchors"], s["window"])
    d2 = distance_maps(values, sigma, EPS, True)
    if _l1_levels(steps.numel()):
        best = _l1_search(coords, d2, centre, steps)
    else:
        per_item = steps.numel() ** 2 * coords.shape[1]
        best = torch.cat([_range_grid_scores(coords[sl], d2[sl], cx[sl], cy[sl], "l1", False).flatten(1).argmin(-1)
                          for sl in _chunks(n, per_item)])  # fmt: skip
    m = steps.numel()
    p = torch.stack([cx.gather(1, (best % m)[:, None])[:, 0], cy.gather(1, (best // m)[:, None])[:, 0]], -1)
    p = clamp_to_map(p, height, width)
    return unflatten(torch.where(no_peak(values)[:, None], torch.stack([x, y], -1).float(), p), heatmaps)
