"""The maximum-likelihood window: the pixels around a peak and the least-squares fit of a Gaussian to them.

Under i.i.d. pixel noise the maximum-likelihood fit of ``A g(p)`` (``g`` the unit Gaussian of width
``sigma`` at ``p``) minimises ``sum (h - A g)^2`` over the window. Coordinates are ``(x, y)`` in heatmap
px, pixel ``i`` centred at ``i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from popos.decoders.levenberg_marquardt import levenberg_marquardt

# [i, j] = y power i, x power j (flattened i * 3 + j) -> the order (ux, uy, 1) x (ux, uy, 1)
_GN_LAYOUT = [2, 4, 1, 4, 6, 3, 1, 3, 0]


def gaussians(coords: Tensor, centres: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """``u = coords - centre`` and ``exp(-u^2 / 2 sigma^2)``, both ``[B, 2, ..., w]``, for pixel coordinates
    ``[B, 2, w]`` and centres ``[B, 2, ...]`` (axis 1: x, y)."""
    u = coords.reshape(*coords.shape[:2], *([1] * (centres.ndim - 2)), -1) - centres[..., None]
    return u, torch.exp(u * u * (-0.5 / sigma**2))


class PeakWindow:
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

    def moments(self, p: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """Sums over the anchors at points ``p [B, 2]``, with ``u = pixel - p`` and ``g`` the unit Gaussian
        at ``p``: ``[B, 3]`` of ``h g (ux, uy, 1)`` and ``[B, 3, 3]`` of ``g^2 (ux, uy, 1) (ux, uy, 1)^T``
        (the Gauss-Newton matrix of ``A g`` up to the factors of ``A``)."""
        u, g = gaussians(self.coords, p, sigma)  # [B, 2, w]
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
        _, g = gaussians(self.coords, theta[:, :2], sigma)
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


def fit(win: PeakWindow, theta: Tensor, sigma: float, iterations: int) -> tuple[Tensor, Tensor]:
    """:func:`levenberg_marquardt` on the window's objective from ``theta [B, 3] = (x, y, A)``.

    Returns ``theta [B, 3]`` and its residual sum of squares ``[B]``, never worse than the start's.
    """
    return levenberg_marquardt(win.evaluate(sigma), theta, iterations)
