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
* **the border-line test**: where the window touches the map's border, the fit's first step is also taken
  without each border line (row or column) in turn, and the step without the line that misses it most is
  taken where that line's mean squared residual after it exceeds ``border_test`` times the residual variance
  of the other pixels (a flip test's copied column, or padding artefacts); the fit goes on without the line;
* **a second peak**: a second, weaker peak lends its mass to the whole window, not to the pixels at the
  argmax. The ``near_window x near_window`` pixels around the argmax are fitted too (free shape, no
  baseline; the log fit alone, exact on a clean peak and within 1 % of maximum likelihood under noise), and
  that fit is kept where the window's residuals exceed it by an F test: the residual sum of squares the
  other pixels add, per pixel, over the near fit's residual variance, above ``window_test``;
* **the whole float32 range**: the window is divided by its maximum before fitting.

Every step runs on the whole batch with masks and fixed iteration counts, so the decoder compiles and
exports as one graph (:func:`popos.decoders.compiled`, :mod:`popos.export`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from popos.anchors import OUR_WINDOW, our_anchors
from popos.decoders import gaussian_fit
from popos.decoders.base import check_float, check_int, clamp_to_map, flat_maps, no_peak, peak, register, unflatten
from popos.decoders.base import window as window_around
from popos.decoders.gaussian_fit import Linearisation, WindowModel, solve_spd

#: side of the window around the argmax that our decoder fits, heatmap px
WINDOW = OUR_WINDOW
#: side of the window fitted beside a second peak, heatmap px
NEAR_WINDOW = 3
#: fewest pixels the near window must leave out for its F test (fewer say too little about a second peak)
LEFT_OUT = 7
#: floor of the near fit's residual variance (the peak is 1): misfits below it, such as the flip test's sum of two
#: close Gaussians, do not count as a second peak
NOISE_FLOOR = 1e-5
#: a border line must miss the step without it by more than this mean square (the peak is 1) to be left out
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
    steps of the window's fit. ``shape_prior``: the prior's standard deviation on the log-quadratic's coefficients
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
    top = found.value.float()  # the window holds the maximum
    values = raw / torch.where(top > 0, top, 1.0)[:, None, None]  # peak 1: the fits see every amplitude alike
    flat = values.flatten(1).T.contiguous()  # [P, B]
    used = (flat != 0).float()  # exact zeros are censored (targets cut at 3 sigma, a ReLU), not observed
    model = WindowModel(side, sigma=sigma, baseline=True, shape_prior=shape_prior, device=maps.device)
    border = None
    if border_test > 0 and iterations > 0:
        border = functools.partial(_border_line_step, model, x0=x0, y0=y0, height=height, width=width,
                                   threshold=border_test)  # fmt: skip
    whole = gaussian_fit.fit(flat, used, model, steps=iterations, first_step=border)
    centre, rss = whole.centre + (side - 1) / 2, whole.rss
    if near_window < side:
        near_values, nx, ny = window_around(values, found.x - x0, found.y - y0, near_window)
        near_used = window_around(whole.used.T.reshape(n, side, side), found.x - x0, found.y - y0, near_window)[0]
        near_model = WindowModel(near_window, sigma=sigma, baseline=False, shape_prior=0.0, device=maps.device)
        near = gaussian_fit.fit(near_values.flatten(1).T, near_used.flatten(1).T, near_model, steps=0)
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


def _border_line_step(
    model: WindowModel, fitted: Linearisation, *, x0: Tensor, y0: Tensor, height: int, width: int, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The first Gauss-Newton step of the whole window's fit, with the border-line test (module docstring).

    The step is also taken without each map-border line (row or column) the window holds, their sums taken
    out of the normal equations, and the line's residuals and the other pixels' residual variance after that
    step are predicted from the linearised model. The step without the line most above the threshold is
    taken where there is one. A window narrower than the map holds at most one border column and one border
    row, both only in a corner, where the one that misfits more is the candidate; one as wide as the map holds
    both of its columns (a static count of candidates, so the graph has no branch). Returns the step
    ``[k, B]``, the pixels the fit goes on with ``[P, B]`` and their predicted residual sum of squares after
    the step ``[B]``.
    """
    side, device = model.side, fitted.c.device
    index = torch.arange(side, device=device)
    lines = torch.stack([index * side, index * side + side - 1, index, (side - 1) * side + index])  # [4, L]
    present = torch.stack([x0 == 0, x0 + side == width, y0 == 0, y0 + side == height])  # [4, B]
    g, residuals, used = fitted.g[lines], fitted.residuals[lines], fitted.used[lines]  # [4, L, B]
    candidates = []  # per candidate, the line of each window: 0-3, the first or last column, row (int or int64 [B])
    for first, last, span in ((0, 1, side == width), (2, 3, side == height)):
        candidates += [first, last] if span else [torch.where(present[first], first, last)]
    if len(candidates) == 2:  # one border column and one row at most, both only in a corner: the worse one
        column, row = candidates
        misfit = residuals.square().sum(1)  # [4, B]
        worse_row = (_line(present.float(), row) > 0) & (_line(misfit, row) > _line(misfit, column))
        candidates = [torch.where(worse_row | (_line(present.float(), column) == 0), row, column)]
    choices = [functools.partial(_line, which=which) for which in candidates]
    line_moments = model.moments(g, residuals, used, lines)  # [4, M, B]
    # [M, 1 + C, B]: the whole window, then without each candidate line
    removed = torch.stack([torch.zeros_like(fitted.moments)] + [at(line_moments) for at in choices], 1)
    sums = model.unpack(fitted.moments[:, None] - removed)
    steps = solve_spd(*model.normal_equations(sums, fitted.c[:, None]))  # [k, 1 + C, B]
    rss = sums.rss_after(steps)  # [1 + C, B]
    mono = model.mono[:, lines].movedim(0, -1)  # [4, L, 6]
    excess = []
    for i, at in enumerate(choices, 1):
        change = g * (mono @ steps[:6, i]) + (steps[6, i] if model.baseline else 0)  # [4, L, B]: J step
        line_ms = at(residuals - change * used).square().mean(0)
        variance = rss[i] / (sums.count[i] - model.dof).clamp_min(1)
        ratio = (line_ms - threshold * variance - LINE_FLOOR) / line_ms.clamp_min(1e-30)  # relative: > 0 drops
        usable = (at(present.float()) > 0) & (sums.count[i] - model.dof >= 3)  # (onnxruntime has no bool Where)
        excess.append(torch.where(usable, ratio, -1.0))
    pick, most = torch.zeros_like(x0), torch.zeros_like(excess[0])  # 0: the whole window's step
    for i, candidate in enumerate(excess, 1):  # (an argmax over C rows costs more than C comparisons)
        pick, most = torch.where(candidate > most, i, pick), torch.maximum(candidate, most)
    dropped = torch.stack([torch.full_like(pick, which) if isinstance(which, int) else which
                           for which in [len(lines), *candidates]]).gather(0, pick[None])[0]  # fmt: skip
    masks = torch.ones(model.mono.shape[1], len(lines) + 1, device=device)  # [P, 5]: without each line, all
    masks[lines, torch.arange(len(lines), device=device)[:, None]] = 0
    step = steps.gather(1, pick.expand(len(steps), 1, -1))[:, 0]
    return step, fitted.used * masks.index_select(1, dropped), rss.gather(0, pick[None])[0]


def _line(x: Tensor, which: int | Tensor) -> Tensor:
    """``x [4, ..., B]`` at the line ``which`` (0-3; int, or int64 ``[B]``: per window): ``[..., B]``."""
    if isinstance(which, int):
        return x[which]
    return torch.where(which == 0, x[0], torch.where(which == 1, x[1], torch.where(which == 2, x[2], x[3])))
