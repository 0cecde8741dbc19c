"""The decoders named after published methods (``keyposs``, ``igno``, ``popos_authors``) against plain NumPy
references of the authors' released code, written from its description (issue 10 and the paper's
repository, teslatasy/POPoS ``mmpose/core/utils/trilateration.py``): the KeyPosS block rule and float32
solve, the POPoS float64 grid and candidate choice, and the undamped Gauss-Newton loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from popos.codec import encode_heatmaps
from popos.decoders import decode
from popos.decoders.multilateration import (
    IGNO_ANCHORS,
    _lls_matrix,
    authors_argmax,
    authors_block,
    authors_station,
)
from popos.decoders.popos_authors import AUTHORS_SIZES, authors_grid, numpy_sum

SIZES = (64, 32, 16, 8, 4)
f32 = np.float32


# ---------------------------------------------------------------- NumPy references


def ref_start(h: np.ndarray) -> tuple[float, float]:
    """mmpose's argmax: first maximum (row-major), (-1, -1) if it is not positive."""
    iy, ix = np.unravel_index(np.argmax(h), h.shape)
    return (float(ix), float(iy)) if h.max() > 0 else (-1.0, -1.0)


def ref_block(h: np.ndarray, start: tuple[float, float]) -> tuple[int, int]:
    """Top-left (x0, y0) of the authors' 2 x 2 block: corners from 2 px above/left of ``c = int(start + 0.5)``,
    ``max(c - 2, 0) + range(min(c + 3, size) - max(c - 2, 0) - 2)`` per axis, rows outer; ``>=`` keeps the
    last of equal float32 sums; the first block stays unless a sum reaches -99999999."""
    height, width = h.shape
    cx, cy = int(start[0] + 0.5), int(start[1] + 0.5)
    xmin, ymin = max(cx - 2, 0), max(cy - 2, 0)
    xmax, ymax = min(cx + 3, width), min(cy + 3, height)
    best, corner = -99999999.0, (xmin, ymin)
    for y0 in range(ymin, ymin + max(ymax - ymin - 2, 0)):
        for x0 in range(xmin, xmin + max(xmax - xmin - 2, 0)):
            total = ((f32(h[y0, x0]) + f32(h[y0, x0 + 1])) + f32(h[y0 + 1, x0])) + f32(h[y0 + 1, x0 + 1])
            if total >= best:
                best, corner = total, (x0, y0)
    return corner


def ref_ranges(values: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    return np.sqrt(-2.0 * sigma * sigma * np.log(np.clip(values.astype(np.float64), 1e-9, 1.0)))


def ref_station(h: np.ndarray, start: tuple[float, float]) -> np.ndarray:
    """KeyPosS: the block's 4 pixels (row-major), last as reference, float32 ``inv(X^T X) X^T y``."""
    x0, y0 = ref_block(h, start)
    a = np.array([[x0, y0], [x0 + 1, y0], [x0, y0 + 1], [x0 + 1, y0 + 1]], dtype=np.float64)
    d = ref_ranges(h[a[:, 1].astype(int), a[:, 0].astype(int)])
    rows = (a[3] - a[:3]).astype(f32)
    # y_i = (d_i^2 - d_L^2 + |a_L|^2 - |a_i|^2) / 2, in float64 left to right, then float32
    rhs = [
        f32(0.5 * (d[i] ** 2 + a[3, 0] ** 2 + a[3, 1] ** 2 - d[3] ** 2 - a[i, 0] ** 2 - a[i, 1] ** 2)) for i in range(3)
    ]
    m = np.linalg.inv(rows.T @ rows) @ rows.T  # float32
    return np.array([(m[r, 0] * rhs[0] + m[r, 1] * rhs[1]) + m[r, 2] * rhs[2] for r in range(2)], dtype=f32)


def ref_top(h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest pixels of the whole map, largest first (maps here have no equal values among them)."""
    order = np.argsort(-h.ravel(), kind="stable")[:k]
    return h.ravel()[order], np.stack([order % h.shape[1], order // h.shape[1]], 1).astype(np.float64)


def ref_popos(h: np.ndarray) -> np.ndarray:
    """POPoS: float64 linspace grid around the station, first candidate of least sum |rho - d|, as float32."""
    size = h.shape[0]
    k, region = AUTHORS_SIZES[size]
    tau = size / 128
    n = int(region / tau)
    st = ref_station(h, ref_start(h)).astype(np.float64)
    gx, gy = (np.linspace(c - region / 2 - tau / 2, c + region / 2 - tau / 2, n) for c in st)
    values, a = ref_top(h, k)
    points = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 1, 2)  # row-major: y outer
    cost = np.abs(np.sqrt(((points - a) ** 2).sum(-1)) - ref_ranges(values)).sum(-1)
    return points[np.argmin(cost), 0].astype(f32)


def ref_gauss_newton(h: np.ndarray, iterations: int = 20) -> np.ndarray:
    """IGNO: from the argmax, undamped Gauss-Newton on ``e_k = |a_k - p|^2 - d_k^2`` over the top-K anchors;
    ``H = sum J J^T``, ``B = -sum e J`` in float32, ``J = -2 (a - p)``; the first step's residuals and cost
    in float64, the later ones in float32; from the second step, a cost not below the last stops before
    the update."""
    values, a = ref_top(h, IGNO_ANCHORS[h.shape[0]])
    d2 = ref_ranges(values) ** 2
    p = np.array(ref_start(h), dtype=f32)
    last = None
    for step in range(iterations):
        hess, grad = np.zeros((2, 2), f32), np.zeros(2, f32)
        cost = 0.0 if step == 0 else f32(0)
        for ak, dk in zip(a, d2, strict=True):
            u = ak - p.astype(np.float64) if step == 0 else ak.astype(f32) - p
            e = (u[0] ** 2 + u[1] ** 2) - (dk if step == 0 else f32(dk))
            jac = (-2 * u).astype(f32)
            hess += np.outer(jac, jac)
            grad += f32(-e) * jac
            cost += e * e
        delta = np.linalg.solve(hess.astype(np.float64), grad.astype(np.float64)).astype(f32)
        if step > 0 and f32(cost) >= f32(last):
            break
        p, last = p + delta, cost
    return p


def maps_for(size: int, condition: str, seed: int = 0, n: int = 8) -> np.ndarray:
    """``[n, size, size]`` float32 maps: clean, under-confident, noisy, mis-shaped (sigma 2.6 and 1.5)."""
    g = torch.Generator().manual_seed(seed)
    pts = 1 + (size - 3) * torch.rand(n, 2, generator=g)
    sigma = {"wide": 2.6, "narrow": 1.5}.get(condition, 2.0)
    hm = encode_heatmaps(pts, size, sigma=sigma)
    if condition == "amp":
        hm = 0.7 * hm
    if condition == "noise":
        hm = hm + 0.05 * torch.randn(hm.shape, generator=g)
    return hm.numpy()


CONDITIONS = ("clean", "amp", "noise", "wide", "narrow")


# ---------------------------------------------------------------- the block rule and its edge cases


def block_of(h: np.ndarray) -> tuple[int, int]:
    t = torch.from_numpy(h)[None]
    x0, y0 = authors_block(t, authors_argmax(t)[1])
    return int(x0), int(y0)


def peak(size: int, x: int, y: int) -> np.ndarray:
    h = np.zeros((size, size), f32)
    h[y, x] = 1.0
    return h


@pytest.mark.parametrize(
    ("h", "want"),
    [
        # a lone peak: the four blocks holding it tie, the last scanned (top-left at the peak) wins
        (peak(8, 4, 4), (4, 4)),
        # a peak on the last row and column: the scan never reaches them, the block misses the peak
        (peak(8, 7, 7), (5, 5)),
        (peak(8, 7, 3), (5, 3)),
        (peak(8, 3, 7), (3, 5)),
        # on the first row and column: one block per axis there
        (peak(8, 0, 0), (0, 0)),
        (peak(8, 0, 5), (0, 5)),
        # a side of 2: nothing scanned on that axis, the first block stays
        (np.pad(peak(2, 1, 1), ((0, 0), (0, 0))), (0, 0)),
        # no positive value: the argmax reads -1, int(-0.5) = 0, the top-left block
        (-np.arange(36, dtype=f32).reshape(6, 6) - 1, (0, 0)),
        # sums below the scan's starting best: the first block
        (np.where(peak(6, 3, 3) > 0, 1.0, -1e8).astype(f32), (1, 1)),
    ],
    ids=["tie", "last-row-col", "last-col", "last-row", "corner", "first-col", "side-2", "no-positive", "floor"],
)
def test_block_rule_edge_cases(h, want):
    assert ref_block(h, ref_start(h)) == want
    assert block_of(h) == want


def test_block_rule_scans_blocks_that_miss_the_argmax():
    h = np.zeros((8, 8), f32)
    h[4, 4] = 1.0
    h[2:4, 2:4] = 0.9  # a brighter block above-left of the peak, without it
    assert block_of(h) == ref_block(h, ref_start(h)) == (2, 2)
    # ours takes the best block holding the peak, so it decodes elsewhere
    t = torch.from_numpy(h)[None, None]
    assert (decode(t, "keyposs_peak") - decode(t, "keyposs")).abs().max() > 1


def test_block_rule_on_random_maps():
    g = np.random.default_rng(0)
    maps = [g.random((s, s), dtype=f32) ** 4 for s in (2, 3, 4, 5, 8) for _ in range(40)]
    maps += [np.round(4 * g.random((6, 6), dtype=f32)) / 4 for _ in range(40)]  # many equal sums
    for h in maps:
        assert block_of(h) == ref_block(h, ref_start(h))


# ---------------------------------------------------------------- the station, the grid, the candidate


def test_lls_matrix_is_numpys_float32_inverse():
    rows = np.array([[1, 1], [0, 1], [1, 0]], f32)
    want = np.linalg.inv(rows.T @ rows) @ rows.T
    assert np.array_equal(np.array([[float(v) for v in r] for r in _lls_matrix()], f32), want)


@pytest.mark.parametrize("size", SIZES)
def test_station_and_keyposs_are_bit_equal_to_the_reference(size):
    maps = np.concatenate([maps_for(size, c, seed=size) for c in CONDITIONS])
    want = np.stack([ref_station(h, ref_start(h)) for h in maps])
    t = torch.from_numpy(maps)
    assert np.array_equal(authors_station(t, authors_argmax(t)[1], 2.0).numpy(), want)
    assert np.array_equal(decode(t[None], "keyposs")[0].numpy(), want)


def test_grid_is_numpys_float64_linspace():
    station = torch.tensor([[10.123456, 3.5], [0.1, 63.9]], dtype=torch.float32)
    for size, (_, region) in AUTHORS_SIZES.items():
        tau = size / 128
        n = int(region / tau)
        got = authors_grid(station, region, tau, n).numpy()
        for b, xy in enumerate(station.double().numpy()):
            for axis in range(2):
                want = np.linspace(xy[axis] - region / 2 - tau / 2, xy[axis] + region / 2 - tau / 2, n)
                assert np.array_equal(got[b, axis], want)


@pytest.mark.parametrize("n", [1, 5, 8, 10, 15, 20, 30, 129, 300])
def test_numpy_sum_rounds_as_numpy(n):
    v = np.random.default_rng(n).random((500, n)) * 10.0 ** np.random.default_rng(n + 1).integers(-6, 6, (500, n))
    assert np.array_equal(numpy_sum(torch.from_numpy(v)).numpy(), v.sum(-1))


@pytest.mark.parametrize("size", SIZES)
def test_popos_authors_is_bit_equal_to_the_reference(size):
    maps = np.concatenate([maps_for(size, c, seed=size, n=4) for c in CONDITIONS])
    want = np.stack([ref_popos(h) for h in maps])
    got = decode(torch.from_numpy(maps)[None], "popos_authors")[0].numpy()
    assert np.array_equal(got, want)


@pytest.mark.parametrize("size", SIZES)
def test_igno_is_the_authors_gauss_newton(size):
    maps = np.concatenate([maps_for(size, c, seed=size, n=4) for c in CONDITIONS])
    want = np.stack([ref_gauss_newton(h) for h in maps])
    got = decode(torch.from_numpy(maps)[None], "igno")[0].numpy()
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())
    assert (got == want).mean() >= 0.99  # the float32 solve: a rare last-bit tie aside


def test_authors_decoders_keep_their_quirks():
    # under-confident peaks bias popos_authors and igno but not keyposs (range differences cancel)
    pts = torch.tensor([[3.3, 4.6], [5.2, 2.1]])
    hm = encode_heatmaps(pts, 8)[None]
    assert (decode(0.7 * hm, "keyposs") - pts).abs().max() < 1e-4
    assert (decode(0.7 * hm, "popos_authors") - pts).abs().max() > 0.5
    assert (decode(0.7 * hm, "igno") - pts).abs().max() > 0.5
    # the authors' Gauss-Newton is on squared ranges only
    with pytest.raises(ValueError, match="solver='damped'"):
        decode(hm, "igno", objective="l1")
