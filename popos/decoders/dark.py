"""DarkPose (Zhang et al., CVPR 2020): blur, log, one second-order Taylor (Newton) step at the argmax.

``heatmaps [..., K, H, W] -> [..., K, 2]`` float32 ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from popos.decoders.base import check_int, flat_maps, peak, register, unflatten

# OpenCV's getGaussianKernel(size, sigma <= 0) uses these fixed binomial kernels for sizes up to 7 and a
# sampled Gaussian with sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8 above.
_OPENCV_SMALL_KERNELS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}
#: log floor of the blurred map, as mmpose
LOG_FLOOR = 1e-10
#: largest Taylor offset accepted per axis, heatmap px: the argmax is within half a pixel of a smooth
#: peak, so a longer step only comes from a badly conditioned Hessian on a noisy map
MAX_OFFSET = 1.0


def opencv_gaussian_kernel(size: int) -> Tensor:
    """OpenCV's 1-D Gaussian kernel for ``cv2.GaussianBlur(..., (size, size), 0)``: float64 ``[size]``.

    >>> opencv_gaussian_kernel(3).tolist()
    [0.25, 0.5, 0.25]
    """
    if size in _OPENCV_SMALL_KERNELS:
        return torch.tensor(_OPENCV_SMALL_KERNELS[size], dtype=torch.float64)
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


@register("dark")
def dark(heatmaps: Tensor, *, sigma: float = 2.0, kernel: int = 11) -> Tensor:  # noqa: ARG001 (sigma: common signature)
    """DarkPose decoding: ``[..., K, H, W] -> [..., K, 2]`` heatmap px.

    As mmpose 0.x ``post_process='unbiased'``: take the integer argmax of the raw map; blur the map with
    OpenCV's ``kernel x kernel`` Gaussian (sigma 2.0 for 11) with zero padding; take
    ``log(max(h, 1e-10))``; move the argmax by ``-Hess^-1 grad`` of the log map, with central differences
    for the gradient and the cross term and spacing-2 differences for ``d2/dx2``, ``d2/dy2``. The step is
    taken where that stencil fits (``2 <= x <= W - 3`` and ``2 <= y <= H - 3``; at 4 x 4 nowhere, so
    DARK = argmax there), only where the Hessian is negative definite (a maximum; mmpose steps for any
    non-zero determinant, also toward a saddle or a minimum) and is clamped to ``+-1`` px per axis
    (mmpose: no clamp).

    Only the 5 x 5 blurred values the stencil reads are computed, from the ``(4 + kernel)``-wide raw patch
    around the argmax, which equals a full zero-padded blur there. mmpose also rescales the blurred map
    to keep its maximum; a constant factor is an additive constant after the log, which the derivatives
    ignore. It matters only through the 1e-10 floor, so the patch is divided by its maximum first: the
    result is the same for peaks of any amplitude in the float32 range.

    >>> from popos.codec import encode_heatmaps
    >>> [round(v, 3) for v in dark(encode_heatmaps(torch.tensor([[7.3, 6.8]]), 16)).flatten().tolist()]
    [7.3, 6.8]
    """
    kernel = check_int("kernel", kernel, 1)
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd, got {kernel}")
    maps = flat_maps(heatmaps)
    n, height, width = maps.shape
    x, y, _, finite = peak(maps)
    if height < 5 or width < 5:  # the stencil fits nowhere
        return unflatten(torch.stack([x, y], -1), heatmaps, finite)
    radius = 2 + kernel // 2
    offsets = torch.arange(-radius, radius + 1, device=maps.device)
    px, py = x[:, None] + offsets, y[:, None] + offsets  # [B, P] patch columns and rows
    inside = ((py >= 0) & (py < height))[:, :, None] & ((px >= 0) & (px < width))[:, None, :]
    flat_idx = py.clamp(0, height - 1)[:, :, None] * width + px.clamp(0, width - 1)[:, None, :]
    patch = maps.reshape(n, -1).gather(1, flat_idx.reshape(n, -1)).float().reshape(inside.shape) * inside
    top = patch.flatten(1).amax(1)  # the peak; dividing by it keeps every amplitude away from the log floor
    patch = patch / torch.where(top > 0, top, 1.0)[:, None, None]
    # blurred values at offsets -2..2: a banded [5, P] matrix applied to rows and columns
    k = opencv_gaussian_kernel(kernel).float().to(maps.device)
    band = torch.zeros(5, 2 * radius + 1, device=maps.device)
    for i in range(5):
        band[i, i : i + kernel] = k
    size = 2 * radius + 1  # blur along x, then y, each as one matrix product over all rows
    cols = (patch.reshape(-1, size) @ band.T).reshape(n, size, 5).transpose(1, 2)
    blurred = (cols.reshape(-1, size) @ band.T).reshape(n, 5, 5).transpose(1, 2)
    logs = torch.log(blurred.clamp_min(LOG_FLOOR))  # [B, 5, 5] (y, x), centre at [2, 2]
    dx = 0.5 * (logs[:, 2, 3] - logs[:, 2, 1])
    dy = 0.5 * (logs[:, 3, 2] - logs[:, 1, 2])
    dxx = 0.25 * (logs[:, 2, 4] - 2 * logs[:, 2, 2] + logs[:, 2, 0])
    dyy = 0.25 * (logs[:, 4, 2] - 2 * logs[:, 2, 2] + logs[:, 0, 2])
    dxy = 0.25 * (logs[:, 3, 3] - logs[:, 1, 3] - logs[:, 3, 1] + logs[:, 1, 1])
    det = dxx * dyy - dxy**2
    ok = (det > 0) & (dxx < 0) & (x >= 2) & (x <= width - 3) & (y >= 2) & (y <= height - 3)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    step = torch.stack([-(dyy * dx - dxy * dy), -(dxx * dy - dxy * dx)], -1) / safe_det[:, None]
    step = torch.where(ok[:, None], step.clamp(-MAX_OFFSET, MAX_OFFSET), torch.zeros_like(step))
    return unflatten(torch.stack([x, y], -1) + step, heatmaps, finite)
