"""POPoS, ours: the maximum-likelihood Gaussian of free amplitude, centre and shape around the peak.

``heatmaps [..., K, H, W] -> [..., K, 2]`` float32 ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.

The paper (AAAI 2025, section 3.3) reads the heatmap value at each anchor pixel as a range to the peak,
``d^2 = -2 sigma^2 ln h``, and searches a candidate grid for the point that best satisfies those range
equations, with ``sigma`` and a unit amplitude assumed (the authors' decoder is
:mod:`popos.decoders.popos_authors`). A network's peaks have neither: their amplitude is below 1, their
width differs from the target's, they are elongated along the face contour, sit on a baseline and now
and then share the window with a weaker second peak. Ours keeps the range reading in its least-squares
form (the range equations are linear in the log-quadratic's coefficients: the start of the fit), and fits
what the assumptions fixed (:mod:`popos.decoders.gaussian_fit`):

* **amplitude, shape and baseline**: a Gaussian of any amplitude, centre and covariance on a baseline,
  fitted to the ``window x window`` pixels around the argmax by maximum likelihood under pixel noise;
  ``sigma`` is the shape's prior, weighted by the fit's own residuals, so clean maps of any shape are
  fitted exactly and noisy ones keep the accuracy of the known width;
* **the border-line test**: where the window touches the map's border, the window is refitted without each
  border line (row or column) in turn, and the refit without the line that misses it most is kept where
  that line's mean squared residual exceeds ``border_test`` times the residual variance of the other pixels
  (a flip test's copied column, or padding artefacts);
* **a second peak**: a second, weaker peak lends its mass to the whole window, not to the pixels at the
  argmax. The ``near_window x near_window`` pixels around the argmax are fitted too (free shape, no
  baseline), and that fit is kept where the window's residuals exceed it by an F test: the residual sum
  of squares the other pixels add, per pixel, over the near fit's residual variance, above ``window_test``;
* **the whole float32 range**: the window is divided by its maximum before fitting.

Every step runs on the whole batch with masks and fixed iteration counts, so the decoder compiles and
exports as one graph (:func:`popos.decoders.compiled`, :mod:`popos.export`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from popos.anchors import OUR_WINDOW, our_anchors
from popos.decoders import gaussian_fit
from popos.decoders.base import check_float, check_int, clamp_to_map, flat_maps, no_peak, peak, register, unflatten
from popos.decoders.base import window as window_around
from popos.decoders.gaussian_fit import WindowFit

#: side of the window around the argmax that our decoder fits, heatmap px
WINDOW = OUR_WINDOW
#: side of the window fitted beside a second peak, heatmap px
NEAR_WINDOW = 3
#: the near window's shape prior (:func:`popos.decoders.gaussian_fit.fit`): weak, its pixels fix the shape
NEAR_PRIOR = 0.02
#: fewest pixels the near window must leave out for its F test (fewer say too little about a second peak)
LEFT_OUT = 7
#: floor of the near fit's residual variance (the peak is 1): misfits below it, such as the flip test's sum of two
#: close Gaussians, do not count as a second peak
NOISE_FLOOR = 1e-5
#: a border line must miss the refit by more than this mean square (the peak is 1) to be left out
LINE_FLOOR = 1e-8


def default_anchors(heatmap_size: int) -> int:
    """Pixels our decoder fits at a square ``heatmap_size``: its window, ``min(9, size)^2``.

    >>> default_anchors(64), default_anchors(4)
    (81, 16)
    """
    return our_anchors(check_int("heatmap_size", heatmap_size, 1))


@register("popos")
def popos(
    heatmaps: Tensor,
    *,
    sigma: float = 2.0,
    window: int = WINDOW,
    near_window: int = NEAR_WINDOW,
    iterations: int = 2,
    shape_prior: float = 0.003,
    window_test: float = 40.0,
    border_test: float = 100.0,
) -> Tensor:
    """POPoS decoding, ours: ``[..., K, H, W] -> [..., K, 2]`` heatmap px (H, W >= 2).

    ``sigma`` (heatmap px): the peak width expected, the shape's prior. ``window``: side of the square
    window around the argmax that is fitted (cut to the map, shifted to stay inside it). ``near_window``:
    side of the window fitted beside a second peak (``>= window``: never). ``iterations``: Gauss-Newton
    steps of every fit. ``shape_prior``: the prior's standard deviation on the log-quadratic's coefficients
    (0: no prior). ``window_test``: the F-test threshold for keeping the near window's fit (``inf``: never).
    ``border_test`` (0: off): the border-line test's threshold. See the module docstring.

    The result is clamped to the map plus one pixel per side; maps with no peak around the argmax
    (:func:`~popos.decoders.base.no_peak`) or no fit that is a peak give the argmax.

    >>> from popos.codec import encode_heatmaps
    >>> hm = 0.7 * encode_heatmaps(torch.tensor([[30.25, 3.5]]), 32, sigma=2.6)  # wider than assumed
    >>> [round(v, 4) for v in popos(hm).flatten().tolist()]
    [30.25, 3.5]
    """
    check_float("sigma", sigma, 0.0, strict=True)
    check_int("window", window, 3)
    check_int("near_window", near_window, 3)
    check_int("iterations", iterations, 0)
    check_float("shape_prior", shape_prior, 0.0)
    check_float("window_test", window_test, 0.0, infinite=True)
    check_float("border_test", border_test, 0.0)
    maps = flat_maps(heatmaps, min_size=2)
    n, height, width = maps.shape
    found = peak(maps)
    side = min(window, height, width)
    raw, x0, y0 = window_around(maps, found.x, found.y, side)
    top = raw.flatten(1).amax(1)
    values = raw / torch.where(top > 0, top, 1.0)[:, None, None]  # peak 1: the fits see every amplitude alike
    flat = values.flatten(1).T  # [P, B]
    used = (flat != 0).float()  # exact zeros are censored (targets cut at 3 sigma, a ReLU), not observed
    options = dict(sigma=sigma, steps=iterations, shape_prior=shape_prior)
    whole = gaussian_fit.fit(flat, used, side, baseline=True, **options)
    if border_test > 0:
        whole, used = _border_line_test(flat, used, whole, x0, y0, side, height, width, border_test, options)
    centre, rss = whole.centre + (side - 1) / 2, whole.rss
    if near_window < side:
        near_values, nx, ny = window_around(values, found.x - x0, found.y - y0, near_window)
        near_used = window_around(used.T.reshape(n, side, side), found.x - x0, found.y - y0, near_window)[0]
        near = gaussian_fit.fit(near_values.flatten(1).T, near_used.flatten(1).T, near_window, baseline=False,
                                sigma=sigma, steps=iterations, shape_prior=NEAR_PRIOR)  # fmt: skip
        left_out = whole.pixels - near.pixels
        noise = near.rss / (near.pixels - near.dof).clamp_min(1)
        f = (whole.rss - near.rss) / left_out.clamp_min(1) / noise.clamp_min(NOISE_FLOOR)
        use_near = ((f > window_test) & (left_out >= LEFT_OUT) & (near.pixels - near.dof >= 3)
                    & torch.isfinite(near.rss))  # fmt: skip
        centre = torch.where(use_near, near.centre + torch.stack([nx, ny]) + (near_window - 1) / 2, centre)
        rss = torch.where(use_near, near.rss, rss)
    argmax = torch.stack([found.x, found.y], -1).float()
    p = clamp_to_map((centre + torch.stack([x0, y0])).T, height, width)
    fallback = no_peak(raw) | ~torch.isfinite(rss)
    return unflatten(torch.where(fallback[:, None], argmax, p), heatmaps, found.finite)


def _border_line_test(
    flat: Tensor, used: Tensor, whole: WindowFit, x0: Tensor, y0: Tensor, side: int, height: int,
    width: int, threshold: float, options: dict,
) -> tuple[WindowFit, Tensor]:
    """Refit the windows ``flat [P, B]`` (pixels ``used [P, B]``, fitted as ``whole``) without each map-border
    line they hold, and keep the refit without the line most above the threshold (see the module docstring).
    A window narrower than the map holds at most one border column and one border row; one as wide as the
    map holds both of its columns (a static count, so the graph has no branch). Returns the fit kept and the
    pixels it used, ``[P, B]``."""
    n = flat.shape[1]
    grid = torch.zeros(4, side, side, device=flat.device)
    grid[0, :, 0], grid[1, :, -1], grid[2, 0, :], grid[3, -1, :] = 1, 1, 1, 1
    first_col, last_col, first_row, last_row = grid.flatten(1)[..., None]  # [P, 1] each
    left, right, top, bottom = x0 == 0, x0 + side == width, y0 == 0, y0 + side == height
    lines, present = [], []  # [P, B] and [B] per candidate line
    for first, last, at_first, at_last, whole_span in ((first_col, last_col, left, right, side == width),
                                                        (first_row, last_row, top, bottom, side == height)):
        if whole_span:
            lines += [first.expand(-1, n), last.expand(-1, n)]
            present += [at_first, at_last]
        else:
            lines.append(torch.where(at_first, first, last))
            present.append(at_first | at_last)
    count = len(lines)
    line, present = torch.cat(lines, 1), torch.cat(present)  # [P, C B], [C B]
    without = used.repeat(1, count) * (1 - line)
    refit = gaussian_fit.fit(flat.repeat(1, count), without, side, baseline=True,
                             start=whole.params.repeat(1, count), **options)  # fmt: skip
    variance = refit.rss / (refit.pixels - refit.dof).clamp_min(1)
    line_ms = (refit.residuals.square() * line).sum(0) / line.sum(0)
    excess = (line_ms - threshold * variance - LINE_FLOOR) / line_ms.clamp_min(1e-30)  # relative: > 0 drops
    usable = present & (refit.pixels - refit.dof >= 3) & torch.isfinite(refit.rss)
    excess = torch.where(usable, excess, -1.0).view(count, n)
    pick = excess.argmax(0) * n + torch.arange(n, device=flat.device)
    drop = excess.amax(0) > 0
    refit = WindowFit(*(x[..., pick] if isinstance(x, Tensor) else x for x in refit))
    return _where(drop, refit, whole), torch.where(drop, without[:, pick], used)


def _where(condition: Tensor, a: WindowFit, b: WindowFit) -> WindowFit:
    """Per window, fit ``a`` where ``condition [B]`` holds, else ``b``."""
    return WindowFit(*(torch.where(condition, x, y) if isinstance(x, Tensor) else x for x, y in zip(a, b, strict=True)))
