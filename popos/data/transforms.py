"""Training-time augmentation as one affine warp per image, with the landmarks moved exactly.

A face is seen through the square of side ``side`` image px centred on its box (the test-time view).
Augmentation draws an :class:`Augmentation` (flip, rotation, scale, shift, colour) and turns the square
into one ``[2, 3]`` affine image px -> input px (:func:`input_affine`); the image is resampled once
(:func:`warp`) and the landmarks are mapped by the same matrix (:func:`transform_landmarks`). All spaces
use the pixel-centre convention of :mod:`popos.geometry` (pixel ``i`` centred at coordinate ``i``; a
flip maps ``x`` to ``input_size - 1 - x``), which ``cv2.warpAffine`` follows, so there is no +-0.5 term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from popos import geometry
from popos.config import AugmentSection

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601 weights of R, G, B


@dataclass(frozen=True)
class Augmentation:
    """One random draw of the training augmentation.

    ``flip``: mirror horizontally; ``rotation``: degrees, counter-clockwise on screen; ``scale``: factor
    on the side of the viewed square (> 1 shows more context, the face looks smaller, as in mmpose);
    ``shift``: ``(dx, dy)`` translation of the result as a fraction of the input size; ``brightness``,
    ``contrast``, ``saturation``: multiplicative factors (1 = unchanged).
    """

    flip: bool = False
    rotation: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0


def sample_augmentation(rng: np.random.Generator, cfg: AugmentSection) -> Augmentation:
    """Draw an :class:`Augmentation` from ``cfg`` (the paper's mmpose settings by default).

    Flip with ``flip_prob``; rotation ``clip(N(0, rotation_std), +-rotation_max)`` with ``rotation_prob``
    (else 0); scale ``clip(1 + N(0, scale_std), scale_min, scale_max)``; shift uniform in
    ``+-translate`` per axis with ``translate_prob`` (else 0); each colour factor uniform in ``1 +- color_jitter``.
    """
    flip = bool(rng.random() < cfg.flip_prob)
    rotation = float(np.clip(rng.normal(0, cfg.rotation_std), -cfg.rotation_max, cfg.rotation_max))
    rotation = rotation if rng.random() < cfg.rotation_prob else 0.0
    scale = float(np.clip(1 + rng.normal(0, cfg.scale_std), cfg.scale_min, cfg.scale_max))
    dx, dy = rng.uniform(-cfg.translate, cfg.translate, 2)
    if cfg.translate_prob < 1 and rng.random() >= cfg.translate_prob:  # no extra draw at probability 1
        dx = dy = 0.0
    b, c, s = rng.uniform(1 - cfg.color_jitter, 1 + cfg.color_jitter, 3)
    return Augmentation(flip=flip, rotation=rotation, scale=scale, shift=(float(dx), float(dy)),
                        brightness=float(b), contrast=float(c), saturation=float(s))


def input_affine(centre: Sequence[float] | np.ndarray, side: float, input_size: int,
                 aug: Augmentation | None = None) -> np.ndarray:
    """``[2, 3]`` float64 affine image px -> input px for the square of ``side`` image px around ``centre``.

    Without ``aug`` this is the test-time view: the square fills the ``input_size`` input, its centre at
    ``input_size / 2``. With ``aug`` the square is scaled by ``aug.scale``, turned by ``aug.rotation``
    about its centre, mirrored if ``aug.flip`` (``x -> input_size - 1 - x``) and shifted by
    ``aug.shift * input_size`` input px.

    >>> (input_affine((50.0, 50.0), 100.0, 256).round(3) + 0.0).tolist()  # 2.56 input px per image px
    [[2.56, 0.0, 0.0], [0.0, 2.56, 0.0]]
    >>> (input_affine((50.0, 50.0), 100.0, 256, Augmentation(flip=True))[0].round(3) + 0.0).tolist()
    [-2.56, 0.0, 255.0]
    """
    if side <= 0:
        raise ValueError(f"side must be positive (image px), got {side}")
    if aug is None:
        return geometry.crop_affine(centre, side, input_size)
    m = geometry.crop_affine(centre, side * aug.scale, input_size, rotation_deg=aug.rotation, flip=aug.flip)
    m[:, 2] += np.asarray(aug.shift, dtype=np.float64) * input_size
    return m


def transform_landmarks(points: np.ndarray, affine: np.ndarray, flip_index: Sequence[int] | None = None) -> np.ndarray:
    """Map ``[K, 2]`` (x, y) points with a ``[2, 3]`` affine; with ``flip_index`` (for a flipping affine)
    landmark ``k`` of the result is the mapped landmark ``flip_index[k]``, so left stays left."""
    out = geometry.apply_affine(np.asarray(points, dtype=np.float64), np.asarray(affine, dtype=np.float64))
    if flip_index is not None:
        if sorted(flip_index) != list(range(len(out))):
            raise ValueError(f"flip_index must be a permutation of 0..{len(out) - 1}, got {list(flip_index)}")
        out = out[list(flip_index)]
    return out


def warp(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Resample ``image`` uint8 ``[H, W, 3]`` into a ``size`` x ``size`` output with ``affine`` (source px ->
    output px): bilinear, black outside the source, output pixel ``(x, y)`` taken at ``affine^-1 (x, y)``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    return cv2.warpAffine(np.ascontiguousarray(image), np.asarray(affine, dtype=np.float64), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def color_jitter(image: np.ndarray, aug: Augmentation) -> np.ndarray:
    """Brightness, contrast and saturation of uint8 ``image`` ``[H, W, 3]`` RGB -> uint8 (rounded, clipped).

    As torchvision defines them, in this order: brightness scales the pixels, saturation blends each
    pixel with its grey (luma) value, contrast blends with the mean grey level. All three are linear, so
    they are applied as one per-pixel 3 x 4 colour matrix with a single final clip (torchvision clips
    after each step, which differs only where an intermediate value leaves 0-255).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    b, c, s = aug.brightness, aug.contrast, aug.saturation
    linear = c * b * (s * np.eye(3) + (1 - s) * np.outer(np.ones(3), _LUMA))
    # the luma weights sum to 1, so saturation keeps each pixel's grey and the mean grey is b * mean luma
    mean_grey = b * float(np.dot(cv2.mean(image)[:3], _LUMA))
    matrix = np.concatenate([linear, np.full((3, 1), (1 - c) * mean_grey)], axis=1)
    return cv2.transform(image, matrix)
