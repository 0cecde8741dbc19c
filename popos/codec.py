"""Heatmap targets and the heatmap -> distance transform.

Coordinates are ``(x, y)`` in heatmap pixels, pixel ``i`` centred at ``i``; heatmap coordinates are input
coordinates divided by ``stride = input_size / heatmap_size`` (see :mod:`popos.geometry`). ``sigma`` is in
heatmap pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _size(heatmap_size: int | tuple[int, int]) -> tuple[int, int]:
    """``heatmap_size`` (``int`` or ``(H, W)``) -> ``(H, W)``, checked."""
    hw = (heatmap_size, heatmap_size) if isinstance(heatmap_size, int) else tuple(heatmap_size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"heatmap_size must be a positive int or a pair (H, W) of them, got {heatmap_size!r}")
    return hw


def encode_heatmaps(
    coords: Tensor, heatmap_size: int | tuple[int, int], sigma: float = 2.0, unbiased: bool = True
) -> Tensor:
    """Gaussian heatmaps for ``[..., K, 2]`` points ``(x, y)`` in heatmap px -> ``[..., K, H, W]`` float32.

    ``h(x, y) = exp(-((x - cx)^2 + (y - cy)^2) / (2 sigma^2))`` over the whole map. ``unbiased=True`` centres
    the Gaussian on the exact sub-pixel point (the peak value is below 1 unless the point is on a pixel
    centre), as mmpose's unbiased encoding; ``unbiased=False`` centres it on the nearest pixel
    (``floor(c + 0.5)``), the classic biased target (without mmpose's 3-sigma window cut). Points outside
    the map give the part of their Gaussian that falls inside it. Same device as ``coords``.

    >>> hm = encode_heatmaps(torch.tensor([[2.0, 1.0]]), 4)  # one point at x=2, y=1 on a 4x4 map
    >>> hm.shape, hm[0, 1, 2].item(), hm[0].argmax().item()  # peak 1 at row 1, column 2
    (torch.Size([1, 4, 4]), 1.0, 6)
    """
    if not isinstance(coords, Tensor):
        raise TypeError(f"coords must be a torch.Tensor [..., K, 2], got {type(coords).__name__}")
    if coords.ndim < 2 or coords.shape[-1] != 2:
        raise ValueError(f"coords must have shape [..., K, 2], got {tuple(coords.shape)}")
    if not (sigma > 0):
        raise ValueError(f"sigma must be positive (heatmap px), got {sigma}")
    h, w = _size(heatmap_size)
    c = coords.float()
    if not torch.isfinite(c).all():
        raise ValueError(f"coords hold {int((~torch.isfinite(c)).sum())} non-finite values")
    if not unbiased:
        c = torch.floor(c + 0.5)
    xs = torch.arange(w, device=c.device, dtype=torch.float32)
    ys = torch.arange(h, device=c.device, dtype=torch.float32)
    # separable: exp(-(dx^2 + dy^2)/2s^2) = gx * gy, an outer product per point
    gx = torch.exp(-((xs - c[..., 0:1]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((ys - c[..., 1:2]) ** 2) / (2 * sigma**2))
    return gy[..., :, None] * gx[..., None, :]


def distance_maps(heatmaps: Tensor, sigma: float = 2.0, eps: float = 1e-9, squared: bool = False) -> Tensor:
    """Heatmap values -> distances to the Gaussian's centre, heatmap px, same shape ``[...]``, float32.

    ``d = sqrt(-2 sigma^2 ln h)`` with ``h`` clipped to ``[eps, 1]`` (the inverse of the unit-peak
    Gaussian, as the POPoS/KeyPosS code does: ``h >= 1`` gives 0, ``h <= eps`` gives
    ``sqrt(-2 sigma^2 ln eps)``, 12.87 px for the defaults). ``squared=True`` returns ``d^2``.

    >>> round(float(distance_maps(torch.tensor(0.5))), 4)  # sqrt(-8 ln 0.5) = sqrt(8 ln 2)
    2.3548
    """
    if not (sigma > 0):
        raise ValueError(f"sigma must be positive (heatmap px), got {sigma}")
    if not (0 < eps < 1):
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    d2 = -2 * sigma**2 * torch.log(heatmaps.float().clamp(eps, 1.0))
    return d2 if squared else d2.sqrt()
