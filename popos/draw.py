"""Drawing landmarks over faces, image grids, and the ``popos data show`` contact sheet.

Points are (x, y) px with pixel ``i`` centred at ``i`` and are drawn with sub-pixel accuracy (cv2's
``shift`` fixed-point coordinates), so a drawn dot is centred where the point is, not at its rounded
pixel. Images are uint8 ``[H, W, 3]`` RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from popos.io import write_bytes_atomic

_SHIFT = 4  # fixed-point fraction bits: positions to 1/16 px
_ONE = 1 << _SHIFT


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 [H, W, 3] RGB, got {image.dtype} {list(image.shape)}")
    return image


def draw_landmarks(
    image: np.ndarray,
    points: np.ndarray,
    *,
    numbers: bool = False,
    color: tuple[int, int, int] = (0, 255, 0),
    radius: float = 2.0,
    visible: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of ``image`` uint8 ``[H, W, 3]`` with filled dots of ``radius`` px at ``points`` ``[K, 2]``.

    With ``numbers`` each dot is labelled with its index. ``visible`` ``[K]`` (bool) draws the others as
    rings instead of dots. Non-finite points are skipped.
    """
    out = _check_image(image).copy()
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [K, 2] (x, y) px, got shape {list(points.shape)}")
    if radius <= 0:
        raise ValueError(f"radius must be positive px, got {radius}")
    if visible is None:
        visible = np.ones(len(points), dtype=bool)
    visible = np.asarray(visible, dtype=bool)
    if visible.shape != (len(points),):
        raise ValueError(f"visible must have shape [{len(points)}], got {list(visible.shape)}")
    finite = np.isfinite(points).all(axis=1)
    fixed = np.round(np.where(finite[:, None], points, 0) * _ONE).astype(np.int64)
    r = max(1, round(radius * _ONE))
    for k in np.flatnonzero(finite):
        cv2.circle(out, (int(fixed[k, 0]), int(fixed[k, 1])), r, color, -1 if visible[k] else 1, cv2.LINE_AA,
                   _SHIFT)
    if numbers:
        scale = max(0.25, radius / 6)
        for k in np.flatnonzero(finite):
            org = (int(points[k, 0] + radius + 1), int(points[k, 1] - radius - 1))
            cv2.putText(out, str(k), org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(out, str(k), org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def image_grid(images: Sequence[np.ndarray], ncols: int, *, gap: int = 2, fill: int = 255) -> np.ndarray:
    """Tile same-sized uint8 ``[H, W, 3]`` images row by row into ``ncols`` columns with ``gap`` px between.

    Returns uint8 ``[rows * (H + gap) - gap, ncols * (W + gap) - gap, 3]``; empty cells are ``fill``.
    """
    if len(images) == 0:
        raise ValueError("images is empty")
    if ncols < 1 or gap < 0:
        raise ValueError(f"need ncols >= 1 and gap >= 0, got ncols={ncols}, gap={gap}")
    first = _check_image(images[0], "images[0]")
    h, w = first.shape[:2]
    for i, im in enumerate(images):
        if _check_image(im, f"images[{i}]").shape != first.shape:
            raise ValueError(f"images[{i}] has shape {list(im.shape)}, expected {list(first.shape)} like images[0]")
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    grid = np.full((nrows * (h + gap) - gap, ncols * (w + gap) - gap, 3), fill, dtype=np.uint8)
    for i, im in enumerate(images):
        y, x = (i // ncols) * (h + gap), (i % ncols) * (w + gap)
        grid[y : y + h, x : x + w] = im
    return grid


def write_png(image: np.ndarray, out: str | Path) -> None:
    """Write uint8 ``[H, W, 3]`` RGB ``image`` to ``out`` as PNG, atomically (temp file, then rename)."""
    out = Path(out)
    ok, data = cv2.imencode(".png", cv2.cvtColor(_check_image(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{out}: could not encode the image as PNG")
    write_bytes_atomic(data.tobytes(), out)


def show_dataset(split_dir: str | Path, n: int, out: str | Path, *, tile: int = 384, ncols: int = 4) -> np.ndarray:
    """Contact sheet of ``n`` faces of a prepared split, evenly spread over it, written to ``out`` (PNG).

    Each tile is the test-time network input (the padded square around the box) rendered at ``tile`` px,
    with the landmarks drawn and numbered (rings for landmarks not visible). Returns the grid image.
    """
    from popos.data.dataset import LandmarkDataset

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dataset = LandmarkDataset(split_dir, input_size=tile, train=False)
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int))
    tiles = []
    for i in indices:
        image, landmarks, visible, _, _ = dataset.input_view(int(i))
        tiles.append(draw_landmarks(image, landmarks, numbers=True, radius=tile / 192, visible=visible))
    grid = image_grid(tiles, ncols)
    write_png(grid, out)
    return grid
