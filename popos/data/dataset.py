"""The torch Dataset over a prepared split, and the same test-time input for a raw image and box.

Every sample is one affine warp of the cached face crop: the matrix maps image px -> input px (test:
the padded square around the box; train: that square randomly flipped, turned, scaled and shifted, see
:mod:`popos.data.transforms`) and is composed with the inverse of the crop's own ``crop_affine``, so
the crop is resampled once and the landmarks are mapped exactly. Coordinates follow
:mod:`popos.geometry`: (x, y), pixel ``i`` centred at ``i``.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from popos import geometry
from popos.config import AugmentSection
from popos.data.prepared import PreparedSplit
from popos.data.transforms import (
    Augmentation,
    color_jitter,
    input_affine,
    sample_augmentation,
    transform_landmarks,
    warp,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_NORMALISE = np.concatenate([np.diag(1 / (255 * IMAGENET_STD)), (-IMAGENET_MEAN / IMAGENET_STD)[:, None]], axis=1)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[S, S, 3]`` -> float32 ``[3, S, S]`` normalised with the ImageNet mean and std (of 0-1 values)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    out = cv2.transform(image.astype(np.float32), _NORMALISE)  # x / (255 std) - mean / std, per channel
    return torch.from_numpy(out.transpose(2, 0, 1).copy())


def input_from_image(image: np.ndarray, box: Sequence[float] | np.ndarray, input_size: int = 256,
                     padding: float = 1.25) -> tuple[torch.Tensor, np.ndarray]:
    """The test-time network input for one face of a raw image.

    ``image`` uint8 ``[H, W, 3]`` RGB, ``box`` ``(x, y, w, h)`` image px. The square of side
    ``padding * max(w, h)`` around the box centre is warped to ``input_size`` px, exactly as
    :class:`LandmarkDataset` does at test time. Returns the normalised tensor float32 ``[3, S, S]`` and
    ``image_to_input`` float32 ``[2, 3]`` (image px -> input px; invert it to map predictions back).
    """
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"box must be finite (x, y, w, h) image px with w, h > 0, got {box.tolist()}")
    centre, side = geometry.square_box(box, padding)
    m = input_affine(centre, float(side), input_size)
    return to_tensor(warp(image, m, input_size)), m.astype(np.float32)


class LandmarkDataset(Dataset):
    """Faces of a prepared split as network inputs (see :mod:`popos.data.prepared`).

    ``train=False``: the padded square around the box (``padding`` from the split's meta) -> ``input_size``
    px, no augmentation. ``train=True``: a random :class:`~popos.data.transforms.Augmentation` from
    ``augment`` (default :class:`~popos.config.AugmentSection`), drawn from ``(seed, epoch, index)`` only,
    so a sample is the same in any worker process and after a resume (call :meth:`set_epoch` each epoch;
    with ``persistent_workers`` the workers would keep the old epoch). ``flip_index`` defaults to the
    registry entry of the split's dataset.

    Items are dicts: ``image`` float32 ``[3, S, S]`` RGB normalised with ImageNet mean/std; ``landmarks``
    float32 ``[K, 2]`` input px; ``visible`` float32 ``[K]`` (0 for landmarks not annotated as visible or
    outside the input); ``image_to_input`` float32 ``[2, 3]`` image px -> input px; ``norm`` float32 NME
    normaliser, image px; ``index`` int64.
    """

    def __init__(self, split_dir: str | Path, *, input_size: int = 256, train: bool = False,
                 augment: AugmentSection | None = None, seed: int = 0,
                 flip_index: Sequence[int] | None = None) -> None:
        if input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.split_dir = Path(split_dir)
        self.input_size, self.train, self.seed, self.epoch = int(input_size), bool(train), int(seed), 0
        self.augment = augment if augment is not None else AugmentSection()
        self._split: PreparedSplit | None = PreparedSplit.open(self.split_dir)
        self.num_landmarks = self._split.num_landmarks
        self.padding = float(self._split.meta["padding"])
        self.flip_index = self._resolve_flip_index(flip_index) if self.train and self.augment.flip_prob > 0 else None

    def _resolve_flip_index(self, flip_index: Sequence[int] | None) -> list[int]:
        if flip_index is None:
            from popos.data.registry import DATASETS

            name = self._split.meta["dataset"]
            if name not in DATASETS:
                raise ValueError(f"{self.split_dir}: dataset {name!r} is not in the registry; pass flip_index, "
                                 "or set augment.flip_prob to 0")
            flip_index = DATASETS[name].flip_index
        flip_index = [int(i) for i in flip_index]
        if sorted(flip_index) != list(range(self.num_landmarks)):
            raise ValueError(f"flip_index must be a permutation of 0..{self.num_landmarks - 1}, got {flip_index}")
        return flip_index

    @property
    def split(self) -> PreparedSplit:
        """The prepared split, opened (memory-mapped) once per process."""
        if self._split is None:
            self._split = PreparedSplit.open(self.split_dir)
        return self._split

    def __getstate__(self) -> dict:
        # worker processes reopen the memory map instead of receiving a pickled copy of every crop
        return {**self.__dict__, "_split": None}

    def __len__(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose augmentation draws the next items use."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def augmentation(self, index: int) -> Augmentation | None:
        """The augmentation of item ``index`` in the current epoch (``None`` at test time)."""
        if not self.train:
            return None
        return sample_augmentation(np.random.default_rng([self.seed, self.epoch, index]), self.augment)

    def input_view(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Augmentation | None]:
        """Item ``index`` before normalisation: uint8 image ``[S, S, 3]``, landmarks ``[K, 2]`` input px,
        visible bool ``[K]``, ``image_to_input`` ``[2, 3]`` and the augmentation used (``None`` at test time)."""
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} faces in {self.split_dir}")
        split, s = self.split, self.input_size
        centre, side = geometry.square_box(split.box[index], self.padding)
        aug = self.augmentation(index)
        m = input_affine(centre, float(side), s, aug)
        crop_to_input = geometry.compose_affine(m, geometry.invert_affine(split.crop_affine[index].astype(np.float64)))
        image = warp(split.crops[index], crop_to_input, s)
        flip = self.flip_index if aug is not None and aug.flip else None
        landmarks = transform_landmarks(split.landmarks[index], m, flip)
        visible = split.visible[index] if flip is None else split.visible[index][flip]
        inside = ((landmarks >= 0) & (landmarks <= s - 1)).all(axis=1)
        return image, landmarks, visible & inside, m, aug

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = operator.index(index)
        image, landmarks, visible, m, aug = self.input_view(index)
        pixels = color_jitter(image, aug) if aug is not None else image
        annotated = self.split.visible[index]
        annotated = annotated[self.flip_index] if aug is not None and aug.flip else annotated
        return {
            "image": to_tensor(pixels),
            "landmarks": torch.from_numpy(landmarks.astype(np.float32)),
            "visible": torch.from_numpy(visible.astype(np.float32)),
            "annotated": torch.from_numpy(annotated.astype(np.float32)),  # visible, inside the crop or not
            "image_to_input": torch.from_numpy(m.astype(np.float32)),
            "norm": torch.tensor(float(self.split.norm[index]), dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }
