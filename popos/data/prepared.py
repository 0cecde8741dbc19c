"""The prepared-split format every dataset is converted to, and its streaming writer and reader.

A prepared split is a folder ``<prepared_root>/<dataset>/<split>/`` holding

* ``meta.json``: dataset, split, count, crop_size, num_landmarks, padding, context, format version;
* ``annotations.npz``: per face ``image`` (str, path relative to the raw root), ``landmarks``
  ``[N, K, 2]`` float32 image px (0-based, pixel ``i`` centred at ``i``), ``visible`` ``[N, K]`` bool,
  ``box`` ``[N, 4]`` float32 ``(x, y, w, h)`` image px, ``norm`` ``[N]`` float32 NME normaliser in image
  px, ``crop_affine`` ``[N, 2, 3]`` float32 mapping image px to crop px;
* ``crops.u8``: raw uint8 ``[N, S, S, 3]`` RGB face crops (``S = crop_size``), read as a memory map.

Each crop is the square of side ``context * padding * max(w, h)`` around the box centre, so that
augmentation (scale, rotation, translation) has real pixels to draw from; the test-time input is the
inner square of side ``padding * max(w, h)``. A split is written into a temporary folder and renamed
into place only when complete (the split it replaces is kept aside until then), so an interrupted run
leaves nothing that looks prepared and never loses the previous split.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from popos.errors import UserError

FORMAT_VERSION = 1
DEFAULT_PADDING = 1.25
DEFAULT_CONTEXT = 1.5


class PreparedWriter:
    """Stream faces into a prepared split; use as a context manager.

    >>> # with PreparedWriter(out, "synth", "train", num_landmarks=68, crop_size=320) as w:
    >>> #     w.add(image="0001.png", crop=crop, landmarks=lm, visible=vis, box=box, norm=n, crop_affine=m)

    ``add`` takes one face: ``crop`` uint8 ``[S, S, 3]``, ``landmarks`` ``[K, 2]`` image px, ``visible``
    ``[K]``, ``box`` ``[4]`` (x, y, w, h), ``norm`` float, ``crop_affine`` ``[2, 3]`` image -> crop.
    Crops go straight to disk, so memory stays flat whatever the number of faces.
    """

    def __init__(
        self,
        split_dir: str | Path,
        dataset: str,
        split: str,
        *,
        num_landmarks: int,
        crop_size: int,
        padding: float = DEFAULT_PADDING,
        context: float = DEFAULT_CONTEXT,
    ) -> None:
        self.split_dir = Path(split_dir)
        self.tmp_dir = self.split_dir.with_name(self.split_dir.name + ".partial")
        self.meta = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "split": split,
            "num_landmarks": int(num_landmarks),
            "crop_size": int(crop_size),
            "padding": float(padding),
            "context": float(context),
        }
        self._rows: dict[str, list] = {k: [] for k in ("image", "landmarks", "visible", "box", "norm", "crop_affine")}
        self._crops = None

    def __enter__(self) -> PreparedWriter:
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        self._crops = open(self.tmp_dir / "crops.u8", "wb")
        return self

    def add(self, *, image: str, crop, landmarks, visible, box, norm: float, crop_affine) -> None:
        k, s = self.meta["num_landmarks"], self.meta["crop_size"]
        crop = np.ascontiguousarray(crop, dtype=np.uint8)
        if crop.shape != (s, s, 3):
            raise ValueError(f"{image}: crop has shape {crop.shape}, expected ({s}, {s}, 3)")
        landmarks = np.asarray(landmarks, dtype=np.float32)
        if landmarks.shape != (k, 2):
            raise ValueError(f"{image}: landmarks have shape {landmarks.shape}, expected ({k}, 2)")
        if not np.isfinite(landmarks).all():
            raise ValueError(f"{image}: landmarks contain NaN or inf")
        self._crops.write(crop.tobytes())
        self._rows["image"].append(str(image))
        self._rows["landmarks"].append(landmarks)
        self._rows["visible"].append(np.asarray(visible, dtype=bool).reshape(k))
        self._rows["box"].append(np.asarray(box, dtype=np.float32).reshape(4))
        self._rows["norm"].append(np.float32(norm))
        self._rows["crop_affine"].append(np.asarray(crop_affine, dtype=np.float32).reshape(2, 3))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._crops.close()
        if exc_type is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            return
        n = len(self._rows["image"])
        k = self.meta["num_landmarks"]
        arrays = {
            "image": np.array(self._rows["image"], dtype=str),
            "landmarks": np.array(self._rows["landmarks"], dtype=np.float32).reshape(n, k, 2),
            "visible": np.array(self._rows["visible"], dtype=bool).reshape(n, k),
            "box": np.array(self._rows["box"], dtype=np.float32).reshape(n, 4),
            "norm": np.array(self._rows["norm"], dtype=np.float32).reshape(n),
            "crop_affine": np.array(self._rows["crop_affine"], dtype=np.float32).reshape(n, 2, 3),
        }
        np.savez(self.tmp_dir / "annotations.npz", **arrays)
        (self.tmp_dir / "meta.json").write_text(json.dumps({**self.meta, "count": n}, indent=2) + "\n")
        # the old split is moved aside, not deleted, until the new one is in place
        old = self.split_dir.with_name(self.split_dir.name + ".old")
        if old.exists() and not self.split_dir.exists():  # a crash between the two renames: restore it first
            old.rename(self.split_dir)
        if old.exists():
            shutil.rmtree(old)
        if self.split_dir.exists():
            self.split_dir.rename(old)
        try:
            self.tmp_dir.rename(self.split_dir)
        except BaseException:
            if old.exists():
                old.rename(self.split_dir)
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)


class NotPreparedError(UserError, FileNotFoundError):
    """A folder that should hold a prepared split does not."""


@dataclass(frozen=True)
class PreparedSplit:
    """Read-only view of a prepared split (see the module docstring for the fields)."""

    root: Path
    meta: dict
    image: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    box: np.ndarray
    norm: np.ndarray
    crop_affine: np.ndarray
    crops: np.ndarray

    @classmethod
    def open(cls, split_dir: str | Path) -> PreparedSplit:
        root = Path(split_dir)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise NotPreparedError(f"{root}: not a prepared split (no meta.json); run `popos data prepare` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}; re-prepare"
            )
        with np.load(root / "annotations.npz") as z:
            arrays = {name: z[name] for name in ("image", "landmarks", "visible", "box", "norm", "crop_affine")}
        n, s = meta["count"], meta["crop_size"]
        crops = np.memmap(root / "crops.u8", dtype=np.uint8, mode="r", shape=(n, s, s, 3)) if n else np.zeros(
            (0, s, s, 3), np.uint8
        )
        return cls(root=root, meta=meta, crops=crops, **arrays)

    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def num_landmarks(self) -> int:
        return int(self.meta["num_landmarks"])

    def table(self) -> pd.DataFrame:
        """One row per face: image, box, normaliser and the landmarks as ``[K, 2]`` arrays."""
        return pd.DataFrame(
            {
                "image": self.image,
                "box_x": self.box[:, 0],
                "box_y": self.box[:, 1],
                "box_w": self.box[:, 2],
                "box_h": self.box[:, 3],
                "norm": self.norm,
                "landmarks": list(self.landmarks),
                "visible": list(self.visible),
            }
        )
