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
  parameters: amplitude and position), with a free covariance (6) and with a free covariance on a
  baseline (7); a larger model is taken only where it lowers the residual sum of squares by more than
  ``shape_test`` times what its extra parameters would remove from noise (an F test), so under noise
  on peaks of the assumed width the decoder keeps the prior's accuracy;
* **a second peak**: where the residuals of the whole window exceed, by the same kind of F test
  (``window_test``), those of a fit to the pixels within 2 px (then 1 px) of the argmax, the smaller
  fit is kept: a second peak lends its mass to the whole window, not to the pixels at the argmax;
* **the border-line test** (:mod:`popos.decoders.border_line`): a map-border row or column that
  disagrees with the rest (a flip test's copied column) is left out of every fit;
* **the whole float32 range**: the window is divided by its maximum before fitting.

Every step runs on the whole batch with masks and fixed iteration counts (the border-line test aside).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from popos.decoders import gaussian_fit
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
WINDOW = 9
#: the fits: (model of :data:`~popos.decoders.gaussian_fit.MODELS`, Chebyshev radius around the argmax in
#: heatmap px, ``None``: the whole window), in the order the selection reads them
FITS = (("width", None), ("shape", None), ("baseline", None), ("shape", 2), ("shape", 1))
#: pixels of the start fit: within this Chebyshev radius of the argmax (the 5 x 5 around it)
START_RADIUS = 2


def default_anchors(heatmap_size: int) -> int:
    """Pixels our decoder fits at a square ``heatmap_size``: its window, ``min(9, size)^2``.

    >>> default_anchors(64), default_anchors(4)
    (81, 16)
    """
    side = min(WINDOW, check_int("heatmap_size", heatmap_size, 1))
    return side * side


def _select(cost: Tensor, dof: Tensor, pixels: Tensor, shape_test: float, window_test: float) -> Tensor:
    """Index into :data:`FITS` of the fit kept per map, ``[B]`` int64, from the fits' residual sums of squares
    ``cost``, parameter counts ``dof`` and pixel counts ``pixels``, all ``[len(FITS), B]``.

    First the model on the whole window: a larger one replaces the current where
    ``((cost_cur - cost_new) / extra parameters) / (cost_new / (pixels - dof_new)) > shape_test``. Then the
    window shrinks to the next radius where ``((cost_cur - cost_small) / pixels left out) / (cost_small /
    (pixels_small - dof_small)) > window_test`` and at least 8 pixels are left out (fewer say too little
    about a second peak, and a 4 x 4 map would otherwise shrink under noise).
    """
    n = cost.shape[1]
    choice = torch.zeros(n, dtype=torch.long, device=cost.device)
    whole = [i for i, (_, radius) in enumerate(FITS) if radius is None]
    for k in whole[1:]:
        cur, cur_dof = cost.gather(0, choice[None])[0], dof.gather(0, choice[None])[0]
        noise = cost[k] / (pixels[k] - dof[k]).clamp_min(1)
        f = (cur - cost[k]) / (dof[k] - cur_dof).clamp_min(1) / noise.clamp_min(1e-30)
        choice = torch.where(f > shape_test, k, choice)
    shrinking = torch.full((n,), math.isfinite(shape_test), device=cost.device)  # the smaller fits' shape is free
    for k in range(len(whole), len(FITS)):
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
    iterations: int = 5,
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
    values = raw / torch.where(top > 0, top, 1.0)[:, None, None]  # peak 1: the fit sees every amplitude alike
    mono = gaussian_fit.Monomials(side, side, maps.device)
    # the argmax relative to the window's centre pixel, and each pixel's Chebyshev distance to it
    ref = torch.stack([x0, y0], -1).float() + side // 2
    peak_u, peak_v = (x - x0 - side // 2).float(), (y - y0 - side // 2).float()
    distance = torch.maximum((mono.u - peak_u[:, None]).abs(), (mono.v - peak_v[:, None]).abs())  # [B, P]
    flat = values.flatten(1)
    prior = torch.tensor([0, 0, 0, -0.5 / sigma**2, 0, -0.5 / sigma**2, 0.0], device=maps.device).expand(n, 7)
    start_weight = torch.where((distance <= START_RADIUS) & (flat > 0), flat * flat, 0.0)

    used = torch.ones_like(flat)
    if border_ratio > 0:
        used = used * _border_mask(values, x0, y0, flat, start_weight, prior, mono, height, width, sigma, border_ratio)

    r = len(FITS)
    free = torch.stack([gaussian_fit.free_mask(m, maps.device) for m, _ in FITS]).repeat_interleave(n, 0)
    fit_used = torch.cat([used if radius is None else used * (distance <= radius) for _, radius in FITS])
    many = flat.repeat(r, 1)
    c = gaussian_fit.log_quadratic_start(many, start_weight.repeat(r, 1) * fit_used, prior.repeat(r, 1), free, mono)
    c, cost = gaussian_fit.gauss_newton_fit(many, fit_used, c, free, mono, iterations)
    centre, is_peak = gaussian_fit.centre_of(c)
    cost = torch.where(is_peak, cost, torch.inf).view(r, n)
    dof = free.sum(-1).view(r, n).float()
    choice = _select(cost, dof, fit_used.sum(-1).view(r, n), shape_test, window_test)
    p = ref + centre.view(r, n, 2).gather(0, choice[None, :, None].expand(1, n, 2))[0]
    p = clamp_to_map(p, height, width)
    return unflatten(torch.where(no_peak(raw)[:, None], torch.stack([x, y], -1).float(), p), heatmaps)


def _border_mask(
    values: Tensor,
    x0: Tensor,
    y0: Tensor,
    flat: Tensor,
    start_weight: Tensor,
    prior: Tensor,
    mono: gaussian_fit.Monomials,
    height: int,
    width: int,
    sigma: float,
    ratio: float,
) -> Tensor:
    """``[B, P]``: 0 on the map-border line of each window that the border-line test leaves out, 1 elsewhere.

    The test (:func:`~popos.decoders.border_line.drop_border_line`) judges the lines under the fit of
    width ``sigma``, started from the log-quadratic fit of the pixels near the argmax."""
    n, side, _ = values.shape
    free = gaussian_fit.free_mask("width", values.device).expand(n, 7)
    c = gaussian_fit.log_quadratic_start(flat, start_weight, prior, free, mono)
    centre, _ = gaussian_fit.centre_of(c)
    amplitude = torch.exp(c[:, 0] + 0.5 * (c[:, 1] * centre[:, 0] + c[:, 2] * centre[:, 1]))
    corner = torch.stack([x0, y0], -1).float()
    coords = (corner[:, :, None] + torch.arange(side, device=values.device)).float()
    theta = torch.cat([corner + side // 2 + centre, amplitude[:, None]], -1)
    _, line = drop_border_line(PeakWindow(values, coords), theta, height, width, sigma, ratio, (True, True, True))
    col, row = mono.u + side // 2, mono.v + side // 2  # [P] pixel column and row in the window
    on_line = torch.stack([col == 0, col == side - 1, row == 0, row == side - 1])  # [4, P]
    dropped = on_line[line.clamp_min(0)] & (line >= 0)[:, None]
    return (~dropped).float()
