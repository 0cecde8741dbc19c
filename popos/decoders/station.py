"""The station: a closed-form first estimate of a peak's centre, from the pixels around its argmax.

Coordinates are ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from popos.decoders.multilateration import EPS


def parabola_station(maps: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Per axis, the vertex of the parabola through the log values of three pixels at the argmax ``(x, y)``.

    ``maps [B, H, W]``, integer argmax ``[B]`` each -> ``[B, 2]`` heatmap px. The three pixels are the
    argmax and its two neighbours along the axis (shifted inward at the border), so the result is exact
    for any Gaussian, of any amplitude, and takes a handful of operations. Where the parabola does not
    open downward, its vertex is more than a pixel from the argmax, or the map is narrower than 3 px,
    that axis keeps the argmax.
    """
    n, height, width = maps.shape
    flat = maps.reshape(n, -1)

    def vertex(pos: Tensor, size: int, stride: int, base: Tensor) -> Tensor:
        if size < 3:
            return pos.float()
        c = pos.clamp(1, size - 2)
        idx = (base + c * stride)[:, None] + stride * torch.tensor([-1, 0, 1], device=maps.device)
        logs = torch.log(flat.gather(1, idx).float().clamp_min(EPS))
        curvature = logs[:, 0] - 2 * logs[:, 1] + logs[:, 2]
        v = c + 0.5 * (logs[:, 0] - logs[:, 2]) / torch.where(curvature < 0, curvature, -1.0)
        return torch.where((curvature < 0) & ((v - pos).abs() <= 1), v, pos.float())

    return torch.stack([vertex(x, width, 1, y * width), vertex(y, height, width, x)], -1)
