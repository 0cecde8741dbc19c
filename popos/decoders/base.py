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
    """Each map's maximum, from one pass (:func:`first_max`): ``x``, ``y`` int64 ``[B]`` (first maximum in
    row-major order), ``value`` ``[B]`` (the maps' dtype), and ``finite``: bool ``[B]`` (the map holds no NaN
    and no infinity) while compiling or exporting, ``None`` in eager mode (where a map that is not finite
    raised)."""

    x: Tensor
    y: Tensor
    value: Tensor
    finite: Tensor | None


def tracing() -> bool:
    """True while ``torch.compile`` or ``torch.export`` traces the code: no data-dependent branches then."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


#: maps of at least ``16 * SEGMENT`` pixels (a multiple of it) find their maximum in segments (:func:`first_max`)
SEGMENT = 64


def first_max(maps: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Value ``[B]`` and flat index (int64 ``[B]``, row-major) of each ``[B, H, W]`` map's first maximum, and
    the maps' finiteness check; ``finite`` as in :class:`Peak`.

    One pass over the maps: ``flat.max(-1)`` on small maps. On large ones (32 x 32 and up) that pass, which
    tracks an index per value, costs about 4 plain maxima on a CPU, so the maximum of each segment of
    :data:`SEGMENT` pixels comes first (a vectorised ``amax``), then the first segment holding the largest and
    the first maximum in it: the same value and index, in about half the time.

    The check needs no ``isfinite`` pass. Eager: the float32 sum of all the maps is not finite iff a NaN or
    an infinity is among them (or huge finite values overflow it; a count then clears them), and a plain
    sum costs a fraction of the maximum; then ``ValueError`` says how many values are bad (reading the
    sum synchronises a GPU once). While compiling
    or exporting a raise would be a data-dependent branch: ``finite`` comes per map from the maximum (NaN
    and ``+inf`` show there) and the minimum (``-inf``), which the compiler fuses into one pass.
    """
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    pixels = flat.shape[1]
    if pixels >= 16 * SEGMENT and pixels % SEGMENT == 0:
        segments = flat.reshape(n, -1, SEGMENT)
        value, best = segments.amax(-1).max(-1)
        inner = segments.gather(1, best[:, None, None].expand(n, 1, SEGMENT))[:, 0].argmax(-1)
        index = best * SEGMENT + inner
    else:
        value, index = flat.max(-1)
    if tracing():
        return value, index, torch.isfinite(value) & (flat.amin(-1) > -math.inf)
    if not math.isfinite(flat.sum(dtype=torch.float32).item()):
        bad = int((~torch.isfinite(maps)).sum())
        if bad:
            raise ValueError(f"heatmaps hold {bad} non-finite values (NaN or inf) out of {maps.numel()}")
    return value, index, None


def peak(maps: Tensor) -> Peak:
    """The maximum of each ``[B, H, W]`` map and the maps' finiteness check, from one pass (:func:`first_max`).

    In eager mode maps holding a NaN or an infinity raise ``ValueError``; while compiling or exporting
    ``finite`` flags them instead, and :func:`unflatten` gives them NaN coordinates.
    """
    value, index, finite = first_max(maps)
    width = maps.shape[-1]
    return Peak(index % width, torch.div(index, width, rounding_mode="floor"), value, finite)


def peak_xy(maps: Tensor) -> tuple[Tensor, Tensor | None]:
    """Float32 ``[B, 2]`` ``(x, y)`` of each ``[B, H, W]`` map's first maximum, and ``finite`` as :func:`peak`.

    Eager, the coordinates are one lookup in a cached table of the pixels' ``(x, y)``: on small maps the
    arithmetic's four operations would cost a third of the maximum itself.
    """
    value, index, finite = first_max(maps)
    _, height, width = maps.shape
    if finite is not None:  # traced: arithmetic, no cached constant in the graph
        xy = torch.stack([index % width, torch.div(index, width, rounding_mode="floor")], -1)
        return xy.float(), finite
    return _pixel_xy(height, width, maps.device).index_select(0, index), None


@functools.cache
def _pixel_xy(height: int, width: int, device: torch.device) -> Tensor:
    """Float32 ``[H * W, 2]``: the ``(x, y)`` of each pixel of a map in row-major order."""
    y, x = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([x, y], -1).reshape(-1, 2).float()


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
    offsets = torch.arange(sy, device=maps.device)[:, None] * width + torch.arange(sx, device=maps.device)
    idx = (y0 * width + x0)[:, None] + offsets.flatten()
    values = maps.reshape(n, -1).gather(1, idx).reshape(n, sy, sx)  # (gather beats index_select)
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
