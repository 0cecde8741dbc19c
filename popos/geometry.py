"""Geometry in one place: strides, the image <-> input <-> heatmap mappings, affine warps, flips.

Three coordinate spaces, all with pixel ``i`` centred at coordinate ``i`` and points as ``(x, y)``:

* **image**: pixels of the original photo;
* **input**: the square network input (e.g. 256 x 256), an affine warp of the image;
* **heatmap**: the network output (e.g. 64 x 64); ``heatmap = input / stride`` with
  ``stride = input_size / heatmap_size``. No +-0.5 terms anywhere.

Affine matrices are ``[..., 2, 3]`` arrays ``M`` mapping a point ``p`` to ``M[:, :2] @ p + M[:, 2]``.
The functions accept NumPy arrays; the stride helpers also accept torch tensors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def stride(input_size: int, heatmap_size: int) -> float:
    """Input pixels per heatmap pixel, e.g. ``stride(256, 64) == 4.0``."""
    if input_size <= 0 or heatmap_size <= 0:
        raise ValueError(f"sizes must be positive, got input_size={input_size}, heatmap_size={heatmap_size}")
    return input_size / heatmap_size


def input_to_heatmap(coords, input_size: int, heatmap_size: int):
    """``[..., 2]`` input coordinates -> heatmap coordinates (divide by the stride)."""
    return coords / stride(input_size, heatmap_size)


def heatmap_to_input(coords, input_size: int, heatmap_size: int):
    """``[..., 2]`` heatmap coordinates -> input coordinates (multiply by the stride).

    >>> heatmap_to_input(np.array([2.5, 1.0]), 256, 64).tolist()
    [10.0, 4.0]
    """
    return coords * stride(input_size, heatmap_size)


def square_box(box_xywh: np.ndarray, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``[..., 2]`` and side ``[...]`` (image px) of the padded square around ``[..., 4]`` boxes.

    The box ``(x, y, w, h)`` spans pixel centres ``x .. x + w``; the square has side
    ``padding * max(w, h)`` and the same centre.
    """
    box = np.asarray(box_xywh, dtype=np.float64)
    centre = box[..., :2] + box[..., 2:] / 2
    side = padding * np.maximum(box[..., 2], box[..., 3])
    return centre, side


def crop_affine(
    centre: Sequence[float] | np.ndarray,
    side: float,
    out_size: int,
    rotation_deg: float = 0.0,
    flip: bool = False,
) -> np.ndarray:
    """``[2, 3]`` affine taking image px to a square ``out_size`` crop.

    The square of side ``side`` image px centred at ``centre`` maps onto the crop, the centre landing at
    ``out_size / 2`` (as mmpose does), rotated by ``rotation_deg`` (counter-clockwise in the picture) and,
    if ``flip``, mirrored afterwards so that crop x becomes ``out_size - 1 - x``.
    """
    cx, cy = float(centre[0]), float(centre[1])
    s = out_size / side
    a = np.deg2rad(rotation_deg)
    cos, sin = np.cos(a) * s, np.sin(a) * s
    # y points down in images, so a counter-clockwise turn on screen is R(-a) in these axes.
    linear = np.array([[cos, sin], [-sin, cos]])
    shift = np.array([out_size / 2, out_size / 2]) - linear @ np.array([cx, cy])
    m = np.concatenate([linear, shift[:, None]], axis=1)
    if flip:
        m = compose_affine(np.array([[-1.0, 0.0, out_size - 1.0], [0.0, 1.0, 0.0]]), m)
    return m


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer o inner`` for ``[..., 2, 3]`` matrices (apply ``inner`` first)."""
    lin = outer[..., :, :2] @ inner[..., :, :2]
    shift = (outer[..., :, :2] @ inner[..., :, 2:])[..., 0] + outer[..., :, 2]
    return np.concatenate([lin, shift[..., None]], axis=-1)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of ``[..., 2, 3]`` affine matrices."""
    lin_inv = np.linalg.inv(m[..., :, :2])
    shift = -(lin_inv @ m[..., :, 2:])[..., 0]
    return np.concatenate([lin_inv, shift[..., None]], axis=-1)


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map ``[..., N, 2]`` points with ``[..., 2, 3]`` matrices (broadcast over leading dims)."""
    points = np.asarray(points)
    return points @ np.swapaxes(m[..., :, :2], -1, -2) + m[..., None, :, 2]


def flip_points(points: np.ndarray, width: int, flip_index: Sequence[int]) -> np.ndarray:
    """Mirror ``[..., K, 2]`` points in a ``width``-pixel-wide frame and swap left/right landmarks.

    ``x -> width - 1 - x`` (exact under the pixel-centre convention); landmark ``k`` of the result is
    landmark ``flip_index[k]`` of the input. Flipping twice returns the input.
    """
    out = np.array(points, copy=True)
    out[..., 0] = (width - 1) - out[..., 0]
    return out[..., list(flip_index), :]
