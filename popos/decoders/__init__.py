"""Heatmap decoders: ``decode(heatmaps, method, **options)`` and the registry of methods.

``heatmaps [..., K, H, W]`` (any leading dims; float16, bfloat16 or float32, computed in float32; CPU or
CUDA) -> ``[..., K, 2]`` float32 ``(x, y)`` in heatmap px on the same device, pixel ``i`` centred at ``i``
(input px = heatmap px x stride, see :mod:`popos.geometry`). ``sigma`` is the Gaussian's standard
deviation in heatmap px.

Seven methods (:data:`METHODS`): ``one_hot``, ``two_hot`` (:mod:`.argmax`), ``dark`` (:mod:`.dark`),
``keyposs``, ``igno`` (:mod:`.multilateration`), ``popos`` (ours, :mod:`.popos`) and ``popos_authors``
(the authors' released decoder, :mod:`.popos_authors`). :data:`VARIANTS` names each with its options, plus
``keyposs_peak`` and ``igno_damped``, our variants of KeyPosS and IGNO (``keyposs``, ``igno`` and
``popos_authors`` reproduce the authors' code bit for bit).

>>> import torch
>>> from popos.codec import encode_heatmaps
>>> hm = encode_heatmaps(torch.tensor([[[10.3, 20.7]]]), 64)  # [1, 1, 64, 64]
>>> decode(hm, "popos").tolist()
[[[10.300000190734863, 20.700000762939453]]]
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from popos.decoders import argmax, dark, multilateration, popos, popos_authors  # noqa: F401 (registers the methods)
from popos.decoders.base import METHODS, register
from popos.decoders.popos import default_anchors

#: display name -> (method, options): every method under its own name, and the authors' POPoS
VARIANTS: dict[str, tuple[str, dict]] = {name: (name, {}) for name in METHODS}
# ours, beside the published methods (which their names reproduce bit for bit): KeyPosS on the best
# 2 x 2 block containing the argmax, and IGNO damped, never worse than its start
VARIANTS["keyposs_peak"] = ("keyposs", {"block": "peak"})
VARIANTS["igno_damped"] = ("igno", {"solver": "damped"})

__all__ = ["METHODS", "VARIANTS", "compiled", "decode", "default_anchors", "register", "resolve_variants"]


def _bound(method: str, sigma: float, options: dict) -> Callable[[Tensor], Tensor]:
    """The registered decoder of a method or variant name with its options bound (checked by name here, by
    value in the decoder)."""
    if method not in VARIANTS:
        raise ValueError(f"unknown decoder {method!r}; available: {', '.join(VARIANTS)}")
    name, preset = VARIANTS[method]
    fn = METHODS[name]
    if options:
        allowed = _options(fn)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"decoder {method!r} has no option(s) {unknown}; valid: {', '.join(allowed) or 'none'}")
        preset = {**preset, **options}
    return functools.partial(fn, sigma=sigma, **preset)


@functools.cache
def _options(fn: Callable) -> tuple[str, ...]:
    """The options a registered decoder takes: its keyword-only parameters but ``sigma`` (looking them up
    costs more than decoding a small batch, hence the cache)."""
    return tuple(p for p, v in inspect.signature(fn).parameters.items() if v.kind is v.KEYWORD_ONLY and p != "sigma")


def decode(heatmaps: Tensor, method: str, *, sigma: float = 2.0, compile: bool = False, **options) -> Tensor:
    """Decode ``[..., K, H, W]`` heatmaps with a method or variant name -> ``[..., K, 2]`` heatmap px.

    ``method`` is a key of :data:`METHODS` or :data:`VARIANTS`; ``options`` override the variant's.
    Unknown names and options raise ``ValueError`` listing the valid ones. ``compile=True`` runs the
    decoder through :func:`compiled` (same results to 1e-4 px; maps that are not finite give NaN there).
    """
    if compile:
        return compiled(method, sigma=sigma, **options)(heatmaps)
    return _bound(method, sigma, options)(heatmaps)


#: (method, sigma, options) -> compiled decoder, filled by :func:`compiled`
_COMPILED: dict[tuple, Callable[[Tensor], Tensor]] = {}
#: graphs torch.compile may keep per decoder function (torch's default, 8, is less than 5 map sizes x
#: 2 variants x batch 1 or not; past it, calls silently run eager)
RECOMPILE_LIMIT = 64


def compiled(method: str, *, sigma: float = 2.0, **options) -> Callable[[Tensor], Tensor]:
    """A ``torch.compile``d decoder ``fn(heatmaps [..., K, H, W]) -> [..., K, 2]`` heatmap px, cached.

    One compiled function per method, ``sigma`` and options; within it ``torch.compile`` keeps one graph
    per device, dtype and map size (its guards), and the batch dimension (all leading dims, flattened) is
    dynamic, so a new batch size does not recompile (only batch 1 gets its own graph). The first call on
    a new device or size compiles (seconds on CPU). The eager decoders (:func:`decode`) stay the reference;
    where a map holds a NaN or an infinity the compiled ones return NaN coordinates for it instead of
    raising (:func:`popos.decoders.base.peak`), except decoders that do not pass the check on.
    Raises ``torch._dynamo.config.recompile_limit`` to at least :data:`RECOMPILE_LIMIT`.
    """
    _bound(method, sigma, options)  # unknown names and options fail here, not at the first call
    key = (method, float(sigma), tuple(sorted(options.items())))
    if key not in _COMPILED:
        name, preset = VARIANTS[method]
        eager = METHODS[name]
        # the decoder itself, not a partial or the registry's wrapper: torch.compile counts graphs per
        # function, and those are shared by every method
        graph = torch.compile(eager.__wrapped__)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        kwargs = {"sigma": sigma, **preset, **options}

        def run(heatmaps: Tensor) -> Tensor:
            if not isinstance(heatmaps, Tensor) or heatmaps.ndim < 3 or heatmaps.numel() == 0:
                return eager(heatmaps, **kwargs)  # the eager decoder's errors and empty result
            maps = heatmaps.reshape(-1, *heatmaps.shape[-2:])
            torch._dynamo.maybe_mark_dynamic(maps, 0)
            return graph(maps, **kwargs).reshape(*heatmaps.shape[:-2], 2)

        _COMPILED[key] = run
    return _COMPILED[key]


def resolve_variants(
    names: Sequence[str], popos_options: Mapping | None = None, *, compile: bool = False
) -> dict[str, tuple[str, dict]]:
    """Decoder variant names -> ``{name: (method, options)}`` from ``popos.decoders.VARIANTS``.

    ``popos_options`` (params ``decode.popos``) override the options of the ``popos`` variant; ``compile``
    (params ``decode.compile``) adds ``compile=True`` to every variant's options, for :func:`decode`.
    """
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"decode.methods: unknown variant(s) {unknown}; available: {sorted(VARIANTS)}")
    out = {n: (VARIANTS[n][0], dict(VARIANTS[n][1])) for n in names}
    if "popos" in out and popos_options:
        out["popos"] = (out["popos"][0], {**out["popos"][1], **popos_options})
    if compile:
        out = {n: (method, {**options, "compile": True}) for n, (method, options) in out.items()}
    return out
