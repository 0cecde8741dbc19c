"""Decoding study without a model: encode ground truth, perturb the maps, decode, measure the error.

Ground-truth points are drawn uniformly over the network input (``full``: ``[0, input_size - 1]^2``; or
``center``: ``[input_size / 8, input_size * 7 / 8]^2``, i.e. ``[32, 224]^2`` at 256, as the upstream
measurements), or taken from a prepared split. They are encoded as unbiased Gaussians at each heatmap size,
perturbed by a condition, decoded with every decoder variant, and the Euclidean error is reported in input
px. Conditions (reference: upstream measurements, section 9.1):

* ``clean``: perfect unit-peak maps;
* ``noise``: ``+ N(0, 0.05^2)`` i.i.d. per pixel;
* ``amp07``: peak ``x 0.7`` (an under-confident network);
* ``ampnoise``: peak ``x U(0.6, 1.0)`` per landmark, ``+ N(0, 0.02^2)`` per pixel;
* ``flip``: a heatmap-averaging flip test (mmpose's, made exact): the map of the mirrored input
  (``x -> input_size - 1 - x``) is mirrored back (see :func:`mirror_heatmaps`) and averaged 0.5 / 0.5 with
  the map itself, then decoded once;
* ``flipcoord``: the flip test of :mod:`popos.evaluate`: perfect maps of the input and of the mirrored input
  are decoded separately, the second prediction is mirrored back and the two are averaged;
* ``flipshift``: mmpose's flip test exactly as the authors ran it (upstream ``flip_center``): as ``flip``
  but the mirrored map is shifted by one whole column (``shift_heatmap``), which biases x by ``+0.5`` input
  px after averaging, so ``0.5`` is the best mean error there.

Peaks as trained networks give them (the decoders assume ``sigma``; clean unless said):

* ``wide`` / ``narrow``: Gaussians of width ``1.3 sigma`` / ``0.75 sigma`` (2.6 and 1.5 heatmap px for 2);
* ``elongated``: per landmark, axes ``sigma sqrt(r)`` and ``sigma / sqrt(r)`` with the ratio ``r ~ U(1, 2)``,
  rotated by an angle ``~ U(0, pi)``;
* ``second``: plus a second Gaussian of half the amplitude ``3 sigma`` away in a random direction (an
  occluded or ambiguous point); the error is measured to the first;
* ``offset``: on a baseline of ``-0.05``, ``+ N(0, 0.02^2)`` per pixel.

Every random draw is seeded from ``oracle.seed``; a condition's noise depends only on the seed, the
condition and the heatmap size, so the tables do not change when other conditions or sizes are added.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from popos import geometry
from popos.config import Params
from popos.io import write_csv_atomic

CONDITIONS = (
    "clean", "noise", "amp07", "ampnoise", "flip", "flipcoord", "flipshift",
    "wide", "narrow", "elongated", "second", "offset",
)  # fmt: skip
COLUMNS = ["condition", "heatmap_size", "method", "mean_px", "median_px", "max_px"]


def random_points(
    num_images: int, num_landmarks: int, input_size: int, mode: str, generator: torch.Generator
) -> torch.Tensor:
    """``[num_images, num_landmarks, 2]`` float32 (x, y) input px, uniform over the input (``full``) or its
    central three quarters (``center``: ``[input_size / 8, input_size * 7 / 8]^2``)."""
    if mode == "full":
        low, high = 0.0, input_size - 1.0
    elif mode == "center":
        low, high = input_size / 8, input_size * 7 / 8
    else:
        raise ValueError(f"mode: expected 'full' or 'center', got {mode!r}")
    u = torch.rand(num_images, num_landmarks, 2, generator=generator)
    return low + (high - low) * u


def split_points(
    split_dir: str | Path, input_size: int, num_images: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks of a prepared split mapped into the network input: ``[N, K, 2]`` input px and ``[N, K]`` bool.

    Each face is cropped as at test time: the square of side ``padding * max(w, h)`` around its box centre
    (``padding`` from the split's meta.json) onto ``input_size`` px. Up to ``num_images`` faces, a seeded
    random subset when the split has more.
    """
    from popos.data.prepared import PreparedSplit

    split = PreparedSplit.open(split_dir)
    if len(split) == 0:
        raise ValueError(f"{split_dir}: the prepared split has no faces")
    rng = np.random.default_rng(seed)
    index = np.sort(rng.permutation(len(split))[:num_images])
    centre, side = geometry.square_box(split.box[index], padding=float(split.meta["padding"]))
    affines = np.stack([geometry.crop_affine(c, s, input_size) for c, s in zip(centre, side, strict=True)])
    points = geometry.apply_affine(split.landmarks[index].astype(np.float64), affines)
    return torch.from_numpy(points.astype(np.float32)), torch.from_numpy(split.visible[index].copy())


def mirror_heatmaps(heatmaps: torch.Tensor, input_size: int, exact: bool = True) -> torch.Tensor:
    """Map heatmaps of the horizontally mirrored input back to the unmirrored frame: ``[..., H, W]`` -> same.

    Mirroring the input is ``x -> input_size - 1 - x`` in input px, i.e. ``v -> c - v`` in heatmap px with
    ``c = (input_size - 1) / stride = W - 1 / stride``. A column reversal alone mirrors about ``(W - 1) / 2``;
    the remaining shift of ``1 - 1 / stride`` heatmap px is done by linear interpolation (the outermost
    column is repeated beyond the border). ``exact=False``: mmpose's ``shift_heatmap``, a whole column
    (column 0 repeated), which biases x by ``+0.5`` input px after averaging.
    """
    s = geometry.stride(input_size, heatmaps.shape[-1])
    rev = heatmaps.flip(-1)
    shifted = torch.cat([rev[..., :1], rev[..., :-1]], dim=-1)  # shifted[j] = rev[j - 1]
    return rev / s + shifted * (1 - 1 / s) if exact else shifted


def mirror_points(points: torch.Tensor, input_size: int) -> torch.Tensor:
    """``[N, K, 2]`` input px of the horizontally mirrored input, ``x -> input_size - 1 - x`` (no landmark swap)."""
    flipped = geometry.flip_points(points.numpy(), input_size, range(points.shape[-2]))
    return torch.from_numpy(flipped)


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU torch generator seeded from ``seed`` and ``keys`` (e.g. a condition index and a heatmap size)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def oracle_heatmaps(
    points: torch.Tensor,
    condition: str,
    heatmap_size: int,
    *,
    input_size: int = 256,
    sigma: float = 2.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Encode ``[N, K, 2]`` input-px points at ``heatmap_size`` and apply ``condition``: ``[N, K, H, W]`` float32.

    ``sigma`` is in heatmap px; ``generator`` drives the random conditions (``noise``, ``ampnoise``,
    ``elongated``, ``second``, ``offset``).
    ``flipcoord`` acts on decoded points, not on maps: here it gives the clean maps.
    """
    from popos.codec import encode_heatmaps

    if condition not in CONDITIONS:
        raise ValueError(f"condition: expected one of {', '.join(CONDITIONS)}, got {condition!r}")
    s = geometry.stride(input_size, heatmap_size)
    maps = encode_heatmaps(points / s, heatmap_size, sigma=sigma, unbiased=True).float()
    if condition == "noise":
        return maps + 0.05 * torch.randn(maps.shape, generator=generator)
    if condition == "amp07":
        return maps * 0.7
    if condition == "ampnoise":
        peak = 0.6 + 0.4 * torch.rand(maps.shape[:-2] + (1, 1), generator=generator)
        return maps * peak + 0.02 * torch.randn(maps.shape, generator=generator)
    if condition in ("wide", "narrow"):
        width = torch.full(points.shape[:-1], sigma * (1.3 if condition == "wide" else 0.75))
        return gaussian_maps(points / s, heatmap_size, width, width, torch.zeros_like(width))
    if condition == "elongated":
        ratio = (1 + torch.rand(points.shape[:-1], generator=generator)).sqrt()
        angle = torch.pi * torch.rand(points.shape[:-1], generator=generator)
        return gaussian_maps(points / s, heatmap_size, sigma * ratio, sigma / ratio, angle)
    if condition == "second":
        angle = 2 * torch.pi * torch.rand(points.shape[:-1], generator=generator)
        other = points / s + 3 * sigma * torch.stack([angle.cos(), angle.sin()], -1)
        return maps + 0.5 * encode_heatmaps(other, heatmap_size, sigma=sigma, unbiased=True).float()
    if condition == "offset":
        return maps - 0.05 + 0.02 * torch.randn(maps.shape, generator=generator)
    if condition in ("flip", "flipshift"):
        mirrored = mirror_points(points, input_size) / s
        flipped = encode_heatmaps(mirrored, heatmap_size, sigma=sigma, unbiased=True).float()
        return 0.5 * (maps + mirror_heatmaps(flipped, input_size, exact=condition == "flip"))
    return maps


def gaussian_maps(
    centres: torch.Tensor, heatmap_size: int, sigma_u: torch.Tensor, sigma_v: torch.Tensor, angle: torch.Tensor
) -> torch.Tensor:
    """Unit-peak Gaussians of any covariance: ``[..., K, H, W]`` float32 for centres ``[..., K, 2]`` (x, y) in
    heatmap px, standard deviations ``sigma_u``, ``sigma_v`` (heatmap px) along axes rotated by ``angle``
    (radians, from x toward y), each ``[..., K]``."""
    pixels = torch.arange(heatmap_size, dtype=torch.float32)
    dx = pixels - centres[..., 0, None, None]  # [..., K, 1, W]
    dy = pixels[:, None] - centres[..., 1, None, None]  # [..., K, H, 1]
    cos, sin = torch.cos(angle)[..., None, None], torch.sin(angle)[..., None, None]
    along, across = cos * dx + sin * dy, cos * dy - sin * dx
    return torch.exp(-0.5 * (along / sigma_u[..., None, None]) ** 2 - 0.5 * (across / sigma_v[..., None, None]) ** 2)


def _predict(maps: torch.Tensor, variant: tuple[str, dict], params: Params, heatmap_size: int) -> torch.Tensor:
    from popos.decoders import decode

    method, options = variant
    coords = decode(maps, method, sigma=params.decode.sigma, **options)
    return geometry.heatmap_to_input(coords.float().cpu(), params.model.input_size, heatmap_size)


def oracle_study(params: Params, dataset_dir: str | Path | None = None) -> pd.DataFrame:
    """Mean, median and max decoding error (input px) per condition x heatmap size x decoder variant.

    Settings come from ``params.oracle`` (sizes, conditions, points, counts, seed), ``params.model.input_size``,
    ``params.train.sigma`` (encoding) and ``params.decode`` (variants, their sigma and POPoS options, resolved
    as evaluation does). With ``dataset_dir`` (a prepared split) its landmarks replace the random points; only
    visible ones count. Returns a DataFrame with the columns ``COLUMNS``.
    """
    from popos.decoders import resolve_variants

    cfg, input_size = params.oracle, params.model.input_size
    variants = resolve_variants(params.decode.methods, params.decode.popos.model_dump())
    if dataset_dir is None:
        points = random_points(cfg.num_images, cfg.num_landmarks, input_size, cfg.points, seeded_generator(cfg.seed))
        visible = torch.ones(points.shape[:-1], dtype=torch.bool)
    else:
        points, visible = split_points(dataset_dir, input_size, cfg.num_images, cfg.seed)
    if not visible.any():
        raise ValueError(f"{dataset_dir}: no visible landmark in the faces drawn")
    rows = []
    cells = [(c, h) for c in cfg.conditions for h in cfg.heatmap_sizes]
    for condition, size in tqdm(cells, desc="oracle", unit="cell"):
        gen = seeded_generator(cfg.seed, CONDITIONS.index(condition), size)
        maps = oracle_heatmaps(points, condition, size, input_size=input_size, sigma=params.train.sigma,
                               generator=gen)
        if condition == "flipcoord":
            mirrored = oracle_heatmaps(mirror_points(points, input_size), "clean", size, input_size=input_size,
                                       sigma=params.train.sigma)
        for name, variant in variants.items():
            pred = _predict(maps, variant, params, size)
            if condition == "flipcoord":
                pred = (pred + mirror_points(_predict(mirrored, variant, params, size), input_size)) / 2
            err = torch.linalg.vector_norm(pred - points, dim=-1)[visible].double().numpy()
            rows.append((condition, size, name, err.mean(), np.median(err), err.max()))
    return pd.DataFrame(rows, columns=COLUMNS)


def format_oracle_table(table: pd.DataFrame) -> str:
    """One block per condition: decoders as rows, heatmap sizes as columns, cells ``mean [median]`` input px."""
    blocks = []
    for condition, part in table.groupby("condition", sort=False):
        cell = part.assign(cell=[f"{m:.3f} [{d:.3f}]" for m, d in zip(part.mean_px, part.median_px, strict=True)])
        wide = cell.pivot(index="method", columns="heatmap_size", values="cell")
        wide = wide.loc[part.method.unique(), part.heatmap_size.unique()]
        wide.columns = [f"{c}x{c}" for c in wide.columns]
        wide.index.name = None
        blocks.append(f"{condition}: mean [median] error, input px\n{wide.to_string()}")
    return "\n\n".join(blocks)


def run_oracle(params: Params, out: str | Path | None = None, dataset_dir: str | Path | None = None) -> pd.DataFrame:
    """Run :func:`oracle_study`, print its table and, with ``out``, write it as CSV (atomically)."""
    table = oracle_study(params, dataset_dir)
    print(format_oracle_table(table))
    if out is not None:
        write_csv_atomic(table, out)
    return table
