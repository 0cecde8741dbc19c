"""Raw dataset -> one prepared split per split (``popos data prepare NAME``).

For every split of the dataset (see :mod:`popos.data.registry`) this reads the raw annotations with
:mod:`popos.data.formats`, computes per face the crop box, the NME normaliser and the crop affine, and
streams the face crops into a :class:`popos.data.prepared.PreparedWriter` (one image decoded at a time
per worker thread, so memory stays flat whatever the dataset size). Each split is written to a
temporary folder and renamed into place only when complete.

Per face:

* ``box`` ``(x, y, w, h)`` image px: the tight box of the labelled landmarks, or the dataset's own box
  (``spec.crop_box``), clipped to ``[0, W - 1] x [0, H - 1]`` where ``spec.clip_box`` (as mmpose does);
* ``norm``: ``||p_i - p_j||`` for ``spec.norm_indices``, or the face size ``sqrt(w * h)`` of the dataset's
  box (AFLW, see :func:`popos.metrics.face_size`). Faces whose normaliser points are unlabelled (or coincide) cannot be
  scored and are skipped, counted;
* the crop: the square of side ``context * padding * max(w, h)`` around the box centre, resampled to
  ``crop_size`` px with ``cv2.warpAffine`` (bilinear, black outside the image); ``crop_affine`` maps
  image px to crop px (pixel ``i`` centred at ``i`` in both).

Raw layout: files are looked up by name under ``<raw_root>/<name>/`` (a few folders deep, hidden and
``__MACOSX`` folders ignored), so an archive may unpack with or without its own top folder.

Split sizes are checked against the published ones: a mismatch is a warning naming both numbers (so
that small fixtures and partial downloads work), or an error with ``strict=True``
(``popos data prepare NAME --strict``). Splits other than the default train/test ones are skipped with
a note when their raw files are missing (``strict``: an error).

Bad data never becomes a prepared split: an image that is missing, truncated or not an image, an image
path that leaves the image folder, or a split with no face to write (unless ``force=True``,
``--force``) fails its split with a :class:`PrepareError` naming the file and the line. A failed split
leaves the prepared split it would have replaced as it was; the other splits are still prepared, the
summary table is printed, and then one error names every failed split.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from tqdm import tqdm

from popos.data.formats import (
    Annotations,
    CofwFile,
    read_aflw_mat,
    read_coco_wholebody,
    read_ibug_folder,
    read_wflw_list,
)
from popos.data.prepared import DEFAULT_CONTEXT, PreparedWriter
from popos.data.registry import DatasetSpec, get_dataset
from popos.errors import UserError
from popos.geometry import crop_affine, square_box
from popos.metrics import face_size

MAX_DEPTH = 4
WFLW_SUBSETS = ("largepose", "expression", "illumination", "makeup", "occlusion", "blur")

ImageFn = Callable[[int], np.ndarray]


class PrepareError(UserError, ValueError):
    """Raw data that cannot become a prepared split; the message names the file and the line or split."""


class RawFilesMissing(UserError, FileNotFoundError):
    """A split's annotation file or image folder is not under the raw folder (not downloaded yet)."""


@dataclass(frozen=True)
class RawSplit:
    """Annotations of one split, where their images are and how to load face ``i`` (RGB uint8)."""

    annotations: Annotations
    image_root: Path
    load: ImageFn


# ---------------------------------------------------------------- locating raw files
def find_in(raw_dir: Path, name: str, *, folder: bool = False) -> Path:
    """The file (or folder) called ``name`` under ``raw_dir``, at most ``MAX_DEPTH`` levels down.

    The shallowest match wins; none raises :class:`RawFilesMissing`, several at that depth
    :class:`PrepareError`.
    """
    level = [raw_dir] if raw_dir.is_dir() else []
    for _ in range(MAX_DEPTH + 1):
        hits = [d / name for d in level if (d / name).is_dir() == folder and (d / name).exists()]
        if len(hits) > 1:
            raise PrepareError(f"{raw_dir}: several {name!r} found ({', '.join(map(str, hits))}); keep one")
        if hits:
            return hits[0]
        level = [
            Path(entry.path)
            for d in level
            for entry in os.scandir(d)
            if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX"
        ]
    kind = "folder" if folder else "file"
    raise RawFilesMissing(
        f"{raw_dir}: no {kind} {name!r} (searched {MAX_DEPTH} levels deep); run `popos data download` first"
    )


class _FileImages:
    """Loads image files listed in annotations, relative to ``root``, as RGB uint8."""

    def __init__(self, root: Path, annotations: Annotations) -> None:
        self.root, self.annotations = root, annotations

    def check(self) -> None:
        """Every image path stays inside ``root`` and names an existing file; else :class:`PrepareError`."""
        for name, where in zip(self.annotations.image, self.annotations.origin, strict=True):
            parts = PurePosixPath(name.replace("\\", "/"))
            if parts.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in parts.parts:
                raise PrepareError(
                    f"{where}: image path {name!r} leaves the image folder {self.root}; expected a relative path "
                    "without '..'"
                )
        missing = [i for i, name in enumerate(self.annotations.image) if not (self.root / name).is_file()]
        if missing:
            i = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PrepareError(
                f"{self.annotations.origin[i]}: image {self.root / self.annotations.image[i]} not found{more}"
            )

    def __call__(self, i: int) -> np.ndarray:
        """Image ``i`` as ``[H, W, 3]`` uint8 RGB, turned upright by its EXIF orientation (``cv2.imdecode``).

        A file that does not decode whole is a :class:`PrepareError` naming it, never a half-grey image:
        OpenCV refuses a cut PNG, and a JPEG cut short or with its tail overwritten (which OpenCV decodes
        with only a warning) is caught by :func:`_jpeg_ends`.
        """
        path = self.root / self.annotations.image[i]
        data = path.read_bytes()
        problem = None if _jpeg_ends(data) else "a JPEG without an end-of-image marker after its last scan"
        if problem is None:
            try:
                bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
            except cv2.error as exc:
                bgr, problem = None, str(exc).strip().splitlines()[-1]
            if bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        raise PrepareError(
            f"{self.annotations.origin[i]}: cannot decode image {path} ({problem or 'not a complete image file'}); "
            "expected a complete JPEG/PNG/BMP file (re-download or re-extract it)"
        )


def _jpeg_ends(data: bytes) -> bool:
    """False for a JPEG whose last scan (SOS marker ``FF DA``) is not followed by an end-of-image marker
    (``FF D9``): cut short, or its tail overwritten (zeros decode as valid data, so the decoder does not
    notice). Neither marker can occur inside scan data (``FF`` is stuffed there), and bytes after the
    end-of-image marker (camera trailers) are allowed. True for anything that is not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return True
    last_scan = data.rfind(b"\xff\xda")
    return last_scan >= 0 and data.find(b"\xff\xd9", last_scan) >= 0


@contextmanager
def _files(annotations: Annotations, image_root: Path) -> Iterator[RawSplit]:
    images = _FileImages(image_root, annotations)
    images.check()
    yield RawSplit(annotations, image_root, images)


def concat(parts: list[Annotations]) -> Annotations:
    """The faces of several :class:`Annotations`, in order (their ``extra`` keys must agree)."""
    return Annotations(
        image=[name for p in parts for name in p.image],
        landmarks=np.concatenate([p.landmarks for p in parts]),
        visible=np.concatenate([p.visible for p in parts]),
        box=np.concatenate([p.box for p in parts]),
        origin=[o for p in parts for o in p.origin],
        extra={k: np.concatenate([p.extra[k] for p in parts]) for k in parts[0].extra},
    )


# ---------------------------------------------------------------- per-dataset split openers
SplitOpener = Callable[[], AbstractContextManager[RawSplit]]
"""Opens one split's raw files (their names and formats are described in each registry entry)."""


def _wflw(_spec: DatasetSpec, raw_dir: Path) -> dict[str, SplitOpener]:
    def opener(split: str) -> SplitOpener:
        def open_split():
            if split in ("train", "test"):
                ann = read_wflw_list(find_in(raw_dir, f"list_98pt_rect_attr_{split}.txt"))
            else:  # a test subset: 197-field lines, box and attributes from the full test list
                subset = find_in(raw_dir, f"list_98pt_test_{split.removeprefix('test_')}.txt")
                ann = read_wflw_list(subset, full=read_wflw_list(find_in(raw_dir, "list_98pt_rect_attr_test.txt")))
            return _files(ann, find_in(raw_dir, "WFLW_images", folder=True))

        return open_split

    return {split: opener(split) for split in ("train", "test", *(f"test_{s}" for s in WFLW_SUBSETS))}


def _300w(spec: DatasetSpec, raw_dir: Path) -> dict[str, SplitOpener]:
    k = spec.num_landmarks
    folders = {
        "train": [("afw",), ("helen", "trainset"), ("lfpw", "trainset")],
        "common": [("helen", "testset"), ("lfpw", "testset")],
        "challenging": [("ibug",)],
        "full": [("helen", "testset"), ("lfpw", "testset"), ("ibug",)],
        "test": [("01_Indoor",), ("02_Outdoor",)],
    }

    def opener(parts: list[tuple[str, ...]]) -> SplitOpener:
        def read() -> Annotations:
            dirs = [find_in(raw_dir, top, folder=True).joinpath(*rest) for top, *rest in parts]
            return concat([read_ibug_folder(d, raw_dir, k) for d in dirs])

        return lambda: _files(read(), raw_dir)

    return {name: opener(parts) for name, parts in folders.items()}


def _cofw(_spec: DatasetSpec, raw_dir: Path) -> dict[str, SplitOpener]:
    @contextmanager
    def opened(mat_name: str) -> Iterator[RawSplit]:
        path = find_in(raw_dir, mat_name)
        with CofwFile(path) as f:
            yield RawSplit(f.annotations, path.parent, f.image)

    return {"train": lambda: opened("COFW_train_color.mat"), "test": lambda: opened("COFW_test_color.mat")}


def _aflw(spec: DatasetSpec, raw_dir: Path) -> dict[str, SplitOpener]:
    n_train = spec.split("train").count

    def opener(split: str) -> SplitOpener:
        def read() -> Annotations:
            ann = read_aflw_mat(find_in(raw_dir, "AFLWinfo_release.mat"))
            order = np.argsort(ann.extra["rank"])  # faces in the order of the permutation 'ra'
            chosen = order[:n_train] if split == "train" else order[n_train:]
            if split == "frontal":
                chosen = chosen[ann.extra["mask"][chosen].all(axis=1)]
            return ann.subset(chosen)

        return lambda: _files(read(), find_in(raw_dir, "flickr", folder=True))

    return {s: opener(s) for s in ("train", "test", "frontal")}


def _cocowb_face(_spec: DatasetSpec, raw_dir: Path) -> dict[str, SplitOpener]:
    def opener(split: str) -> SplitOpener:
        def open_split():
            images = find_in(raw_dir, f"{split}2017", folder=True)
            ann = read_coco_wholebody(find_in(raw_dir, f"coco_wholebody_{split}_v1.0.json"), images.name)
            return _files(ann, images.parent)

        return open_split

    return {s: opener(s) for s in ("train", "val")}


SPLIT_OPENERS: dict[str, Callable[[DatasetSpec, Path], dict[str, SplitOpener]]] = {
    "wflw": _wflw,
    "300w": _300w,
    "cofw": _cofw,
    "aflw": _aflw,
    "cocowb_face": _cocowb_face,
}


# ---------------------------------------------------------------- geometry of the faces
def face_boxes_and_norms(spec: DatasetSpec, ann: Annotations) -> tuple[np.ndarray, np.ndarray]:
    """Crop boxes ``[N, 4]`` ``(x, y, w, h)`` (before clipping) and NME normalisers ``[N]``, image px.

    A normaliser is NaN where it cannot be computed (a normaliser point unlabelled, or both points equal).
    """
    if spec.crop_box == "landmarks":
        masked = np.where(ann.visible[..., None], ann.landmarks, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # faces with no labelled point: NaN, rejected below
            lo, hi = np.nanmin(masked, axis=1, initial=np.inf), np.nanmax(masked, axis=1, initial=-np.inf)
        boxes = np.concatenate([lo, hi - lo], axis=1)
        bad = ~np.isfinite(boxes).all(axis=1)
        if bad.any():
            raise PrepareError(f"{ann.origin[int(np.argmax(bad))]}: no labelled landmark to build a face box from")
    else:
        boxes = ann.box.copy()
    if spec.norm_indices is None:
        norms = face_size(ann.box)
    else:
        i, j = spec.norm_indices
        norms = np.linalg.norm(ann.landmarks[:, i] - ann.landmarks[:, j], axis=-1)
        norms = np.where(ann.visible[:, i] & ann.visible[:, j], norms, np.nan)
    return boxes, np.where(norms > 0, norms, np.nan)


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(x, y, w, h)`` clipped to pixel centres ``[0, W - 1] x [0, H - 1]`` (mmpose's rule)."""
    x1, x2 = np.clip([box[0], box[0] + box[2]], 0, width - 1)
    y1, y2 = np.clip([box[1], box[1] + box[3]], 0, height - 1)
    return np.array([x1, y1, x2 - x1, y2 - y1])


def _crop_face(
    raw: RawSplit, i: int, box: np.ndarray, clip: bool, crop_size: int, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = raw.load(i)
    if clip:
        box = clip_box(box, image.shape[1], image.shape[0])
    centre, side = square_box(box, scale)
    if not side > 0:
        raise PrepareError(f"{raw.annotations.origin[i]}: face box {box.tolist()} has no extent; expected w, h > 0")
    m = crop_affine(centre, float(side), crop_size)
    crop = cv2.warpAffine(image, m, (crop_size, crop_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return crop, box, m


def _ordered_map(fn: Callable[[int], object], n: int, workers: int) -> Iterator[object]:
    """``fn(0), fn(1), ...`` computed by ``workers`` threads, yielded in order, at most ``4 * workers`` ahead."""
    if workers <= 1:
        yield from (fn(i) for i in range(n))
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for i in range(n):
            pending.append(pool.submit(fn, i))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ---------------------------------------------------------------- the command
def prepare(
    dataset: str | DatasetSpec,
    raw_root: str | Path,
    out_root: str | Path,
    crop_size: int,
    padding: float,
    *,
    context: float = DEFAULT_CONTEXT,
    strict: bool = False,
    force: bool = False,
    workers: int = 4,
    progress: bool = True,
) -> dict[str, int]:
    """Prepare every split of ``dataset`` from ``<raw_root>/<name>`` into ``<out_root>/<name>/<split>``.

    ``crop_size``: side of the cached crops, px; ``padding``: the network input covers ``padding *
    max(w, h)`` of the face box; the crop covers ``context`` times that. ``workers``: image-decoding
    threads. ``force``: write a split even when it has no face (it then replaces a non-empty one).
    Returns the number of faces written per split and prints a table of them against the published
    sizes, then raises :class:`PrepareError` naming the splits that failed, if any. See the module
    docstring for ``strict``.
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    if spec.generated:
        raise PrepareError(f"{spec.name} is rendered by `popos data synth`, not prepared from raw files")
    if crop_size <= 0 or padding <= 0 or context <= 0:
        raise ValueError(f"crop_size, padding and context must be positive, got {crop_size}, {padding}, {context}")
    raw_dir, out_dir = Path(raw_root) / spec.name, Path(out_root) / spec.name
    if not raw_dir.is_dir():
        raise RawFilesMissing(f"{raw_dir}: no raw data; run `popos data download {spec.name}` first")
    openers = SPLIT_OPENERS[spec.name](spec, raw_dir)
    written: dict[str, int] = {}
    failed: dict[str, str] = {}
    rows = []
    for split in spec.splits:
        optional = not strict and split.name not in (spec.train_split, spec.test_split)
        try:
            with ExitStack() as stack:
                try:
                    raw = stack.enter_context(openers[split.name]())
                except RawFilesMissing as exc:
                    if not optional:
                        raise
                    rows.append((split.name, "-", split.count, f"skipped: {exc}"))
                    continue
                n, skipped = _write_split(spec, split.name, raw, Path(raw_root), out_dir, crop_size, padding, context,
                                          strict=strict, force=force, workers=workers, progress=progress)
        except UserError as exc:  # bad data: this split fails, the others are still prepared
            failed[split.name] = str(exc)
            rows.append((split.name, "-", split.count, f"FAILED: {exc}"))
            continue
        written[split.name] = n
        status = "ok" if split.count in (None, n) else "size differs from the published one"
        rows.append((split.name, n, split.count, status + (f"; {skipped} unscorable faces skipped" if skipped else "")))
    print(f"\n{spec.title}: prepared in {out_dir}")
    print(f"{'split':<20}{'faces':>8}{'published':>11}  status")
    for name, n, count, status in rows:
        print(f"{name:<20}{n!s:>8}{count if count is not None else '-'!s:>11}  {status}")
    if failed:
        first, message = next(iter(failed.items()))
        raise PrepareError(
            f"{spec.name}: split(s) {', '.join(failed)} failed (nothing written for them; the other splits were "
            f"prepared, see the table above); {first}: {message}"
        )
    return written


def _write_split(
    spec: DatasetSpec, split: str, raw: RawSplit, raw_root: Path, out_dir: Path, crop_size: int, padding: float,
    context: float, *, strict: bool, force: bool, workers: int, progress: bool,
) -> tuple[int, int]:
    ann = raw.annotations
    boxes, norms = face_boxes_and_norms(spec, ann)
    keep = np.flatnonzero(np.isfinite(norms))
    if len(keep) == 0 and not force:
        previous = out_dir / split / "meta.json"
        kept = f"the prepared split {out_dir / split} was left as it was" if previous.is_file() else "nothing written"
        raise PrepareError(
            f"{spec.name}/{split}: no face to write ({len(ann)} in the annotations, none scorable); {kept}; "
            "expected a non-empty annotation list (--force writes an empty split)"
        )
    expected = spec.split(split).count
    if expected is not None and expected != len(keep):
        message = f"{spec.name}/{split}: {len(keep)} faces, but the published split has {expected}"
        if strict:
            raise PrepareError(message + " (strict)")
        warnings.warn(message, stacklevel=3)
    prefix = raw.image_root.resolve().relative_to(raw_root.resolve())
    scale = padding * context

    def work(j: int):
        i = int(keep[j])
        return _crop_face(raw, i, boxes[i], spec.clip_box, crop_size, scale)

    with PreparedWriter(out_dir / split, spec.name, split, num_landmarks=spec.num_landmarks, crop_size=crop_size,
                        padding=padding, context=context) as writer:
        faces = tqdm(_ordered_map(work, len(keep), workers), total=len(keep), desc=f"{spec.name}/{split}",
                     unit=" faces", disable=not progress)
        for i, (crop, box, m) in zip(keep, faces, strict=True):
            writer.add(image=(prefix / ann.image[i]).as_posix(), crop=crop, landmarks=ann.landmarks[i],
                       visible=ann.visible[i], box=box, norm=float(norms[i]), crop_affine=m)
    return len(keep), len(ann) - len(keep)
