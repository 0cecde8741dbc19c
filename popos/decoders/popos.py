"""POPoS, ours: the maximum-likelihood Gaussian of free amplitude, position and shape around the peak.

``heatmaps [..., K, H, W] -> [..., K, 2]`` float32 ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.

The paper (AAAI 2025, section 3.3) reads the heatmap value at each anchor pixel as a range to the peak,
``d^2 = -2 sigma^2 ln h``, and searches a candidate grid for the point that best satisfies those range
equations, with ``sigma`` and a unit amplitude assumed (the authors' decoder is
:mod:`popos.decoders.popos_authors`). A network's peaks have neither: their amplitude is below 1, their
width differs from the target's, they are elongated along the face contour, sit on a baseline and now
and then share the window with a weaker second peak. Ours keeps the range reading, in its
maximum-likelihood form (the range equations mapped back through the Gaussian are the residuals
``h - A g``, weighted right under i.i.d. pixel noise), and fits what the assumptions fixed
(:mod:`popos.decoders.gaussian_fit`):

* **amplitude and shape**: the model is ``exp(quadratic) (+ baseline)``, a Gaussian of any amplitude,
  centre and covariance; the start, a weighted least-squares fit of ``ln h`` around the argmax, is
  already exact on any clean Gaussian, a few Gauss-Newton steps make it the maximum-likelihood fit;
* **model selection**: ``sigma`` is the prior. Every window is fitted with the width given (3
  parameters: amplitude and position) and with a free covariance on a baseline (7); the larger model is
  taken only where it lowers the residual sum of squares by more than ``shape_test`` times what its 4
  extra parameters would remove from noise (an F test), so under noise on peaks of the assumed width the
  decoder keeps the prior's accuracy;
* **a second peak**: where the residuals of the whole window exceed, by the same kind of F test
  (``window_test``), those of a free-shape fit to the 5 x 5 (then 3 x 3) pixels around the argmax, the
  smaller fit is kept: a second peak lends its mass to the whole window, not to the pixels at the argmax;
* **the border-line test** (:mod:`popos.decoders.border_line`): a map-border row or column that
  disagrees with the rest (a flip test's copied column) is left out of every fit;
* **the whole float32 range**: the window is divided by its maximum before fitting.

Every step runs on the whole batch with masks and fixed iteration counts (the border-line test aside).
For speed, the width-given fit is the separable one of :mod:`popos.decoders.likelihood` (sums over rows
and columns, 3 x 3 systems), and the smaller windows are cut from the fitted window, not from the map.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from popos.anchors import OUR_WINDOW, our_anchors
from popos.decoders import gaussian_fit, likelihood
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
from popos.decoders.base import window as window_around
from popos.decoders.border_line import drop_border_line
from popos.decoders.likelihood import PeakWindow

#: side of the window around the argmax that our decoder fits, heatmap px
WINDOW = OUR_WINDOW
#: the models fitted to the whole window, in the order the selection reads them (each nests the one before)
MODELS = ("width", "baseline")
#: the smaller windows fitted with a free shape beside a second peak, largest first (sides, heatmap px)
NEAR_WINDOWS = (5, 3)
#: pixels of the start fit: within this Chebyshev radius of the argmax (the 5 x 5 around it)
START_RADIUS = 2


def default_anchors(heatmap_size: int) -> int:
    """Pixels our decoder fits at a square ``heatmap_size``: its window, ``min(9, size)^2``.

    >>> default_anchors(64), default_anchors(4)
    (81, 16)
    """
    return our_anchors(check_int("heatmap_size", heatmap_size, 1))


class _Fits:
    """Fits of several models to a window ``values [B, side, side]`` (peak 1, top-left pixel ``(x0, y0)``) around
    each argmax ``(x, y)``, on the pixels of the columns and rows marked in ``keep [B, 2, side]`` (and only those
    within Chebyshev ``radius`` of the argmax, if given): per fit ``[R, B]`` of the centre (heatmap px, ``[R, B,
    2]``), the residual sum of squares (``inf`` where the fit is not a peak), the number of parameters and of
    pixels used."""

    def __init__(
        self,
        values: Tensor,
        x0: Tensor,
        y0: Tensor,
        x: Tensor,
        y: Tensor,
        models: tuple[str, ...],
        *,
        keep: Tensor,
        sigma: float,
        iterations: int,
        start_radius: int,
        radius: int | None = None,
    ):
        n, side, _ = values.shape
        device = values.device
        values = values.flatten(1)
        mono = gaussian_fit.monomials(side, side, device)
        offsets = torch.arange(side, device=device)
        du = (x0 - x)[:, None] + offsets  # [B, side]: each column's and row's offset from the argmax
        dv = (y0 - y)[:, None] + offsets
        near = ((dv.abs() <= start_radius)[:, :, None] & (du.abs() <= start_radius)[:, None, :]).flatten(1)
        keep_u, keep_v = keep[:, 0], keep[:, 1]
        if radius is not None:  # a window shifted at the map's border holds pixels beyond that radius
            keep_u, keep_v = keep_u & (du.abs() <= radius), keep_v & (dv.abs() <= radius)
        used = (keep_v[:, :, None] & keep_u[:, None, :]).flatten(1).float()
        start_weight = values.clamp_min(0).square() * (near & (used > 0))
        r = len(models)
        free = torch.stack([gaussian_fit.free_mask(m, device) for m in models]).repeat_interleave(n, 0)
        prior = torch.tensor([0, 0, 0, -0.5 / sigma**2, 0, -0.5 / sigma**2, 0.0], device=device)
        if r > 1:
            values, used, start_weight = values.repeat(r, 1), used.repeat(r, 1), start_weight.repeat(r, 1)
        c = gaussian_fit.log_quadratic_start(values, start_weight, prior.expand(r * n, 7), free, mono)
        c, cost = gaussian_fit.gauss_newton_fit(values, used, c, free, mono, iterations)
        centre, is_peak = gaussian_fit.centre_of(c)
        self.centre = torch.stack([x0, y0], -1).float() + side // 2 + centre.view(r, n, 2)
        self.cost = torch.where(is_peak, cost, torch.inf).view(r, n)
        self.dof = free.sum(-1).view(r, n).float()
        self.pixels = used.sum(-1).view(r, n)


def _select(cost: Tensor, dof: Tensor, pixels: Tensor, whole: int, shape_test: float, window_test: float) -> Tensor:
    """Index of the fit kept per map, ``[B]`` int64, from the fits' residual sums of squares ``cost``,
    parameter counts ``dof`` and pixel counts ``pixels``, all ``[R, B]``: the first ``whole`` on the whole
    window (nested models, smallest first), then those on smaller windows (largest first).

    First the model on the whole window: a larger one replaces the current where
    ``((cost_cur - cost_new) / extra parameters) / (cost_new / (pixels - dof_new)) > shape_test``. Then the
    window shrinks to the next radius where ``((cost_cur - cost_small) / pixels left out) / (cost_small /
    (pixels_small - dof_small)) > window_test`` and at least 8 pixels are left out (fewer say too little
    about a second peak, and a 4 x 4 map would otherwise shrink under noise).
    """
    n = cost.shape[1]
    choice = torch.zeros(n, dtype=torch.long, device=cost.device)
    for k in range(1, whole):
        cur, cur_dof = cost.gather(0, choice[None])[0], dof.gather(0, choice[None])[0]
        noise = cost[k] / (pixels[k] - dof[k]).clamp_min(1)
        f = (cur - cost[k]) / (dof[k] - cur_dof).clamp_min(1) / noise.clamp_min(1e-30)
        choice = torch.where(f > shape_test, k, choice)
    shrinking = torch.full((n,), math.isfinite(shape_test), device=cost.device)  # the smaller fits' shape is free
    for k in range(whole, len(cost)):
        cur, cur_pixels = cost.gather(0, choice[None])[0], pixels.gather(0, choice[None])[0]
        left_out = cur_pixels - pixels[k]
        noise = cost[k] / (pixels[k] - dof[k]).clamp_min(1)
        f = (cur - cost[k]) / left_out.clamp_min(1) / noise.clamp_min(1e-30)
        shrinking = shrinking & (f > window_test) & (left_out >= 8) & (pixels[k] > dof[k])
        choice = torch.where(shrinking, k, choice)
    return choice


@register("popos")
def popos(
    heatmaps: Tensor,
    *,
    sigma: float = 2.0,
    window: int = WINDOW,
    iterations: int = 3,
    shape_test: float = 10.0,
    window_test: float = 10.0,
    border_ratio: float = 100.0,
) -> Tensor:
    """POPoS decoding, ours: ``[..., K, H, W] -> [..., K, 2]`` heatmap px (H, W >= 2).

    ``sigma`` (heatmap px): the peak width expected, the prior of the model selection. ``window``: side of
    the square window around the argmax that is fitted (cut to the map, shifted to stay inside it).
    ``iterations``: Gauss-Newton steps of every fit. ``shape_test``: the F-test threshold for a free
    covariance and a baseline (``inf``: the width is always ``sigma``, on the whole window; 0: always
    free). ``window_test``:
    the F-test threshold for fitting only the pixels near the argmax (``inf``: never). ``border_ratio``
    (0: off): the border-line test's threshold (:func:`~popos.decoders.border_line.drop_border_line`).
    See the module docstring.

    The result is clamped to the map plus one pixel per side; maps with no peak around the argmax
    (:func:`~popos.decoders.base.no_peak`) give the argmax.

    >>> from popos.codec import encode_heatmaps
    >>> hm = 0.7 * encode_heatmaps(torch.tensor([[30.25, 3.5]]), 32, sigma=2.6)  # wider than assumed
    >>> [round(v, 4) for v in popos(hm).flatten().tolist()]
    [30.25, 3.5]
    """
    check_float("sigma", sigma, 0.0, strict=True)
    check_int("window", window, 3)
    check_int("iterations", iterations, 0)
    check_float("shape_test", shape_test, 0.0, infinite=True)
    check_float("window_test", window_test, 0.0, infinite=True)
    check_float("border_ratio", border_ratio, 0.0)
    maps = flat_maps(heatmaps, min_size=2)
    n, height, width = maps.shape
    x, y = argmax_xy(maps)
    side = min(window, height, width)
    raw, x0, y0 = window_around(maps, x, y, side)
    top = raw.flatten(1).amax(1)
    values = raw / torch.where(top > 0, top, 1.0)[:, None, None]  # peak 1: the fits see every amplitude alike
    offsets = torch.arange(side, device=maps.device)
    coords = (torch.stack([x0, y0], -1)[:, :, None] + offsets).float()  # [B, 2, side]: x of columns, y of rows
    theta = _width_start(values, x, y, coords, sigma)
    line = torch.full_like(x, -1)
    if border_ratio > 0:
        theta, line = drop_border_line(PeakWindow(values, coords), theta, height, width, sigma, border_ratio,
                                       (True, True, True))  # fmt: skip
    # [B, 2, side]: the window's columns, rows used (not the map-border line the border-line test left out)
    first, last = offsets == 0, offsets == side - 1
    keep = ~torch.stack([(line[:, None] == 0) & first | (line[:, None] == 1) & last,
                         (line[:, None] == 2) & first | (line[:, None] == 3) & last], 1)  # fmt: skip
    # the width given: the separable maximum-likelihood fit of (x, y, A)
    win = PeakWindow(values, coords, axes=keep.float())
    theta, _ = likelihood.fit(win, theta, sigma, iterations)
    width_cost = ((win.residuals(theta, sigma) ** 2) * win.mask).sum((1, 2))
    cost = [torch.where(theta[:, 2] > 0, width_cost, torch.inf)[None]]
    dof = [torch.full_like(width_cost, 3.0)[None]]
    pixels = [win.mask.sum((1, 2))[None]]
    centres = [theta[None, :, :2]]
    common = dict(keep=keep, sigma=sigma, iterations=iterations)
    fits = [_Fits(values, x0, y0, x, y, MODELS[1:], start_radius=START_RADIUS, **common)]
    for s in NEAR_WINDOWS:  # cut from the window, which holds every map pixel within 4 px of the argmax
        if s < side:
            sub, sx, sy = window_around(values, x - x0, y - y0, s)
            sub_keep = keep.gather(2, torch.stack([sx, sy], -1)[:, :, None] + torch.arange(s, device=maps.device))
            fits.append(_Fits(sub, x0 + sx, y0 + sy, x, y, ("shape",), keep=sub_keep, sigma=sigma,
                              iterations=iterations, start_radius=s, radius=s // 2))  # fmt: skip
    cost, dof, pixels = (torch.cat(parts + [getattr(f, name) for f in fits])
                         for parts, name in ((cost, "cost"), (dof, "dof"), (pixels, "pixels")))  # fmt: skip
    choice = _select(cost, dof, pixels, len(MODELS), shape_test, window_test)
    centres = torch.cat(centres + [f.centre for f in fits])
    p = clamp_to_map(centres.gather(0, choice[None, :, None].expand(1, n, 2))[0], height, width)
    return unflatten(torch.where(no_peak(raw)[:, None], torch.stack([x, y], -1).float(), p), heatmaps)


def _width_start(values: Tensor, x: Tensor, y: Tensor, coords: Tensor, sigma: float) -> Tensor:
    """The start of the fit of width ``sigma``: ``theta [B, 3] = (x, y, A)`` of the log-quadratic fit to the
    pixels of the windows ``values [B, w, w]`` (pixel coordinates ``coords [B, 2, w]``) near the argmax ``(x,
    y)``, weighted by ``h^2``."""
    n, side, _ = values.shape
    mono = gaussian_fit.monomials(side, side, values.device)
    flat = values.flatten(1)
    near_x = (coords[:, 0] - x[:, None]).abs() <= START_RADIUS
    near_y = (coords[:, 1] - y[:, None]).abs() <= START_RADIUS
    near = (near_y[:, :, None] & near_x[:, None, :]).flatten(1)
    prior = torch.tensor([0, 0, 0, -0.5 / sigma**2, 0, -0.5 / sigma**2, 0.0], device=values.device).expand(n, 7)
    free = gaussian_fit.free_mask("width", values.device).expand(n, 7)
    c = gaussian_fit.log_quadratic_start(flat, flat.clamp_min(0).square() * near, prior, free, mono)
    centre, _ = gaussian_fit.centre_of(c)
    amplitude = torch.exp(c[:, 0] + 0.5 * (c[:, 1] * centre[:, 0] + c[:, 2] * centre[:, 1]))
    return torch.cat([coords[:, :, 0] + side // 2 + centre, amplitude[:, None]], -1)
