"""Readers for the raw annotation formats of the five benchmarks; each usable on its own.

Every reader returns :class:`Annotations`: ``N`` faces of ``K`` landmarks, points ``(x, y)`` in image
pixels, 0-based, pixel ``i`` centred at ``i``. Where a format is 1-based (MATLAB ``.mat`` files of COFW,
iBUG ``.pts`` files) the reader subtracts 1 exactly once; AFLW's ``AFLWinfo_release.mat`` is used as
stored, as every reference implementation does (a shared offset would not change the NME anyway).

Bad input raises :class:`AnnotationError` (a :class:`popos.errors.UserError`) naming the file and the
line or record: a wrong number of fields, a point-count mismatch, NaN coordinates, a value that is not a
number, text that is not UTF-8, an unreadable ``.mat`` variable; a missing file it refers to raises
:class:`MissingFileError` (also a ``UserError``). The file layouts each reader accepts are listed in each
registry entry's ``raw_layout`` (:mod:`popos.data.registry`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from popos.errors import UserError

WFLW_POINTS = 98
WFLW_FIELDS = WFLW_POINTS * 2 + 4 + 6 + 1  # list_98pt_rect_attr_{train,test}.txt
WFLW_SUBSET_FIELDS = WFLW_POINTS * 2 + 1  # list_98pt_test_<subset>.txt
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
COFW_POINTS = 29
AFLW_POINTS = 19
COCO_FACE_POINTS = 68
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


class AnnotationError(UserError, ValueError):
    """A raw annotation file is malformed; the message names the file and the line or record."""


class MissingFileError(UserError, FileNotFoundError):
    """A file an annotation file refers to (or a folder's annotation files) is absent; the message names it."""


@dataclass(frozen=True)
class Annotations:
    """``N`` faces read from one annotation source.

    * ``image``: ``N`` image paths relative to the dataset's image folder (COFW: ``"<mat file>#<i>"``,
      the images live inside the ``.mat``);
    * ``landmarks``: ``[N, K, 2]`` float64, ``(x, y)`` image px, 0-based;
    * ``visible``: ``[N, K]`` bool, the point is labelled and counts in the NME (COFW's occluded points
      and AFLW's re-annotated invisible points are labelled; COCO-WholeBody's ``v = 0`` are not);
    * ``box``: ``[N, 4]`` float64 ``(x, y, w, h)`` image px, the dataset's own face box (the tight
      landmark box where the format has none);
    * ``origin``: ``N`` strings ``"file:line"`` or ``"file[record]"`` for error messages;
    * ``extra``: dataset-specific ``[N, ...]`` arrays (WFLW ``attributes``, COFW ``occluded``, AFLW
      ``mask`` and ``rank``, COCO-WholeBody ``annotation_id``).
    """

    image: list[str]
    landmarks: np.ndarray
    visible: np.ndarray
    box: np.ndarray
    origin: list[str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, index: np.ndarray | list[int]) -> Annotations:
        """The faces at ``index`` (integer positions), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return Annotations(
            image=[self.image[i] for i in index],
            landmarks=self.landmarks[index],
            visible=self.visible[index],
            box=self.box[index],
            origin=[self.origin[i] for i in index],
            extra={k: v[index] for k, v in self.extra.items()},
        )


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """Tight ``(x, y, w, h)`` box ``[..., 4]`` of ``[..., K, 2]`` landmarks (image px).

    >>> landmark_box(np.array([[1.0, 2.0], [4.0, 8.0]])).tolist()
    [1.0, 2.0, 3.0, 6.0]
    """
    lo, hi = landmarks.min(axis=-2), landmarks.max(axis=-2)
    return np.concatenate([lo, hi - lo], axis=-1)


def _check_finite(values: np.ndarray, where: str, what: str = "coordinates") -> None:
    if not np.isfinite(values).all():
        raise AnnotationError(f"{where}: {what} contain NaN or inf")


def _floats(values: list, where: str, what: str = "values") -> np.ndarray:
    """Numbers from text tokens or JSON values; anything else (a word, a nested list) is an error naming it."""
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        try:
            out[i] = float(value)
        except (ValueError, TypeError):
            raise AnnotationError(f"{where}: {what}: expected a number, got {value!r}") from None
    return out


def _text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; a line that is not UTF-8 is an error naming the file and the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror})") from None
    lines = raw.splitlines()
    for line_no, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AnnotationError(
                f"{path}:{line_no}: not UTF-8 text (byte {line[exc.start]:#04x} at column {exc.start + 1}); "
                "expected a UTF-8 (or ASCII) annotation file"
            ) from None
    return [line.decode("utf-8") for line in lines]


# ---------------------------------------------------------------- WFLW
def read_wflw_list(path: str | Path, full: Annotations | None = None) -> Annotations:
    """WFLW list file, one face per line, in either layout of the official annotation archive.

    * ``list_98pt_rect_attr_{train,test}.txt``: 207 space-separated fields, ``x0 y0 ... x97 y97``
      (0-based image px), the detector rectangle ``x_min y_min x_max y_max``, six 0/1 attributes (pose,
      expression, illumination, make-up, occlusion, blur) and the image path relative to ``WFLW_images/``.
    * ``list_98pt_test/list_98pt_test_<subset>.txt``: 197 fields, the 98 points then the image path (the
      archive's README: "coordinates of 98 landmarks (196) + image name (1)"): no rectangle, no attributes.
      Every subset face is a face of the full test list, so ``full`` (that list, read by this function)
      gives them: a subset face is the face of ``full`` with the same image path whose 98 points agree
      within :data:`WFLW_MATCH_TOLERANCE` px (the closest if several do). A face found nowhere in
      ``full``, or a subset file read without ``full``, is an error naming the file and the line.

    ``box`` is the rectangle as ``(x, y, w, h)``; ``extra["attributes"]`` is ``[N, 6]`` int8. Every
    point is labelled. All lines of one file must have the same layout.
    """
    path = Path(path)
    images, landmarks, boxes, attributes, origin = [], [], [], [], []
    layout = None
    faces_of: dict[str, list[int]] = {}  # image path -> its faces in ``full``
    for i, name in enumerate(full.image if full is not None else []):
        faces_of.setdefault(name, []).append(i)
    for line_no, line in enumerate(_text_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{line_no}"
        if len(tokens) not in (WFLW_FIELDS, WFLW_SUBSET_FIELDS):
            raise AnnotationError(
                f"{where}: {len(tokens)} fields, expected {WFLW_FIELDS} (98 x,y + 4 box + 6 attributes + image, "
                f"list_98pt_rect_attr_*.txt) or {WFLW_SUBSET_FIELDS} (98 x,y + image, list_98pt_test_*.txt)"
            )
        if layout is None:
            layout = len(tokens)
        elif len(tokens) != layout:
            raise AnnotationError(f"{where}: {len(tokens)} fields, but the lines above have {layout}")
        points = _floats(tokens[: 2 * WFLW_POINTS], where, "coordinates")
        _check_finite(points, where)
        points = points.reshape(WFLW_POINTS, 2)
        image = tokens[-1]
        if layout == WFLW_FIELDS:
            rect = _floats(tokens[196:200], where, "rectangle")
            _check_finite(rect, where, "rectangle")
            attr = _floats(tokens[200:206], where, "attributes")
            if not np.isin(attr, (0, 1)).all():
                raise AnnotationError(f"{where}: attributes must be 0 or 1, got {tokens[200:206]}")
            x1, y1, x2, y2 = rect
            box, attr = np.array([x1, y1, x2 - x1, y2 - y1]), attr.astype(np.int8)
        else:
            box, attr = _wflw_face_in_full(full, faces_of.get(image, []), image, points, where)
        images.append(image)
        landmarks.append(points)
        boxes.append(box)
        attributes.append(attr)
        origin.append(where)
    n = len(images)
    return Annotations(
        image=images,
        landmarks=np.array(landmarks, dtype=np.float64).reshape(n, WFLW_POINTS, 2),
        visible=np.ones((n, WFLW_POINTS), dtype=bool),
        box=np.array(boxes, dtype=np.float64).reshape(n, 4),
        origin=origin,
        extra={"attributes": np.array(attributes, dtype=np.int8).reshape(n, 6)},
    )


WFLW_MATCH_TOLERANCE = 1e-3
"""Largest coordinate difference (px) between a subset face and its face in the full test list."""


def _wflw_face_in_full(full: Annotations | None, candidates: list[int], image: str, points: np.ndarray, where: str):
    """``(box, attributes)`` of the face of ``full`` (one of ``candidates``, its faces of ``image``) with these
    points."""
    if full is None:
        raise AnnotationError(
            f"{where}: {WFLW_SUBSET_FIELDS} fields (a test-subset line without box or attributes); "
            "read it with the full test list (read_wflw_list(path, full=...)) to take them from there"
        )
    if candidates:
        diff = np.abs(full.landmarks[candidates] - points).max(axis=(1, 2))
        best = int(np.argmin(diff))
        if diff[best] <= WFLW_MATCH_TOLERANCE:
            i = candidates[best]
            return full.box[i], full.extra["attributes"][i]
    nearest = f"; the closest face of that image differs by {diff.min():.3g} px" if candidates else ""
    source = full.origin[0].rsplit(":", 1)[0] if len(full) else "the full test list"
    raise AnnotationError(
        f"{where}: this face of {image} is not in {source} (expected the same image path and the same 98 points "
        f"within {WFLW_MATCH_TOLERANCE} px{nearest})"
    )


# ---------------------------------------------------------------- iBUG .pts (300W)
_PTS_HEADER = re.compile(r"^\s*n_points\s*:\s*(\d+)\s*$")


def read_pts(path: str | Path, num_points: int | None = None) -> np.ndarray:
    """iBUG ``.pts`` file -> ``[N, 2]`` float64 ``(x, y)`` image px, **0-based**.

    The files are 1-based (the iBUG/menpo convention), so 1 is subtracted here, once. Layout: a
    ``version: 1`` line, ``n_points: N``, ``{``, N lines ``x y``, ``}``. ``num_points`` (optional)
    is the count the caller expects.
    """
    path = Path(path)
    lines = [ln.strip() for ln in _text_lines(path)]
    lines = [ln for ln in lines if ln]
    header = next((i for i, ln in enumerate(lines) if _PTS_HEADER.match(ln)), None)
    if header is None:
        raise AnnotationError(f"{path}: no 'n_points: N' line")
    n = int(_PTS_HEADER.match(lines[header]).group(1))
    if num_points is not None and n != num_points:
        raise AnnotationError(f"{path}: n_points is {n}, expected {num_points}")
    try:
        start, end = lines.index("{", header), lines.index("}", header)
    except ValueError:
        raise AnnotationError(f"{path}: points must be enclosed in '{{' and '}}' lines") from None
    body = lines[start + 1 : end]
    if len(body) != n:
        raise AnnotationError(f"{path}: {len(body)} point lines, but n_points says {n}")
    points = np.empty((n, 2), dtype=np.float64)
    for i, ln in enumerate(body):
        tokens = ln.split()
        where = f"{path}:point {i}"
        if len(tokens) != 2:
            raise AnnotationError(f"{where}: expected 'x y', got {ln!r}")
        points[i] = _floats(tokens, where, "point")
    _check_finite(points, str(path))
    return points - 1.0


def find_image(stem_path: Path) -> Path | None:
    """The image beside an annotation file: same path, one of the usual image suffixes; ``None`` if absent."""
    for suffix in IMAGE_SUFFIXES:
        candidate = stem_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def read_ibug_folder(folder: str | Path, image_root: str | Path, num_points: int = 68) -> Annotations:
    """Every ``*.pts`` file in ``folder`` (sorted by name) with the image of the same name beside it.

    ``image`` paths are relative to ``image_root``; ``box`` is the tight landmark box (``.pts`` files
    have no box). A ``.pts`` without an image raises :class:`MissingFileError` naming it.
    """
    folder, image_root = Path(folder), Path(image_root)
    pts_files = sorted(folder.glob("*.pts"))
    if not pts_files:
        raise MissingFileError(f"{folder}: no .pts files; expected iBUG .pts annotations beside the images")
    images, landmarks = [], []
    for pts in pts_files:
        image = find_image(pts)
        if image is None:
            raise MissingFileError(f"{pts}: no image beside it (looked for {', '.join(IMAGE_SUFFIXES[:4])})")
        landmarks.append(read_pts(pts, num_points))
        images.append(image.relative_to(image_root).as_posix())
    lm = np.array(landmarks, dtype=np.float64)
    return Annotations(
        image=images,
        landmarks=lm,
        visible=np.ones(lm.shape[:2], dtype=bool),
        box=landmark_box(lm),
        origin=[str(p) for p in pts_files],
    )


# ---------------------------------------------------------------- MATLAB helpers
def _mat_error(path: Path, name: str, expected: str, got: Any) -> AnnotationError:
    return AnnotationError(f"{path}: variable {name!r} unreadable: expected {expected}, got {got}")


def _h5_array(f: h5py.File, path: Path, name: str, rows: int | None = None) -> np.ndarray:
    """A numeric MATLAB matrix from a v7.3 file as stored in MATLAB (h5py sees it transposed)."""
    if name not in f or not isinstance(f[name], h5py.Dataset):
        raise _mat_error(path, name, "a numeric matrix", "nothing" if name not in f else type(f[name]).__name__)
    data = np.asarray(f[name][()]).T
    if data.dtype.kind not in "fiub" or data.ndim != 2 or (rows is not None and data.shape[1] != rows):
        raise _mat_error(path, name, f"an N x {rows} numeric matrix", f"{data.dtype} {data.shape}")
    return data


def _h5_cell(f: h5py.File, path: Path, name: str) -> np.ndarray:
    """The object references of a MATLAB cell array in a v7.3 file, flattened in MATLAB order."""
    if name not in f or f[name].dtype != h5py.ref_dtype:
        raise _mat_error(path, name, "a cell array", "nothing" if name not in f else f[name].dtype)
    return np.asarray(f[name][()]).T.reshape(-1)


# ---------------------------------------------------------------- COFW (v7.3)
class CofwFile:
    """A COFW ``COFW_{train,test}_color.mat`` (MATLAB v7.3 / HDF5) opened for streaming.

    ``annotations``: 29 points per face (``phis*`` columns x1..x29, y1..y29, occlusion1..29, 1-based ->
    0-based), every point labelled (occluded ones are scored too, as in mmpose);
    ``extra["occluded"]`` ``[N, 29]`` bool; ``box`` from ``bboxes*`` ``[x, y, w, h]`` with ``x, y``
    made 0-based. ``image(i)`` reads face ``i`` as ``[H, W, 3]`` uint8 RGB (grey images are repeated).
    Use as a context manager.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise AnnotationError(f"{self.path}: not a MATLAB v7.3 (HDF5) file: {exc}") from None
        try:
            self.annotations = self._read()
        except BaseException:
            self._file.close()
            raise

    def _read(self) -> Annotations:
        f, path = self._file, self.path
        suffix = "Tr" if "phisTr" in f else "T"
        phis = _h5_array(f, path, "phis" + suffix, 3 * COFW_POINTS)
        boxes = _h5_array(f, path, "bboxes" + suffix, 4).astype(np.float64)
        self._refs = _h5_cell(f, path, "Is" + suffix)
        n = phis.shape[0]
        if boxes.shape[0] != n or self._refs.shape[0] != n:
            raise AnnotationError(
                f"{path}: {n} faces in 'phis{suffix}' but {boxes.shape[0]} boxes and {self._refs.shape[0]} images"
            )
        phis = phis.astype(np.float64)
        landmarks = np.stack([phis[:, :COFW_POINTS], phis[:, COFW_POINTS : 2 * COFW_POINTS]], axis=-1) - 1.0
        for i in range(n):
            _check_finite(landmarks[i], f"{path}[{i}]")
            _check_finite(boxes[i], f"{path}[{i}]", "box")
        boxes[:, :2] -= 1.0
        return Annotations(
            image=[f"{path.name}#{i}" for i in range(n)],
            landmarks=landmarks,
            visible=np.ones((n, COFW_POINTS), dtype=bool),
            box=boxes,
            origin=[f"{path}[{i}]" for i in range(n)],
            extra={"occluded": phis[:, 2 * COFW_POINTS :] > 0.5},
        )

    def image(self, i: int) -> np.ndarray:
        """Face ``i`` as ``[H, W, 3]`` uint8 RGB."""
        obj = self._file[self._refs[i]]
        pixels = np.asarray(obj[()]).T
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise AnnotationError(f"{self.path}[{i}]: image has shape {pixels.shape}, expected H x W (x 3)")
        return np.ascontiguousarray(pixels, dtype=np.uint8)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CofwFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- AFLW-19
def _aflw_variables_v5(path: Path) -> dict[str, Any]:
    mat = scipy.io.loadmat(path, variable_names=["bbox", "data", "mask_new", "nameList", "ra"])
    out: dict[str, Any] = {}
    for name in ("bbox", "data", "mask_new", "ra"):
        if name not in mat:
            raise _mat_error(path, name, "a numeric matrix", "nothing")
        out[name] = np.asarray(mat[name])
    if "nameList" not in mat or mat["nameList"].dtype != object:
        raise _mat_error(path, "nameList", "a cell array of file names", "nothing")
    try:
        out["nameList"] = [str(np.asarray(c).reshape(-1)[0]) for c in mat["nameList"].reshape(-1)]
    except IndexError:
        raise _mat_error(path, "nameList", "a cell array of file names", "an empty cell") from None
    return out


def _aflw_variables_v73(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        out: dict[str, Any] = {name: _h5_array(f, path, name) for name in ("bbox", "data", "mask_new", "ra")}
        names = []
        for ref in _h5_cell(f, path, "nameList"):
            chars = np.asarray(f[ref][()]).reshape(-1)
            names.append("".join(chr(c) for c in chars))
        out["nameList"] = names
    return out


def read_aflw_mat(path: str | Path) -> Annotations:
    """AFLW-19 ``AFLWinfo_release.mat`` (Zhu et al., CVPR 2016): 24,386 faces of 19 points.

    Variables: ``bbox`` ``[N, 4]`` as ``[x1 x2 y1 y2]`` -> ``box`` ``(x1, y1, x2 - x1, y2 - y1)``;
    ``data`` ``[N, 38]`` (x1..x19, y1..y19); ``mask_new`` ``[N, 19]`` visibility ->
    ``extra["mask"]`` bool; ``nameList`` -> ``image`` (relative to ``flickr/``); ``ra``, the 1-based
    permutation whose first 20,000 entries are the training faces -> ``extra["rank"]`` ``[N]`` int64,
    the 0-based position of each face in it. The release file is MATLAB v5 (read with SciPy); a v7.3
    re-save is read with h5py. Every point is labelled (CCL re-annotated the invisible ones).
    """
    path = Path(path)
    try:
        major, _ = scipy.io.matlab.matfile_version(path)
        var = _aflw_variables_v73(path) if major == 2 else _aflw_variables_v5(path)
    except (scipy.io.matlab.MatReadError, ValueError, OSError) as exc:
        if isinstance(exc, AnnotationError):
            raise
        raise AnnotationError(f"{path}: not a readable MATLAB .mat file: {exc}") from None
    data, bbox, mask = var["data"], var["bbox"], var["mask_new"]
    n = len(var["nameList"])
    for name, arr, cols in (("data", data, 2 * AFLW_POINTS), ("bbox", bbox, 4), ("mask_new", mask, AFLW_POINTS)):
        if arr.ndim != 2 or arr.shape != (n, cols) or arr.dtype.kind not in "fiub":
            raise _mat_error(path, name, f"a {n} x {cols} numeric matrix", f"{arr.dtype} {arr.shape}")
    ra = var["ra"].reshape(-1).astype(np.int64)
    if sorted(ra.tolist()) != list(range(1, n + 1)):
        raise _mat_error(path, "ra", f"a permutation of 1..{n}", f"{ra.size} values in {ra.min()}..{ra.max()}")
    data, bbox = data.astype(np.float64), bbox.astype(np.float64)
    for i in range(n):
        _check_finite(data[i], f"{path}[{i}]")
        _check_finite(bbox[i], f"{path}[{i}]", "bbox")
    rank = np.empty(n, dtype=np.int64)
    rank[ra - 1] = np.arange(n)
    x1, x2, y1, y2 = bbox.T
    return Annotations(
        image=var["nameList"],
        landmarks=np.stack([data[:, :AFLW_POINTS], data[:, AFLW_POINTS:]], axis=-1),
        visible=np.ones((n, AFLW_POINTS), dtype=bool),
        box=np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1),
        origin=[f"{path}[{i}]" for i in range(n)],
        extra={"mask": mask > 0.5, "rank": rank},
    )


# ---------------------------------------------------------------- COCO-WholeBody
_WS = re.compile(r"\s*")
_DECODER = json.JSONDecoder()
_NUMBER_CHARS = frozenset("0123456789.eE+-")


class _JsonStream:
    """Incremental reading of a JSON text: values are decoded one at a time from a sliding buffer."""

    def __init__(self, f, path: Path, chunk_size: int) -> None:
        self.f, self.path, self.chunk_size = f, path, chunk_size
        self.buf, self.pos, self.eof = "", 0, False

    def _more(self) -> bool:
        try:
            data = "" if self.eof else self.f.read(self.chunk_size)
        except UnicodeDecodeError as exc:
            raise AnnotationError(
                f"{self.path}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); expected a UTF-8 JSON file"
            ) from None
        if not data:
            self.eof = True
            return False
        self.buf, self.pos = self.buf[self.pos :] + data, 0
        return True

    def peek(self) -> str:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                raise AnnotationError(f"{self.path}: unexpected end of the JSON file")

    def expect(self, char: str) -> None:
        got = self.peek()
        if got != char:
            raise AnnotationError(f"{self.path}: invalid JSON: expected {char!r}, got {got!r}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._more():
                    continue
                raise AnnotationError(f"{self.path}: invalid JSON: {exc}") from None
            # a number cut by the buffer end ("3." of "3.25") parses as a shorter one: read on and retry
            if (end < len(self.buf) and self.buf[end] not in _NUMBER_CHARS) or not self._more():
                self.pos = end
                return value


def iter_json_array(path: str | Path, key: str, *, chunk_size: int = 1 << 24) -> Iterator[Any]:
    """Yield the elements of the top-level array ``key`` of a JSON object file, one at a time.

    Memory stays at about ``chunk_size`` characters plus one element, whatever the file size (the
    COCO-WholeBody train file is over 1 GB). Other top-level values are decoded and dropped.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        s = _JsonStream(f, path, chunk_size)
        s.expect("{")
        if s.peek() == "}":
            raise AnnotationError(f"{path}: no top-level array {key!r}")
        while True:
            name = s.value()
            s.expect(":")
            if name == key and s.peek() != "[":
                raise AnnotationError(f"{path}: top-level {key!r} is not an array")
            if s.peek() == "[":
                s.pos += 1
                if s.peek() == "]":
                    s.pos += 1
                else:
                    while True:
                        item = s.value()
                        if name == key:
                            yield item
                        sep = s.peek()
                        s.pos += 1
                        if sep == "]":
                            break
                        if sep != ",":
                            raise AnnotationError(f"{path}: invalid JSON in {name!r}: expected ',' or ']'")
                if name == key:
                    return
            else:
                s.value()
            sep = s.peek()
            s.pos += 1
            if sep == "}":
                raise AnnotationError(f"{path}: no top-level array {key!r}")
            if sep != ",":
                raise AnnotationError(f"{path}: invalid JSON: expected ',' or '}}' after {name!r}")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_coco_wholebody(path: str | Path, image_folder: str) -> Annotations:
    """COCO-WholeBody JSON (``coco_wholebody_{train,val}_v1.0.json``): one face per valid person.

    A person is skipped when ``face_valid`` is false or ``max(face_kpts) <= 0`` (mmpose's rule).
    ``face_kpts`` ``[x, y, v] x 68`` (0-based) -> ``landmarks`` and ``visible = v > 0``; ``face_box``
    ``[x, y, w, h]`` -> ``box``; ``image`` = ``image_folder/file_name`` (e.g. ``val2017/...jpg``);
    ``extra["annotation_id"]`` the COCO annotation id. The file is streamed (see
    :func:`iter_json_array`), two passes: images, then annotations.
    """
    path = Path(path)
    files = {}
    for i, im in enumerate(iter_json_array(path, "images")):
        if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise AnnotationError(f"{path}: images[{i}]: expected an integer 'id' and a text 'file_name'")
        files[im["id"]] = im["file_name"]
    images, landmarks, visible, boxes, origin, ids = [], [], [], [], [], []
    for i, ann in enumerate(iter_json_array(path, "annotations")):
        where = f"{path}[annotations {i}]"
        if not isinstance(ann, dict):
            raise AnnotationError(f"{where}: expected an object")
        if not ann.get("face_valid", False):
            continue
        kpts, box = ann.get("face_kpts"), ann.get("face_box")
        if not isinstance(kpts, list) or len(kpts) != 3 * COCO_FACE_POINTS:
            got = len(kpts) if isinstance(kpts, list) else type(kpts).__name__
            raise AnnotationError(f"{where}: face_kpts has {got} values, expected {3 * COCO_FACE_POINTS}")
        kpts = _floats(kpts, where, "face_kpts").reshape(COCO_FACE_POINTS, 3)
        _check_finite(kpts, where, "face_kpts")
        if kpts.max() <= 0:
            continue
        if not isinstance(box, list) or len(box) != 4:
            raise AnnotationError(f"{where}: face_box must be [x, y, w, h], got {box!r}")
        box = _floats(box, where, "face_box")
        _check_finite(box, where, "face_box")
        if not _is_id(ann.get("id")):
            raise AnnotationError(f"{where}: expected an integer annotation 'id', got {ann.get('id')!r}")
        if not _is_id(ann.get("image_id")) or ann["image_id"] not in files:
            raise AnnotationError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        images.append(f"{image_folder}/{files[ann['image_id']]}")
        landmarks.append(kpts[:, :2])
        visible.append(kpts[:, 2] > 0)
        boxes.append(box)
        origin.append(where)
        ids.append(ann["id"])
    n = len(images)
    return Annotations(
        image=images,
        landmarks=np.array(landmarks, dtype=np.float64).reshape(n, COCO_FACE_POINTS, 2),
        visible=np.array(visible, dtype=bool).reshape(n, COCO_FACE_POINTS),
        box=np.array(boxes, dtype=np.float64).reshape(n, 4),
        origin=origin,
        extra={"annotation_id": np.array(ids, dtype=np.int64)},
    )
