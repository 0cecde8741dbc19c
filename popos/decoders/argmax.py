"""Integer-peak decoders: one-hot (argmax) and two-hot (argmax + quarter-pixel shift).

``heatmaps [..., K, H, W] -> [..., K, 2]`` float32 ``(x, y)`` in heatmap px, pixel ``i`` centred at ``i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from popos.decoders.base import flat_maps, peak, peak_xy, register, unflatten


@register("one_hot")
def one_hot(heatmaps: Tensor, *, sigma: float = 2.0) -> Tensor:  # noqa: ARG001 (sigma: the common signature)
    """The pixel of the maximum (first in row-major order on ties): ``[..., K, H, W] -> [..., K, 2]``.

    >>> one_hot(torch.eye(3)[None, None] * torch.tensor([1.0, 2.0, 1.0])).tolist()  # max at (1, 1)
    [[[1.0, 1.0]]]
    """
    xy, finite = peak_xy(flat_maps(heatmaps))
    return unflatten(xy, heatmaps, finite)


@register("two_hot")
def two_hot(heatmaps: Tensor, *, sigma: float = 2.0) -> Tensor:  # noqa: ARG001 (sigma: the common signature)
    """Argmax moved 0.25 px toward the larger neighbour on each axis: ``[..., K, H, W] -> [..., K, 2]``.

    The shift is ``0.25 * sign(h[x + 1] - h[x - 1])`` per axis, as mmpose's ``post_process='default'``
    (equal neighbours: no shift). Unlike mmpose, each axis is refined wherever both of its neighbours
    exist (``1 <= x <= W - 2``), independently of the other axis; mmpose 0.x skips a point unless
    ``1 < x < W - 1`` and ``1 < y < H - 1`` both hold, leaving index 1 and every border row unrefined.

    >>> two_hot(torch.tensor([[[[0.0, 0.5, 1.0, 0.9]]]])).tolist()  # right neighbour larger: x = 2.25
    [[[2.25, 0.0]]]
    """
    maps = flat_maps(heatmaps)
    _, height, width = maps.shape
    x, y, _, finite = peak(maps)
    flat = maps.reshape(maps.shape[0], -1)

    def shift(pos: Tensor, size: int, step: int) -> Tensor:
        # neighbours along one axis (flat index step 1 for x, W for y); where one is missing both
        # lookups read the peak itself, so the difference and the shift are 0
        idx = (y * width + x)[:, None]
        inside = ((pos >= 1) & (pos <= size - 2))[:, None]
        after = flat.gather(1, idx + step * inside)
        before = flat.gather(1, idx - step * inside)
        return 0.25 * torch.sign((after - before).float()[:, 0])

    coords = torch.stack([x + shift(x, width, 1), y + shift(y, height, width)], -1)
    return unflatten(coords, heatmaps, finite)
