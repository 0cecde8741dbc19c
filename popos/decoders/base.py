"""What every decoder shares: the registry, input checks, the argmax and local windows around it.

Coordinates are ``(x, y)`` in heatmap pixels, pixel ``i`` centred at ``i``. Decoders see the heatmaps
flattened to ``[B, H, W]`` (``B`` = all leading dims) and return ``[B, 2]``; :func:`flat_maps` and
:func:`unflatten` convert.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

Decoder = Callable[..., Tensor]

#: name -> decoder ``fn(heatmaps, *, sigma=2.0, **options) -> [..., K, 2]``, filled by :func:`register`.
METHODS: dict[str, Decoder] = {}

#: decoded points may leave the map by at most this many heatmap px (a peak just outside the map is
#: still observable); it keeps degenerate fits finite and near the map.
MARGIN = 1.0


def register(name: str) -> Callable[[Decoder], Decoder]:
    """Decorator adding a decoder to :data:`METHODS` under ``name``.

    The registered decoder also takes empty batches (``[0, K, H, W]``, or ``K = 0``): it checks the options
    and the map size on one map of zeros, then returns an empty ``[..., K, 2]`` float32 tensor.
    """

    def add(fn: Decoder) -> Decoder:
        if name in METHODS:
            raise ValueError(f"decoder {name!r} is registered twice")

        @functools.wraps(fn)
        def decoder(heatmaps: Tensor, **options) -> Tensor:
            if isinstance(heatmaps, Tensor) and heatmaps.ndim >= 3 and heatmaps.numel() == 0:
                fn(heatmaps.new_zeros(1, *heatmaps.shape[-2:]), **options)
                return torch.zeros(*heatmaps.shape[:-2], 2, device=heatmaps.device)
            return fn(heatmaps, **options)

        METHODS[name] = decoder
        return decoder

    return add


def flat_maps(heatmaps: Tensor, min_size: int = 1) -> Tensor:
    """Check ``[..., K, H, W]`` heatmaps and view them as ``[B, H, W]`` (dtype and device unchanged).

    Raises ``TypeError`` for a non-tensor or non-float dtype, ``ValueError`` for rank < 3 or a side below
    ``min_size``. These checks read only the shape and dtype; the values are checked by :func:`peak`, in the
    pass that finds the maximum.
    """
    if not isinstance(heatmaps, Tensor):
        raise TypeError(f"heatmaps must be a torch.Tensor [..., K, H, W], got {type(heatmaps).__name__}")
    if heatmaps.ndim < 3:
        raise ValueError(f"heatmaps must have shape [..., K, H, W] (rank >= 3), got {tuple(heatmaps.shape)}")
    if not heatmaps.is_floating_point():
        raise TypeError(f"heatmaps must be float16, bfloat16, float32 or float64, got {heatmaps.dtype}")
    h, w = heatmaps.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"heatmaps must be at least {min_size} x {min_size} for this decoder, got {h} x {w}")
    return heatmaps.reshape(math.prod(heatmaps.shape[:-2]), h, w)


def unflatten(coords: Tensor, heatmaps: Tensor, finite: Tensor | None = None) -> Tensor:
    """``[B, 2]`` coordinates -> ``[..., K, 2]`` float32 with the leading dims of ``heatmaps``.

    With ``finite`` (bool ``[B]`` from :func:`peak`, given only while compiling or exporting), maps holding a
    NaN or an infinity get NaN coordinates; eager decoding raises for them instead.
    """
    coords = coords.float()
    if finite is not None:
        coords = torch.where(finite[:, None], coords, torch.nan)
    return coords.reshape(*heatmaps.shape[:-2], 2)


class Peak(NamedTuple):
    """Each map's maximum, from one reduction: ``x``, ``y`` int64 ``[B]`` (first maximum in row-major order),
    ``value`` ``[B]`` (the maps' dtype), and ``finite``: bool ``[B]`` (the map holds no NaN and no infinity)
    while compiling or exporting, ``None`` in eager mode (where a map that is not finite raised)."""

    x: Tensor
    y: Tensor
    value: Tensor
    finite: Tensor | None


def tracing() -> bool:
    """True while ``torch.compile`` or ``torch.export`` traces the code: no data-dependent branches then."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def peak(maps: Tensor) -> Peak:
    """The maximum of each ``[B, H, W]`` map, and the maps' finiteness check, without a separate finite pass.

    ``flat.max(-1)`` gives value and index in one pass (``argmax`` alone costs twice as much on CPU). A NaN
    shows in that maximum (``max`` propagates it) and so does ``+inf``; ``-inf`` shows only in a minimum.
    In eager mode, maps that are not all finite raise ``ValueError`` saying how many values are bad (one
    synchronisation on CUDA); the minimum there is the whole batch's, a plain reduction much cheaper than a
    per-map one or an ``isfinite`` pass. While compiling or exporting, a raise would be a data-dependent
    branch: ``finite`` is returned per map instead (the compiler fuses its ``amin`` with the ``max``), and
    :func:`unflatten` gives those maps NaN coordinates.
    """
    n, _, width = maps.shape
    flat = maps.reshape(n, -1)
    value, idx = flat.max(-1)
    x, y = idx % width, torch.div(idx, width, rounding_mode="floor")
    if tracing():
        return Peak(x, y, value, torch.isfinite(value) & (flat.amin(-1) > -math.inf))
    # NaN or +inf in a maximum, or -inf in the minimum, makes this sum non-finite; it may also overflow on
    # huge finite values, which the count clears
    if maps.numel() and not torch.isfinite(value.sum(dtype=torch.float32) - flat.amin().float()):
        bad = int((~torch.isfinite(maps)).sum())
        if bad:
            raise ValueError(f"heatmaps hold {bad} non-finite values (NaN or inf) out of {maps.numel()}")
    return Peak(x, y, value, None)


def argmax_xy(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Integer ``(x, y)`` of each map's maximum, two int64 ``[B]``; ties go to the first in row-major order.

    Checks the maps' values as :func:`peak` does.
    """
    found = peak(maps)
    return found.x, found.y


def window(maps: Tensor, cx: Tensor, cy: Tensor, side: int) -> tuple[Tensor, Tensor, Tensor]:
    """Float32 ``[B, h, w]`` window of side ``side`` (cut to the map) centred on ``(cx, cy)``.

    The window is shifted, not cut, at the borders, so it always lies inside the map: its top-left pixel
    ``(x0, y0)`` (two int64 ``[B]``, returned too) is ``c - side // 2`` clamped to ``[0, size - side]``.
    """
    n, height, width = maps.shape
    sy, sx = min(side, height), min(side, width)
    x0 = (cx - sx // 2).clamp(0, width - sx)
    y0 = (cy - sy // 2).clamp(0, height - sy)
    idx = (y0 * width + x0)[:, None, None] + torch.arange(sy, device=maps.device)[:, None] * width
    idx = idx + torch.arange(sx, device=maps.device)
    values = maps.reshape(n, -1).gather(1, idx.reshape(n, -1)).reshape(n, sy, sx)  # (gather beats index_select)
    return values.float(), x0, y0


def no_peak(values: Tensor) -> Tensor:
    """Bool ``[B]``: the pixels ``values [B, ...]`` around a maximum show no peak (all <= 0, or all equal).

    Fits are meaningless there; decoders return the argmax instead.
    """
    flat = values.reshape(values.shape[0], -1)
    top = flat.amax(-1)
    return (top <= 0) | (top == flat.amin(-1))


def clamp_to_map(coords: Tensor, height: int, width: int) -> Tensor:
    """Clamp ``[B, 2]`` points to the map extended by :data:`MARGIN` px on every side."""
    lo = torch.tensor([-MARGIN, -MARGIN], device=coords.device)
    hi = torch.tensor([width - 1 + MARGIN, height - 1 + MARGIN], device=coords.device)
    return torch.maximum(torch.minimum(coords, hi), lo)


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value: object, minimum: float, *, strict: bool = False, infinite: bool = False) -> float:
    """``value`` as a float ``>= minimum`` (``> minimum`` if ``strict``; ``+inf`` allowed if ``infinite``), else
    ``ValueError``."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (math.isfinite(value) or (infinite and value == math.inf))
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        raise ValueError(f"{name} must be a number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)
