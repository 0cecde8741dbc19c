"""The border-line test: refit without a map-border row or column that disagrees with the rest of the peak.

Coordinates are ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from popos.decoders.likelihood import PeakWindow, gaussians
from popos.decoders.multilateration import gauss_newton


def line_deletion_ratio(
    win: PeakWindow, theta: Tensor, present: Tensor, sigma: float, free: tuple[bool, ...]
) -> Tensor:
    """The statistic of :func:`drop_border_line`, linearised: one Gauss-Newton step from ``theta [B, 3]``
    stands for the refit without each line, so only sums over the lines are needed beyond the full fit's.
    Lines: the window's first and last column, first and last row; ``present [B, 4]`` marks those on the
    map border. Returns ``[B, 4]`` (0 where not present)."""
    cost, jtj, jtr = win.evaluate(sigma)(theta)  # over the whole window: sum r^2, J^T J, -J^T r
    u, g = gaussians(win.coords, theta[:, :2], sigma)  # [B, 2, w]
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


def drop_border_line(
    win: PeakWindow, theta: Tensor, height: int, width: int, sigma: float, ratio: float, free: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor]:
    """Refit without a map-border line of the window where that line disagrees with the rest of the peak.

    Border pixels are the least trustworthy: a flip test that averages heatmaps fills the column its
    mirror image does not cover with a copy of its neighbour (mmpose's ``shift_heatmap``), and padding
    distorts network outputs there. A least-squares fit follows such a line, and on small maps (a 4 x 4
    map is a quarter border column) it moves far. For every window ``win`` touching the border of the
    ``height x width`` map, each border line (row or column) of the map inside the window is left out in
    turn and ``theta [B, 3] = (x, y, A)`` refitted (3 Gauss-Newton steps on the parameters marked ``free``).
    The line is an outlier when its mean squared residual under the fit without it exceeds ``ratio`` times
    the residual variance of the other pixels (plus a floor of ``1e-4 A`` RMS) and at least 6 pixels
    remain; the fit without the most discordant line is kept. Returns that fit ``[B, 3]`` and the line left
    out, ``[B]`` int64: 0 / 1 the window's first / last column, 2 / 3 its first / last row, -1 none. Only lines whose
    linearised statistic (:func:`line_deletion_ratio`) reaches a tenth of ``ratio`` are refitted: under
    pixel noise almost none, so the test costs a few sums over the border lines.
    """
    n = win.values.shape[0]
    cx, cy = win.coords[:, 0], win.coords[:, 1]
    lines = torch.stack([cx == 0, cx == width - 1, cy == 0, cy == height - 1], 1)  # [B, 4, w]: on the line
    near = lines.any(-1).any(-1).nonzero(as_tuple=True)[0]  # windows that touch the border
    none = torch.full((n,), -1, dtype=torch.long, device=theta.device)
    if near.numel() == 0:
        return theta, none
    mask = None if win.mask is None else win.mask[near]
    statistic = line_deletion_ratio(PeakWindow(win.values[near], win.coords[near], mask), theta[near],
                                     lines[near].any(-1), sigma, free)  # fmt: skip
    which, line = (statistic > 0.1 * ratio).nonzero(as_tuple=True)
    if which.numel() == 0:
        return theta, none
    which = near[which]
    axes = torch.ones(which.numel(), 2, win.values.shape[-1], device=theta.device)
    axes[torch.arange(which.numel(), device=theta.device), line // 2] = (~lines[which, line]).float()
    out = 1 - axes[:, 1, :, None] * axes[:, 0, None, :]
    if win.mask is None:
        sub = PeakWindow(win.values[which], win.coords[which], axes=axes)
    else:
        sub = PeakWindow(win.values[which], win.coords[which], mask=win.mask[which] * (1 - out))
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
    worst = score.argmax(1)
    pick = refit.gather(1, worst[:, None])[:, 0]
    dropped = score.amax(1) > 0
    return torch.where(dropped[:, None], fit[pick], theta), torch.where(dropped, worst, none)
