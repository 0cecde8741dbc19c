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
  ``"l1"``, ``"l2"``) are processed in chunks of at most :data:`~popos.decoders.popos_authors.CHUNK_ELEMENTS`.

``preset="authors"`` sets the options to the authors' released decoder
(:func:`~popos.decoders.popos_authors.authors_preset`; the decoder itself is :mod:`.popos_authors`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from popos.anchors import OUR_WINDOW, our_anchors
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
)
from popos.decoders.border_line import drop_border_line
from popos.decoders.likelihood import PeakWindow
from popos.decoders.multilateration import EPS, gauss_newton, keyposs_station, range_residuals, top_anchors
from popos.decoders.popos_authors import _chunks, _grid, _l1_levels, _l1_search, _range_grid_scores, authors_preset
from popos.decoders.station import parabola_station

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

#: preset name -> ``fn(height, width) -> options``; options given to :func:`popos` override these
PRESETS = {"popos": lambda height, width: dict(OURS), "authors": authors_preset}  # noqa: ARG005


def default_anchors(heatmap_size: int) -> int:
    """Anchors of our decoder at a square ``heatmap_size``: every pixel of its window, ``min(9, size)^2``.

    >>> default_anchors(64), default_anchors(4)
    (81, 16)
    """
    return our_anchors(check_int("heatmap_size", heatmap_size, 1))


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
    6. ``border_ratio`` (``"ml"`` only; 0: off): the border-line test of :func:`drop_border_line`, which
       refits without a row or column on the map's border whose residuals exceed ``border_ratio`` times
       the others' (a flip test's copied column; costs nothing under noise at the default 100).

    The result is clamped to the map plus one pixel per side; maps with no peak around the argmax
    (:func:`~popos.decoders.base.no_peak`) give the argmax. Memory: the ``"ml"`` search and
    refinement hold a few ``[B, window, window]`` tensors; ``"l1"``/``"l2"`` candidate x anchor tensors
    are cut into chunks of at most :data:`~popos.decoders.popos_authors.CHUNK_ELEMENTS` elements.

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
        win = PeakWindow.around(maps, x, y, s["window"], s["anchors"])
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
            theta = drop_border_line(win, theta, height, width, sigma, s["border_ratio"], free)
        p = theta[:, :2]
    p = clamp_to_map(p, height, width)
    flat = no_peak(win.values if s["objective"] == "ml" else values)
    return unflatten(torch.where(flat[:, None], torch.stack([x, y], -1).float(), p), heatmaps)
