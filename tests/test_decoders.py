"""Decoders: tests generated from the registry, plus plain per-landmark references for the batched code."""

import math

import cv2
import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

import popos.decoders.popos_authors as authors_module
from popos import oracle
from popos.anchors import AUTHORS_OTHER, AUTHORS_SIZES
from popos.codec import encode_heatmaps
from popos.decoders import METHODS, VARIANTS, decode, default_anchors
from popos.decoders.base import argmax_xy
from popos.decoders.dark import opencv_gaussian_kernel
from popos.decoders.gaussian_fit import WindowModel
from popos.decoders.multilateration import (
    IGNO_ANCHORS,
    anchor_window,
    gauss_newton,
    keyposs_station,
    range_residuals,
    squared_range_newton,
    top_anchors,
)
from popos.oracle import mirror_heatmaps

SIZES = [64, 32, 16, 8, 4]
INPUT = 256  # errors are quoted in input px of a 256 crop: heatmap px x stride
EXACT = {"keyposs", "igno", "popos"}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def clean_tolerance(method: str, size: int) -> tuple[float, int]:
    """(largest error in input px, smallest distance of the points from the border in heatmap px)."""
    stride = INPUT / size
    argmax_bound = (math.sqrt(0.5) * stride, 0)  # the nearest pixel is within sqrt(2)/2 px
    table = {
        "keyposs": (0.01, 0),
        "igno": (0.01, 0),
        "popos": (0.01, 0),
        "two_hot": (math.sqrt(2) * 0.25 * stride, 1),  # within a quarter pixel per axis where refined
        # DarkPose needs the peak away from the zero-padded border; the step is clamped to 1 px per axis
        "dark": {64: (0.05, 4), 32: (0.5, 4)}.get(size, (math.sqrt(2) * 1.5 * stride, 0)),
    }
    return table.get(method, argmax_bound)  # any other method must at least match the argmax


def random_points(n: int, height: int, width: int, margin: float = 0.0, seed: int = 0) -> torch.Tensor:
    """``[n, 2]`` uniform points (x, y) at least ``margin`` px inside the pixel-centre box of the map."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 2, generator=g)
    return torch.stack([margin + u[:, 0] * (width - 1 - 2 * margin), margin + u[:, 1] * (height - 1 - 2 * margin)], -1)


def noisy(maps: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    return maps + std * torch.randn(maps.shape, generator=torch.Generator().manual_seed(seed))


def error_input_px(pred: torch.Tensor, truth: torch.Tensor, size: int) -> torch.Tensor:
    return (pred - truth).norm(dim=-1) * (INPUT / size)


# ---------------------------------------------------------------- registry and interface


def test_registry_holds_the_seven_methods():
    assert set(METHODS) == {"one_hot", "two_hot", "dark", "keyposs", "igno", "popos", "popos_authors"}
    ours = {"keyposs_peak": ("keyposs", {"block": "peak"}), "igno_damped": ("igno", {"solver": "damped"})}
    assert VARIANTS == {**{name: (name, {}) for name in METHODS}, **ours}


def test_decode_rejects_unknown_names_and_options():
    hm = encode_heatmaps(torch.tensor([[3.0, 4.0]]), 8)
    with pytest.raises(ValueError, match="available: one_hot, two_hot"):
        decode(hm, "argmaxx")
    with pytest.raises(ValueError, match="valid: kernel"):
        decode(hm, "dark", window=3)
    with pytest.raises(ValueError, match="valid: none"):
        decode(hm, "one_hot", anchors=3)


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("popos", {"window": 2}, "window must be an integer >= 3"),
        ("popos", {"iterations": -1}, "iterations must be an integer >= 0"),
        ("popos", {"near_window": 2}, "near_window must be an integer >= 3"),
        ("popos", {"shape_prior": float("nan")}, "shape_prior must be a number >= 0"),
        ("popos", {"window_test": -1.0}, "window_test must be a number >= 0"),
        ("popos", {"border_test": -1.0}, "border_test must be a number >= 0"),
        ("popos", {"border_test": float("inf")}, "border_test must be a number >= 0"),
        ("popos", {"sigma": 0.0}, "sigma must be a number > 0"),
        ("popos_authors", {"anchors": 2}, "anchors must be an integer >= 3"),
        ("popos_authors", {"samples_per_pixel": 0}, "samples_per_pixel must be a number > 0"),
        ("igno", {"anchors": 2}, "anchors must be an integer >= 3"),
        ("igno", {"objective": "ml"}, "objective must be one of 'l2', 'l1'"),
        ("dark", {"kernel": 4}, "kernel must be odd"),
        ("keyposs", {"sigma": -1.0}, "sigma must be a number > 0"),
    ],
)
def test_bad_option_values(method, options, match):
    with pytest.raises(ValueError, match=match):
        decode(torch.rand(1, 2, 8, 8), method, **options)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bad_heatmaps(method):
    hm = torch.rand(2, 3, 8, 8)
    hm[0, 1, 2, 2] = float("nan")
    hm[1, 0, 0, 5] = float("inf")
    with pytest.raises(ValueError, match="2 non-finite values"):
        decode(hm, method)
    with pytest.raises(ValueError, match=r"rank >= 3"):
        decode(torch.rand(8, 8), method)
    with pytest.raises(TypeError, match="float16, bfloat16, float32"):
        decode(torch.ones(1, 8, 8, dtype=torch.int64), method)
    with pytest.raises(TypeError, match="torch.Tensor"):
        METHODS[method](np.ones((1, 8, 8)))


@pytest.mark.parametrize("method", sorted(VARIANTS))
def test_input_is_not_modified(method):
    hm = noisy(encode_heatmaps(random_points(6, 16, 16), 16), 0.05)[None]
    before = hm.clone()
    decode(hm, method)
    assert torch.equal(hm, before)


def test_options_reach_the_decoder():
    pts = random_points(8, 32, 32, margin=3)
    hm = encode_heatmaps(pts, 32, sigma=2.6)  # wider than assumed
    start_only = error_input_px(decode(noisy(hm, 0.05), "popos", iterations=0), pts, 32)
    assert not torch.equal(start_only, error_input_px(decode(noisy(hm, 0.05), "popos"), pts, 32))
    assert error_input_px(decode(hm, "popos", window=5), pts, 32).max() < 0.01


# ---------------------------------------------------------------- accuracy on clean maps, every method x size


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_clean_maps(method, size):
    tol, margin = clean_tolerance(method, size)
    pts = random_points(40, size, size, margin, seed=size)
    err = error_input_px(METHODS[method](encode_heatmaps(pts, size)[None]), pts, size)
    assert err.max().item() <= tol


@pytest.mark.parametrize("size", [16, 4])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_peaks_on_and_beyond_the_border(method, size):
    last = size - 1
    # pixel centres on the border and corners, off-pixel border points, and points in the strip beyond the
    # last pixel centre that a 256 crop still covers (x up to W - 1/stride)
    on_pixels = [[0, 0], [last, last], [0, last // 2], [last, 1.0]]
    pts = torch.tensor(on_pixels + [[0.3, 0.0], [last - 0.2, last], [last + 0.4, 1.7], [1.2, -0.3]])
    err = error_input_px(METHODS[method](encode_heatmaps(pts, size)[None]), pts, size)[0]
    if method in EXACT:
        assert err.max().item() < 0.01
    else:  # the argmax-based methods decode pixel centres exactly and stay within 1.5 px otherwise
        # (the authors' grid: within its spacing, 2 input px, per axis)
        assert err[:4].max().item() < (1e-4 if method != "popos_authors" else 2 * math.sqrt(2))
        assert err.max().item() <= 1.5 * math.sqrt(2) * INPUT / size


@pytest.mark.parametrize("method", sorted(VARIANTS))
@pytest.mark.parametrize(
    "maps",
    [
        torch.zeros(2, 8, 8),
        torch.full((2, 8, 8), 0.3),
        -torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.full((2, 4, 4), -1.0),
        torch.full((2, 5, 7), 3.0),
    ],
    ids=["zero", "constant", "negative", "negative-constant", "above-one"],
)
def test_maps_without_a_peak_decode_inside_the_map(method, maps):
    out = decode(maps, method)
    h, w = maps.shape[-2:]
    assert torch.isfinite(out).all()
    assert (out[..., 0] >= 0).all() and (out[..., 0] <= w - 1).all()
    assert (out[..., 1] >= 0).all() and (out[..., 1] <= h - 1).all()


# ---------------------------------------------------------------- shapes, dtypes, devices


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", sorted(VARIANTS))
def test_half_precision_input_is_decoded_in_float32(method, dtype):
    hm = noisy(encode_heatmaps(random_points(12, 16, 16, seed=3), 16), 0.02)[None].to(dtype)
    out = decode(hm, method)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, decode(hm.float(), method), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", sorted(VARIANTS))
def test_leading_dims_and_non_square_maps(method):
    pts = random_points(2 * 3 * 5, 12, 20, seed=4).reshape(2, 3, 5, 2)
    hm = noisy(encode_heatmaps(pts, (12, 20)), 0.01)
    out = decode(hm, method)
    assert out.shape == (2, 3, 5, 2)
    torch.testing.assert_close(out.reshape(-1, 5, 2), decode(hm.reshape(-1, 5, 12, 20), method))
    if method in EXACT:
        clean = decode(encode_heatmaps(pts, (12, 20)), method)
        assert (clean - pts).norm(dim=-1).max().item() < 1e-3


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("method", sorted(VARIANTS))
def test_cuda_matches_cpu(method):
    hm = noisy(encode_heatmaps(random_points(20, 16, 16, seed=5), 16), 0.02)[None]
    out = decode(hm.cuda(), method)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), decode(hm, method), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- the batched code against plain references


def _argmax(h: np.ndarray) -> tuple[int, int]:
    iy, ix = np.unravel_index(np.argmax(h), h.shape)
    return int(ix), int(iy)


def _window(h: np.ndarray, ix: int, iy: int, side: int):
    """Values, x and y of a side x side window centred on (ix, iy), shifted to stay inside the map."""
    height, width = h.shape
    sy, sx = min(side, height), min(side, width)
    x0 = min(max(ix - sx // 2, 0), width - sx)
    y0 = min(max(iy - sy // 2, 0), height - sy)
    ys, xs = np.mgrid[y0 : y0 + sy, x0 : x0 + sx]
    return h[y0 : y0 + sy, x0 : x0 + sx].ravel(), xs.ravel(), ys.ravel()


def ref_keyposs(h: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    height, width = h.shape
    ix, iy = _argmax(h)
    blocks = [(min(max(ix + dx, 0), width - 2), min(max(iy + dy, 0), height - 2)) for dy in (-1, 0) for dx in (-1, 0)]
    x0, y0 = max(blocks, key=lambda b: h[b[1] : b[1] + 2, b[0] : b[0] + 2].sum())  # first of the best
    a = np.array([[x0, y0], [x0 + 1, y0], [x0, y0 + 1], [x0 + 1, y0 + 1]], dtype=float)
    d2 = -2 * sigma**2 * np.log(np.clip(h[a[:, 1].astype(int), a[:, 0].astype(int)], 1e-9, 1))
    # |a_i - p|^2 - |a_L - p|^2 = d_i^2 - d_L^2 is linear in p
    lhs = 2 * (a[-1] - a[:-1])
    rhs = d2[:-1] - d2[-1] - (a[:-1] ** 2).sum(1) + (a[-1] ** 2).sum()
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


def ref_top_anchors(h: np.ndarray, k: int):
    ix, iy = _argmax(h)
    v, xs, ys = _window(h, ix, iy, anchor_window(k))
    top = np.argsort(-v, kind="stable")[:k]
    return v[top], np.stack([xs[top], ys[top]], 1).astype(float)


def ref_igno(h: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    v, a = ref_top_anchors(h, IGNO_ANCHORS[h.shape[0]])
    d2 = -2 * sigma**2 * np.log(np.clip(v, 1e-9, 1))
    fit = least_squares(lambda p: ((a - p) ** 2).sum(1) - d2, np.array(_argmax(h), float), method="lm", xtol=1e-12)
    return fit.x


def ref_ml(h: np.ndarray, side: int = 9, sigma: float = 2.0) -> np.ndarray:
    ix, iy = _argmax(h)
    v, xs, ys = _window(h, ix, iy, side)

    def residual(t):
        return t[2] * np.exp(-((xs - t[0]) ** 2 + (ys - t[1]) ** 2) / (2 * sigma**2)) - v

    return least_squares(residual, np.array([ix, iy, v.max()], float), method="lm", xtol=1e-12).x[:2]


def ref_authors(h: np.ndarray) -> np.ndarray:
    size = h.shape[0]
    k, region = AUTHORS_SIZES[size]
    tau = size / 128
    n = int(region / tau)
    v, a = ref_top_anchors(h, k)
    d = np.sqrt(-8 * np.log(np.clip(v, 1e-9, 1)))
    st = ref_keyposs(h)
    gx = np.linspace(st[0] - region / 2 - tau / 2, st[0] + region / 2 - tau / 2, n)
    gy = np.linspace(st[1] - region / 2 - tau / 2, st[1] + region / 2 - tau / 2, n)
    rho = np.sqrt((gx[None, :, None] - a[:, 0]) ** 2 + (gy[:, None, None] - a[:, 1]) ** 2)  # [n_y, n_x, K]
    i, j = np.unravel_index(np.argmin(np.abs(rho - d).sum(-1)), (n, n))  # first minimum, row-major
    return np.array([gx[j], gy[i]])


def ref_dark(h: np.ndarray) -> np.ndarray:
    height, width = h.shape
    ix, iy = _argmax(h)
    blurred = cv2.GaussianBlur(np.pad(h, 5), (11, 11), 0)[5:-5, 5:-5]
    log = np.log(np.maximum(blurred * (h.max() / blurred.max()), 1e-10))
    out = np.array([ix, iy], float)
    if 1 < ix < width - 2 and 1 < iy < height - 2:
        dx = 0.5 * (log[iy, ix + 1] - log[iy, ix - 1])
        dy = 0.5 * (log[iy + 1, ix] - log[iy - 1, ix])
        dxx = 0.25 * (log[iy, ix + 2] - 2 * log[iy, ix] + log[iy, ix - 2])
        dyy = 0.25 * (log[iy + 2, ix] - 2 * log[iy, ix] + log[iy - 2, ix])
        dxy = 0.25 * (log[iy + 1, ix + 1] - log[iy - 1, ix + 1] - log[iy + 1, ix - 1] + log[iy - 1, ix - 1])
        out -= np.linalg.solve(np.array([[dxx, dxy], [dxy, dyy]]), np.array([dx, dy]))
    return out


@pytest.mark.parametrize(
    ("name", "reference", "size", "std", "atol"),
    [
        ("keyposs_peak", ref_keyposs, 16, 0.05, 1e-3),
        ("keyposs_peak", ref_keyposs, 4, 0.05, 1e-3),
        ("igno_damped", ref_igno, 16, 0.01, 2e-3),
        ("igno_damped", ref_igno, 8, 0.01, 2e-3),
        ("dark", ref_dark, 64, 0.002, 1e-3),
        ("dark", ref_dark, 16, 0.002, 1e-3),
    ],
)
def test_batched_decoder_matches_plain_reference(name, reference, size, std, atol):
    pts = random_points(24, size, size, margin=0.5, seed=6)
    hm = noisy(encode_heatmaps(pts, size), std, seed=7)
    want = np.stack([reference(m.double().numpy()) for m in hm])
    np.testing.assert_allclose(decode(hm[None], name)[0].numpy(), want, atol=atol)


@pytest.mark.parametrize("size", [16, 4])
def test_popos_with_a_firm_prior_is_the_maximum_likelihood_fit_of_known_width(size):
    pts = random_points(24, size, size, margin=0.5, seed=8)
    hm = 0.8 * noisy(encode_heatmaps(pts, size), 0.03, seed=9)
    want = np.stack([ref_ml(m.double().numpy()) for m in hm])
    firm = {"shape_prior": 1e-4, "window_test": math.inf, "border_test": 0.0, "iterations": 10}
    np.testing.assert_allclose(decode(hm[None], "popos", **firm)[0].numpy(), want, atol=2e-3)


def ref_ml_shape(h: np.ndarray, side: int = 9) -> np.ndarray:
    """The least-squares Gaussian of free amplitude, centre and covariance on a baseline, over the window."""
    ix, iy = _argmax(h)
    v, xs, ys = _window(h, ix, iy, side)

    def model(t):
        dx, dy = xs - t[0], ys - t[1]
        return t[2] * np.exp(-0.5 * (t[3] * dx * dx + 2 * t[4] * dx * dy + t[5] * dy * dy)) + t[6]

    start = np.array([ix, iy, v.max(), 0.25, 0.0, 0.25, 0.0])
    return least_squares(lambda t: model(t) - v, start, method="lm", xtol=1e-12, ftol=1e-12).x[:2]


@pytest.mark.parametrize("size", [16, 8])
def test_popos_free_shape_reaches_the_maximum_likelihood_fit(size):
    pts = random_points(24, size, size, margin=2, seed=40)
    hm = oracle.gaussian_maps(pts, size, torch.full((24,), 2.6), torch.full((24,), 1.8), torch.full((24,), 0.6))
    hm = 0.8 * noisy(hm, 0.01, seed=41) - 0.02
    want = np.stack([ref_ml_shape(m.double().numpy()) for m in hm])
    free = {"shape_prior": 0.0, "window_test": math.inf, "border_test": 0.0, "iterations": 10}
    np.testing.assert_allclose(decode(hm[None], "popos", **free)[0].numpy(), want, atol=2e-3)


# The authors' parameterisation on our float32 grid: what the branch-and-bound tests search.
def authors_preset(height: int, width: int) -> dict:
    """The authors' settings as options of our ``popos`` (``preset="authors"``) for an ``height x width`` map.

    An approximation of :func:`popos_authors` on our parts (our KeyPosS block, window anchors, float32
    grid), for varying one of our options at a time from the authors' setting.

    Their K and S come from :data:`AUTHORS_SIZES` (square maps); the sampling step is ``tau = H / 128``
    heatmap px (2 input px at a 256 input), so ``samples_per_pixel = 1 / tau`` and ``n = int(S / tau)``
    candidates per axis spanning ``S`` (spacing ``S / (n - 1)``), shifted by ``-tau / 2``, centred on the
    KeyPosS station; objective: sum of absolute range residuals; no amplitude handling; the grid
    optimum is returned as is. Their anchors are the top K of the whole map, ours of a window around the
    argmax large enough to hold them (the same set on a single peak).
    """
    anchors, region = AUTHORS_SIZES.get(height, AUTHORS_OTHER) if height == width else AUTHORS_OTHER
    tau = height / 128
    return dict(
        anchors=anchors,
        window=anchor_window(anchors),
        station="keyposs",
        region=region,
        samples_per_pixel=1 / tau,
        grid_offset=-tau / 2,
        objective="l1",
        amplitude="none",
        refine=0,
        border_ratio=0.0,
    )


def _grid(region: float, samples_per_pixel: float, offset: float, device: torch.device) -> torch.Tensor:
    """Candidate offsets along one axis: ``int(region * samples_per_pixel)`` points spanning ``region``."""
    n = max(1, math.floor(region * samples_per_pixel + 1e-9))
    steps = torch.linspace(-region / 2, region / 2, n, device=device) if n > 1 else torch.zeros(1, device=device)
    return steps + offset



def search_maps(size: int) -> torch.Tensor:
    """``[N, size, size]`` maps for the authors' grid search: clean, weak, noisy, random, flat, quantized
    (many equal values) and peaks on or beyond the border."""
    inside = random_points(40, size, size, seed=size)
    border = torch.tensor([[0.0, 0.0], [size - 1, 0.3], [0.2, size - 1], [size - 0.6, size - 0.6], [-0.4, 2.0]])
    clean = encode_heatmaps(torch.cat([inside, border]), size)
    uniform = torch.rand(20, size, size, generator=torch.Generator().manual_seed(size))
    flat = torch.cat([torch.full((2, size, size), 0.5), torch.zeros(2, size, size)])
    weak = [0.6 * clean, noisy(clean, 0.05, seed=1), noisy(0.3 * clean, 0.02, seed=2), (4 * clean).round() / 4]
    return torch.cat([clean, *weak, uniform, flat])


def authors_search(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' candidate index per map ``[N]``: branch and bound, and brute force (as :func:`popos`)."""
    size = maps.shape[-1]
    s = authors_preset(size, size)
    x, y = argmax_xy(maps)
    centre = keyposs_station(maps, x, y, 2.0)
    steps = _grid(s["region"], s["samples_per_pixel"], s["grid_offset"], maps.device)
    values, anchors = top_anchors(maps, x, y, s["anchors"], s["window"])
    d2 = -8 * values.clamp(1e-9, 1).log()
    cx, cy = (centre[:, :, None] + steps).unbind(1)
    scores = authors_module._range_grid_scores(anchors, d2, cx, cy, "l1", False)
    a = anchors[:, None, None]
    rho = ((a[..., 1] - cy[:, :, None, None]) ** 2 + (a[..., 0] - cx[:, None, :, None]) ** 2).sqrt()
    assert torch.equal(scores, (rho - d2.sqrt()[:, None, None]).abs().sum(-1))  # the plain formula, to the bit
    return authors_module._l1_search(anchors, d2, centre, steps), scores.flatten(1).argmin(-1)


@pytest.mark.parametrize("size", SIZES)
def test_authors_search_is_the_brute_force_bit_for_bit(size, monkeypatch):
    maps = search_maps(size)
    fast, brute = authors_search(maps)
    assert torch.equal(fast, brute)
    decoded = decode(maps[None], "popos_authors")
    monkeypatch.setattr(authors_module, "_l1_levels", lambda _: [])  # the brute force only
    assert torch.equal(decode(maps[None], "popos_authors"), decoded)
    # most maps over the cell budget (brute force), in several chunks
    monkeypatch.undo()
    monkeypatch.setattr(authors_module, "L1_CELLS", 2)
    monkeypatch.setattr(authors_module, "CHUNK_ELEMENTS", 20_000)
    fast, brute = authors_search(maps)
    assert torch.equal(fast, brute)


def test_authors_search_breaks_exact_ties_as_the_brute_force():
    # anchors on the diagonal and a grid centred on it: the cost of (i, j) and (j, i) is the same to the bit
    g = torch.Generator().manual_seed(3)
    anchors = (6 + 4 * torch.rand(60, 10, 1, generator=g)).expand(-1, -1, 2)
    d2 = 4 * torch.rand(60, 10, generator=g)
    centre = torch.full((60, 2), 7.0)
    steps = _grid(2.0, 32.0, -1 / 64, centre.device)
    cx, cy = (centre[:, :, None] + steps).unbind(1)
    scores = authors_module._range_grid_scores(anchors, d2, cx, cy, "l1", False)
    assert torch.equal(scores, scores.transpose(1, 2))
    brute = scores.flatten(1).argmin(-1)
    assert (brute // 64 < brute % 64).sum() >= 10  # the first of two tied candidates
    assert torch.equal(authors_module._l1_search(anchors, d2, centre, steps), brute)


def test_authors_search_levels():
    assert [authors_module._l1_levels(n) for n in (16, 32, 48, 64)] == [[4, 2], [8, 4, 2], [8, 4, 2], [16, 8, 4, 2]]
    assert authors_module._l1_levels(12) == [2] and authors_module._l1_levels(6) == authors_module._l1_levels(45) == []


def test_opencv_kernels():
    # OpenCV 5 added a fixed 9-tap kernel; OpenCV 4 (as upstream used) samples the Gaussian there
    for size in [1, 3, 5, 7, 11, 13, 15]:
        want = cv2.getGaussianKernel(size, 0)[:, 0]
        np.testing.assert_allclose(opencv_gaussian_kernel(size).numpy(), want, atol=1e-12)


# ---------------------------------------------------------------- behaviour of individual methods


def test_two_hot_refines_each_axis_where_its_neighbours_exist():
    hm = torch.zeros(3, 6, 6)
    hm[0, 3, 1], hm[0, 3, 2], hm[0, 2, 1] = 1.0, 0.5, 0.2  # peak at x=1 (mmpose skips x=1): right, up
    hm[1, 0, 3], hm[1, 0, 4], hm[1, 1, 3] = 1.0, 0.1, 0.6  # peak on the top row: x refined, y not
    hm[2, 4, 4], hm[2, 4, 3], hm[2, 4, 5] = 1.0, 0.3, 0.3  # equal neighbours: no shift
    assert decode(hm[None], "two_hot")[0].tolist() == [[1.25, 2.75], [3.25, 0.0], [4.0, 4.0]]


def test_dark_is_argmax_where_its_stencil_does_not_fit():
    pts = torch.tensor([[1.3, 2.6], [1.6, 1.2]])
    hm = encode_heatmaps(pts, 4)[None]
    assert torch.equal(decode(hm, "dark"), decode(hm, "one_hot"))


@pytest.mark.parametrize("size", SIZES)
def test_authors_preset_error_is_its_grid_offset(size):
    pts = random_points(30, size, size, margin=2, seed=12)
    err = error_input_px(decode(encode_heatmaps(pts, size)[None], "popos_authors")[0], pts, size)
    s = authors_preset(size, size)
    n = int(s["region"] * s["samples_per_pixel"])
    offsets = torch.linspace(-s["region"] / 2, s["region"] / 2, n) + s["grid_offset"]
    nearest = offsets.abs().min().item()  # the exact station is this far from the nearest grid line
    torch.testing.assert_close(err, torch.full_like(err, math.sqrt(2) * nearest * INPUT / size), atol=2e-3, rtol=0)


def test_authors_table_matches_upstream_constants():
    n = [int(authors_preset(s, s)["region"] * authors_preset(s, s)["samples_per_pixel"]) for s in SIZES]
    assert n == [16, 32, 32, 48, 64]  # int(S / tau), tau = H / 128
    assert [authors_preset(s, s)["anchors"] for s in SIZES] == [30, 10, 20, 15, 10]
    assert authors_preset(64, 64)["grid_offset"] == -0.25
    assert authors_preset(48, 48)["anchors"] == 30 and authors_preset(48, 48)["region"] == 8.0
    s = authors_preset(16, 16)
    assert (s["objective"], s["amplitude"], s["refine"], s["station"]) == ("l1", "none", 0, "keyposs")


@pytest.mark.parametrize("size", [16, 4])
def test_amplitude_breaks_the_authors_decoders_but_not_ours(size):
    pts = random_points(30, size, size, margin=0.5, seed=13)
    hm = 0.7 * encode_heatmaps(pts, size)[None]
    ours = error_input_px(decode(hm, "popos"), pts, size)
    authors = error_input_px(decode(hm, "popos_authors"), pts, size)
    igno = error_input_px(decode(hm, "igno"), pts, size)
    assert ours.max() < 0.01
    assert authors.mean() > 5 and igno.mean() > 3  # upstream: 13 and 3.8 px at 16, 65 and 63 px at 4


@pytest.mark.parametrize(
    ("method", "amplitude", "std"),
    # keyposs clips h at 1, so it is invariant only while no value exceeds 1
    [("popos", 0.3, 0.02), ("popos", 0.7, 0.02), ("popos", 2.0, 0.02), ("keyposs", 0.3, 0.0), ("keyposs", 0.7, 0.0)],
)
def test_amplitude_invariance(method, amplitude, std):
    pts = random_points(20, 16, 16, seed=14)
    hm = noisy(encode_heatmaps(pts, 16), std, seed=15)[None]
    torch.testing.assert_close(decode(amplitude * hm, method), decode(hm, method), atol=2e-3, rtol=0)


@pytest.mark.parametrize("method", ["one_hot", "two_hot", "dark", "popos"])
@pytest.mark.parametrize("size", [16, 4])
def test_amplitude_invariance_over_the_float32_range(method, size):
    # a unit map scaled by a power of two is the same map to the bit, so the result must be too (popos was
    # off by 1.4 px at 1e20 and 2 px at 1e-30, DarkPose's log floor moved it below ~1e-10)
    hm = noisy(encode_heatmaps(random_points(20, size, size, seed=42), size), 0.02, seed=43)[None]
    want = decode(hm, method)
    for amplitude in (2.0**-100, 2.0**-60, 2.0**60, 2.0**100):
        assert torch.equal(decode(amplitude * hm, method), want), amplitude
    for amplitude in (1e-30, 1e-20, 1e20, 1e30):  # not powers of two: rounding of the values only
        torch.testing.assert_close(decode(amplitude * hm, method), want, atol=1e-3, rtol=0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_empty_batches(method):
    for shape in [(0, 5, 16, 16), (2, 0, 16, 16), (0, 16, 16)]:
        out = decode(torch.zeros(shape), method)
        assert out.shape == (*shape[:-2], 2) and out.dtype == torch.float32
    with pytest.raises(TypeError, match="float16, bfloat16, float32"):
        decode(torch.zeros(0, 5, 16, 16, dtype=torch.int64), method)
    with pytest.raises(ValueError, match="at least"):
        decode(torch.zeros(0, 5, 1, 0), method)
    if method == "popos":  # options are checked on empty batches too
        with pytest.raises(ValueError, match="window must be"):
            decode(torch.zeros(0, 5, 16, 16), method, window=1)


def test_popos_is_the_most_accurate_under_noise():
    pts = random_points(96, 16, 16, margin=2, seed=16)
    hm = noisy(encode_heatmaps(pts, 16), 0.05, seed=17)[None]
    err = {v: error_input_px(decode(hm, v), pts, 16).mean().item() for v in VARIANTS}
    assert err["popos"] == min(err.values())
    assert err["popos"] < 0.85 * min(err["igno"], err["popos_authors"], err["dark"])


@pytest.mark.parametrize("size", SIZES)
def test_popos_is_exact_on_clean_gaussians_of_any_width_and_orientation(size):
    # widths 1 to 4 heatmap px, axis ratio up to 2, any angle, any amplitude; points at least the larger
    # width from the border (on maps too small for that, at the centre)
    g = torch.Generator().manual_seed(size)
    n = 120
    minor = 1 + 2 * torch.rand(n, generator=g)
    major = torch.minimum(minor * (1 + torch.rand(n, generator=g)), torch.tensor(4.0))
    margin = torch.minimum(major, torch.tensor((size - 1) / 2))
    pts = margin[:, None] + torch.rand(n, 2, generator=g) * (size - 1 - 2 * margin[:, None])
    hm = oracle.gaussian_maps(pts, size, major, minor, torch.pi * torch.rand(n, generator=g))
    hm = hm * (0.3 + torch.rand(n, 1, 1, generator=g))
    assert error_input_px(decode(hm[None], "popos")[0], pts, size).max() < 0.01


def test_popos_keeps_to_the_pixels_near_the_argmax_beside_a_second_peak():
    pts = random_points(60, 32, 32, margin=9, seed=44)
    angle = 2 * torch.pi * torch.rand(60, generator=torch.Generator().manual_seed(45))
    second = pts + 6 * torch.stack([angle.cos(), angle.sin()], -1)
    hm = (encode_heatmaps(pts, 32) + 0.5 * encode_heatmaps(second, 32))[None]
    whole = error_input_px(decode(hm, "popos", window_test=math.inf), pts, 32).mean()
    near = error_input_px(decode(hm, "popos"), pts, 32).mean()
    assert whole > 2.0 and near < 0.5  # here 3.4 -> 0.40 input px


def test_popos_fits_a_baseline_where_one_shows():
    pts = random_points(60, 16, 16, margin=2, seed=46)
    hm = (encode_heatmaps(pts, 16) - 0.1)[None]
    plain = error_input_px(decode(hm, "popos", shape_prior=1e-4), pts, 16).max()  # the prior: no baseline
    assert plain > 0.02 and error_input_px(decode(hm, "popos"), pts, 16).max() < 0.05
    converged = {"shape_prior": 0.0, "window_test": math.inf, "iterations": 6}  # the model holds it exactly
    assert error_input_px(decode(hm, "popos", **converged), pts, 16).max() < 0.01


def flip_test_maps(pts: torch.Tensor, size: int) -> torch.Tensor:
    """``[n, size, size]`` heatmaps of a flip test that averages maps (mirror back by linear interpolation,
    the column the mirror does not cover copied from its neighbour), for heatmap-px points ``[n, 2]``."""
    stride = INPUT / size
    mirrored = torch.stack([(INPUT - 1) / stride - pts[:, 0], pts[:, 1]], -1)
    return 0.5 * (encode_heatmaps(pts, size) + mirror_heatmaps(encode_heatmaps(mirrored, size), INPUT))


@pytest.mark.parametrize(("size", "off"), [(32, 0.08), (16, 0.2), (8, 1.0), (4, 2.0)])
@pytest.mark.parametrize("options", [{}, {"window_test": math.inf}])
def test_border_line_test_drops_a_flip_tests_copied_column(size, off, options):
    pts = random_points(200, size, size, margin=0.5, seed=30)
    hm = flip_test_maps(pts, size)[None]
    plain = error_input_px(decode(hm, "popos", border_test=0, **options)[0], pts, size).mean()
    tested = error_input_px(decode(hm, "popos", **options)[0], pts, size).mean()
    assert plain > off and tested < 0.15  # windows narrower than the map (32, 16) test one column, others both
    # clean maps never trip it, and away from the border it changes nothing
    clean = encode_heatmaps(pts, size)[None]
    assert error_input_px(decode(clean, "popos")[0], pts, size).max() < 0.01
    inner = noisy(encode_heatmaps(random_points(50, 32, 32, margin=8, seed=31), 32), 0.05)[None]
    assert torch.equal(decode(inner, "popos"), decode(inner, "popos", border_test=0))


@pytest.mark.parametrize("baseline", [True, False])
def test_window_sums_of_disjoint_pixels_add_up_and_predict_the_linear_residuals(baseline):
    # the border-line test takes a line's sums out of the window's and predicts the rss after a step from them
    gen = torch.Generator().manual_seed(34)
    side, n = 5, 6
    model = WindowModel(side, sigma=2.0, baseline=baseline, shape_prior=0.0, device=torch.device("cpu"))
    g = torch.rand(side * side, n, generator=gen) + 0.1
    used = (torch.rand(side * side, n, generator=gen) > 0.2).float()
    residuals = torch.randn(side * side, n, generator=gen) * used
    line = torch.arange(side) * side  # the first column
    rest = torch.ones(side * side, 1)
    rest[line] = 0
    whole = model.moments(g, residuals, used)
    parts = model.moments(g[line], residuals[line], used[line], line) + model.moments(g, residuals * rest, used * rest)
    torch.testing.assert_close(parts, whole)
    sums = model.unpack(whole)
    ones = [torch.ones(side * side, 1, n)] if baseline else []
    jacobian = torch.cat([g[:, None] * model.mono.T[..., None]] + ones, 1)  # [P, k, B]
    step = torch.randn(model.dof, n, generator=gen) * 0.1
    after = residuals - torch.einsum("pkb,kb->pb", jacobian, step) * used
    torch.testing.assert_close(sums.rss_after(step), after.square().sum(0), rtol=1e-4, atol=1e-5)
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(sums.jtj, torch.einsum("pib,pjb->ijb", jacobian * used[:, None], jacobian), **close)
    torch.testing.assert_close(sums.jtr, torch.einsum("pkb,pb->kb", jacobian, residuals), **close)
    torch.testing.assert_close(sums.count, used.sum(0))


def test_border_line_test_costs_little_under_noise():
    pts = random_points(400, 4, 4, margin=0.5, seed=32)
    hm = noisy(encode_heatmaps(pts, 4), 0.05, seed=33)[None]
    plain = error_input_px(decode(hm, "popos", border_test=0)[0], pts, 4).mean()
    tested = error_input_px(decode(hm, "popos")[0], pts, 4).mean()
    assert tested < 1.02 * plain

def test_default_anchors_is_the_window_popos_uses():
    assert [default_anchors(s) for s in SIZES] == [81, 81, 81, 64, 16]
    hm = noisy(encode_heatmaps(random_points(10, 16, 16, seed=19), 16), 0.03)[None]
    # the window of that many pixels is the default; a smaller one changes the fit
    assert torch.equal(decode(hm, "popos", window=math.isqrt(default_anchors(16))), decode(hm, "popos"))
    assert not torch.equal(decode(hm, "popos", window=5), decode(hm, "popos"))
    with pytest.raises(ValueError, match="heatmap_size"):
        default_anchors(0)


def test_chunked_search_gives_the_same_result(monkeypatch):
    pts = random_points(50, 8, 8, seed=20)
    hm = noisy(encode_heatmaps(pts, 8), 0.03)[None]
    whole = decode(hm, "popos_authors")
    monkeypatch.setattr(authors_module, "CHUNK_ELEMENTS", 10_000)
    assert len(authors_module._chunks(50, 48 * 48 * 15)) == 50  # authors at 8x8: one heatmap per chunk
    assert torch.equal(decode(hm, "popos_authors"), whole)


@pytest.mark.parametrize(("size", "amplitude"), [(16, 1.0), (8, 0.6), (4, 0.6)])
def test_igno_never_returns_a_worse_point_than_its_start(size, amplitude):
    # peaks below 1 make the Hessian indefinite at many starts
    hm = noisy(amplitude * encode_heatmaps(random_points(64, size, size, seed=21), size), 0.08, seed=22)
    maps = hm.reshape(-1, size, size)
    x, y = maps.reshape(64, -1).argmax(-1) % size, maps.reshape(64, -1).argmax(-1) // size
    k = IGNO_ANCHORS[size]
    values, coords = top_anchors(maps, x, y, k, anchor_window(k))
    evaluate = range_residuals(coords, -8 * torch.log(values.clamp(1e-9, 1)), "l2")
    start = torch.stack([x.float(), y.float(), torch.zeros(64)], -1)
    end = torch.cat([decode(hm[None], "igno_damped")[0], torch.zeros(64, 1)], -1)
    assert (evaluate(end)[0] <= evaluate(start)[0] + 1e-3).all()


@pytest.mark.parametrize("size", [16, 8])
def test_igno_reaches_the_least_squares_fit_of_under_confident_peaks(size):
    # peaks below 1: the ranges do not meet in a point, and 20 Gauss-Newton steps stop short of the fit
    pts = random_points(24, size, size, margin=0.5, seed=6)
    amplitude = 0.6 + 0.4 * torch.rand(24, 1, 1, generator=torch.Generator().manual_seed(5))
    hm = noisy(amplitude * encode_heatmaps(pts, size), 0.02, seed=7)
    want = np.stack([ref_igno(m.double().numpy()) for m in hm])
    np.testing.assert_allclose(decode(hm[None], "igno_damped")[0].numpy(), want, atol=2e-3)


def test_squared_range_newton_leaves_a_saddle_for_the_minimum():
    # a 5 x 5 grid of anchors, every range too long by 6 px^2: the cost is minimal on the circle of
    # radius sqrt(2) around the grid's centre, which is a local maximum; Newton's own step from near
    # the centre would go back to it
    grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="xy"), -1).reshape(1, 25, 2)
    anchors = 8 + grid.expand(2, -1, -1)
    d2 = ((anchors - 10) ** 2).sum(-1) + 6
    end = squared_range_newton(anchors, d2, torch.tensor([[10.1, 10.0], [10.0, 9.9]]), 20)
    r = math.sqrt(2)
    torch.testing.assert_close(end, torch.tensor([[10 + r, 10.0], [10.0, 10 - r]]), atol=1e-4, rtol=0)


def test_squared_range_residuals_match_their_per_anchor_definition():
    # anchors far from the origin: the cost assembled from per-heatmap sums must not cancel
    g = torch.Generator().manual_seed(4)
    anchors = 60 + 4 * torch.rand(5, 30, 2, generator=g)
    d2 = 10 * torch.rand(5, 30, generator=g)
    theta = torch.cat([61 + 2 * torch.rand(5, 2, generator=g), torch.randn(5, 1, generator=g)], -1)
    cost, jtj, jtr = range_residuals(anchors, d2, "l2")(theta)
    u = anchors.double() - theta[:, None, :2].double()
    r = (u * u).sum(-1) + theta[:, 2:].double() - d2.double()
    jac = torch.cat([-2 * u, torch.ones_like(r)[..., None]], -1)
    torch.testing.assert_close(cost, (r * r).sum(-1), rtol=1e-10, atol=0)
    torch.testing.assert_close(jtj, (jac.mT @ jac).float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(jtr, (jac.mT @ r[..., None])[..., 0].float(), rtol=1e-5, atol=1e-4)


def test_gauss_newton_solves_a_range_problem_and_respects_fixed_parameters():
    anchors = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [4.0, 3.0]]])
    truth = torch.tensor([1.5, 2.0])
    d2 = ((anchors[0] - truth) ** 2).sum(-1)[None] + 0.7  # a common offset c = 0.7
    evaluate = range_residuals(anchors, d2, "l2")
    start = torch.tensor([[3.0, 0.5, 0.0]])
    free = gauss_newton(evaluate, start, 30, free=(True, True, True))
    torch.testing.assert_close(free, torch.tensor([[1.5, 2.0, 0.7]]), atol=1e-4, rtol=0)
    fixed = gauss_newton(evaluate, start, 30, free=(True, True, False))
    assert fixed[0, 2].item() == 0.0 and (fixed[0, :2] - truth).norm() > 1e-2


def test_gauss_newton_dropping_converged_rows_changes_nothing_beyond_tol():
    # peaks at 0.6-1 with noise make the range equations inconsistent, so Gauss-Newton converges only
    # linearly and rows stop at different iterations: the compacted run must match the full-batch one
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(4, 50, 2, generator=g) * 24 + 4
    hm = encode_heatmaps(pts, 32) * (0.6 + 0.4 * torch.rand(4, 50, 1, 1, generator=g))
    maps = (hm + 0.02 * torch.randn(hm.shape, generator=g)).reshape(-1, 32, 32)
    x, y = maps.reshape(200, -1).argmax(-1) % 32, maps.reshape(200, -1).argmax(-1) // 32
    values, coords = top_anchors(maps, x, y, 30, 7)
    d2 = -8 * torch.log(values.clamp(1e-9, 1))
    start = torch.stack([x.float(), y.float(), torch.zeros(200)], -1)
    full = gauss_newton(range_residuals(coords, d2, "l2"), start, 20, free=(True, True, False))
    compact = gauss_newton(
        range_residuals(coords, d2, "l2"), start, 20, free=(True, True, False),
        restrict=lambda rows: range_residuals(coords[rows], d2[rows], "l2"),
    )
    assert (full - compact).abs().max() < 0.01
