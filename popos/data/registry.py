"""The benchmark datasets: one frozen :class:`DatasetSpec` per dataset, the single place the code asks.

``DATASETS["wflw"]`` gives a spec; an unknown name raises ``KeyError`` listing the known ones. Every
index is 0-based and every list is the one mmpose, HRNet-Facial and STAR publish (they agree):

* ``flip_index``: landmark ``k`` of a horizontally flipped face is landmark ``flip_index[k]``;
* ``norm_indices``: the two landmarks whose distance is the NME normaliser (outer eye corners, or
  COFW's 8/9), or ``None`` where the face size ``sqrt(w * h)`` of the dataset's box is used (AFLW, see
  :func:`popos.metrics.face_size`);
* ``crop_box``: which box the crops are centred on: ``"landmarks"`` (tight box of the landmarks, as
  the WFLW/300W JSONs of HRNet-Facial and mmpose do) or ``"annotation"`` (the dataset's own box:
  COFW, AFLW, COCO-WholeBody); ``clip_box``: the dataset's box is first clipped to the image (mmpose
  does so for COFW and COCO-WholeBody);
* ``splits``: every split with its published size; ``train_split`` / ``test_split`` are the defaults
  the benchmark trains and reports on;
* ``raw_layout``: the raw files ``popos data prepare`` reads and the exact layout each reader of
  :mod:`popos.data.formats` accepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Split:
    """One split of a dataset: its name, published size (``None`` if none is published), what it is."""

    name: str
    count: int | None
    description: str


@dataclass(frozen=True)
class Source:
    """One file to fetch: the name it is expected under, where it comes from and how it is installed.

    ``manual``: the host needs a registration, a licence agreement or a browser (Google Drive), so the
    user fetches it and ``popos data download NAME --from DIR`` ingests it. ``extract``: a zip/tar
    archive to unpack into the dataset folder (kept under ``downloads/`` for later verification);
    otherwise the file itself is placed in the dataset folder. ``folder``: the top-level folder the
    archive unpacks to, so that an already-unpacked copy can be ingested instead. ``sha256``: the
    published checksum, or ``None`` when none is published (the first download is then recorded in
    the dataset's lock file and checked on every later run).
    """

    filename: str
    url: str
    manual: bool = False
    extract: bool = True
    folder: str | None = None
    sha256: str | None = None
    note: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the code needs to know about one dataset (see the module docstring)."""

    name: str
    title: str
    num_landmarks: int
    flip_index: list[int]
    norm_indices: tuple[int, int] | None
    crop_box: Literal["landmarks", "annotation"]
    clip_box: bool
    splits: tuple[Split, ...]
    train_split: str
    test_split: str
    homepage: str
    licence: str
    sources: tuple[Source, ...] = ()
    manual_steps: str = ""
    raw_layout: str = ""
    generated: bool = False

    def __post_init__(self) -> None:
        names = [s.name for s in self.splits]
        k = self.num_landmarks
        if sorted(self.flip_index) != list(range(k)):
            raise ValueError(f"{self.name}: flip_index must be a permutation of 0..{k - 1}")
        if any(self.flip_index[j] != i for i, j in enumerate(self.flip_index)):
            raise ValueError(f"{self.name}: flip_index must be its own inverse (flipping twice is the identity)")
        if self.norm_indices is not None and not all(0 <= i < k for i in self.norm_indices):
            raise ValueError(f"{self.name}: norm_indices {self.norm_indices} out of range 0..{k - 1}")
        for default in (self.train_split, self.test_split):
            if default not in names:
                raise ValueError(f"{self.name}: default split {default!r} is not one of {names}")

    @property
    def needs_manual_steps(self) -> bool:
        """True when some file cannot be fetched without a registration or a browser."""
        return any(s.manual for s in self.sources)

    def split(self, name: str) -> Split:
        """The split called ``name``; ``KeyError`` listing the splits of this dataset otherwise."""
        for s in self.splits:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.splits)
        raise KeyError(f"dataset {self.name!r} has no split {name!r}; known splits: {known}")


class _Registry(Mapping[str, DatasetSpec]):
    """A read-only mapping whose missing-key error lists the known dataset names."""

    def __init__(self, specs: tuple[DatasetSpec, ...]) -> None:
        self._specs = {s.name: s for s in specs}

    def __getitem__(self, name: str) -> DatasetSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(self._specs)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; ``ValueError`` listing the known datasets otherwise."""
    try:
        return DATASETS[name]
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


IBUG68_FLIP = (
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29,
    30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40, 54, 53, 52, 51, 50, 49, 48, 59, 58, 57,
    56, 55, 64, 63, 62, 61, 60, 67, 66, 65,
)

WFLW = DatasetSpec(
    name="wflw",
    title="WFLW (98 points)",
    num_landmarks=98,
    flip_index=[
        32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,
        4, 3, 2, 1, 0, 46, 45, 44, 43, 42, 50, 49, 48, 47, 37, 36, 35, 34, 33, 41, 40, 39, 38, 51, 52, 53, 54, 59,
        58, 57, 56, 55, 72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65, 82, 81, 80, 79, 78, 77, 76,
        87, 86, 85, 84, 83, 92, 91, 90, 89, 88, 95, 94, 93, 97, 96,
    ],
    norm_indices=(60, 72),
    crop_box="landmarks",
    clip_box=False,
    splits=(
        Split("train", 7500, "list_98pt_rect_attr_train.txt"),
        Split("test", 2500, "list_98pt_rect_attr_test.txt"),
        Split("test_largepose", 326, "test subset: large head pose"),
        Split("test_expression", 314, "test subset: exaggerated expression"),
        Split("test_illumination", 698, "test subset: extreme illumination"),
        Split("test_makeup", 206, "test subset: make-up"),
        Split("test_occlusion", 736, "test subset: occlusion"),
        Split("test_blur", 773, "test subset: blur"),
    ),
    train_split="train",
    test_split="test",
    homepage="https://wywu.github.io/projects/LAB/WFLW.html",
    licence="No licence stated by the authors; the images are WIDER FACE crops (CC BY-NC-ND 4.0): "
    "research / non-commercial use only.",
    sources=(
        Source(
            "WFLW_annotations.tar.gz",
            "https://wywu.github.io/projects/LAB/support/WFLW_annotations.tar.gz",
            folder="WFLW_annotations",
        ),
        Source(
            "WFLW_images.tar.gz",
            "https://drive.google.com/file/d/1hzBd48JIdWTJSsATBEB_eFVvPL1bx6UC",
            manual=True,
            folder="WFLW_images",
            note="Google Drive needs a browser (a Baidu mirror is linked from the homepage).",
        ),
    ),
    manual_steps="Download WFLW_images.tar.gz from Google Drive in a browser.",
    raw_layout="read_wflw_list: list_98pt_rect_attr_{train,test}.txt, one face per line, 207 space-separated "
    "fields (98 x,y pairs, 0-based image px; x_min y_min x_max y_max; six 0/1 attributes; the image path under "
    "WFLW_images/); list_98pt_test_{largepose,expression,illumination,makeup,occlusion,blur}.txt, 197 fields (98 "
    "x,y pairs, the image path), each face matched to the full test list by image path and points for its box "
    "and attributes. Images: WFLW_images/<event>/<name>.jpg.",
)

W300 = DatasetSpec(
    name="300w",
    title="300W (68 points, iBUG layout)",
    num_landmarks=68,
    flip_index=list(IBUG68_FLIP),
    norm_indices=(36, 45),
    crop_box="landmarks",
    clip_box=False,
    splits=(
        Split("train", 3148, "AFW 337 + HELEN train 2,000 + LFPW train 811"),
        Split("common", 554, "HELEN test 330 + LFPW test 224"),
        Split("challenging", 135, "IBUG"),
        Split("full", 689, "common + challenging"),
        Split("test", 600, "300-W challenge test set: 01_Indoor + 02_Outdoor"),
    ),
    train_split="train",
    test_split="full",
    homepage="https://ibug.doc.ic.ac.uk/resources/300-W/",
    licence="Research use only under the iBUG terms accepted at registration (check the exact wording there).",
    sources=tuple(
        Source(
            f"{part}.zip",
            "https://ibug.doc.ic.ac.uk/resources/facial-point-annotations/",
            manual=True,
            folder=part,
            note="iBUG download page (registration form).",
        )
        for part in ("afw", "helen", "lfpw", "ibug")
    )
    + (
        Source(
            "300w.zip",
            "https://ibug.doc.ic.ac.uk/resources/300-W/",
            manual=True,
            folder="300W",
            note="the 300-W challenge test set (folders 01_Indoor, 02_Outdoor); only the 'test' split needs it; "
            "if it comes in parts (300w.zip.001, ...), join them first: cat 300w.zip.0* > 300w.zip",
        ),
    ),
    manual_steps="Register on the iBUG 300-W page and download afw, helen, lfpw, ibug (and 300w for 'test').",
    raw_layout="read_ibug_folder: every <name>.pts in afw/, helen/{trainset,testset}/, lfpw/{trainset,testset}/, "
    "ibug/, 01_Indoor/, 02_Outdoor/ with the image <name>.{jpg,png,...} beside it; read_pts: 'version: 1', "
    "'n_points: 68', '{', 68 lines 'x y' (1-based on disk, stored 0-based), '}'.",
)

COFW = DatasetSpec(
    name="cofw",
    title="COFW (29 points)",
    num_landmarks=29,
    flip_index=[1, 0, 3, 2, 6, 7, 4, 5, 9, 8, 11, 10, 14, 15, 12, 13, 17, 16, 19, 18, 20, 21, 23, 22, 24, 25, 26, 27,
                28],
    norm_indices=(8, 9),
    crop_box="annotation",
    clip_box=True,
    splits=(
        Split("train", 1345, "COFW_train_color.mat"),
        Split("test", 507, "COFW_test_color.mat"),
    ),
    train_split="train",
    test_split="test",
    homepage="http://www.vision.caltech.edu/xpburgos/ICCV13/",
    licence="No licence text found; treat as research-only.",
    raw_layout="CofwFile: COFW_train_color.mat / COFW_test_color.mat, MATLAB v7.3 (HDF5): IsTr/IsT cell of H x W "
    "(x 3) uint8 images, phisTr/phisT N x 87 (x1..x29, y1..y29, occlusion1..29; 1-based), bboxesTr/bboxesT N x 4 "
    "[x y w h] (1-based). The images are inside the .mat files.",
    sources=(
        Source(
            "COFW_color.zip",
            "http://www.vision.caltech.edu/xpburgos/ICCV13/Data/COFW_color.zip",
            note="Caltech has been moving data to https://data.caltech.edu; search there for COFW if this fails.",
        ),
    ),
)

AFLW = DatasetSpec(
    name="aflw",
    title="AFLW-19 (19 points, CCL protocol)",
    num_landmarks=19,
    flip_index=[5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 14, 13, 12, 17, 16, 15, 18],
    norm_indices=None,
    crop_box="annotation",
    clip_box=False,
    splits=(
        Split("train", 20000, "first 20,000 faces of the permutation 'ra' in AFLWinfo_release.mat"),
        Split("test", 4386, "the remaining 4,386 faces (AFLW-Full)"),
        Split(
            "frontal",
            1165,
            "AFLW-Frontal: test faces with all 19 points visible in mask_new (1,165 per the CCL paper; "
            "some papers quote 1,314)",
        ),
    ),
    train_split="train",
    test_split="test",
    homepage="https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/aflw/",
    licence="AFLW licence agreement (registration), research use only.",
    sources=(
        Source(
            "AFLWinfo_release.mat",
            "http://mmlab.ie.cuhk.edu.hk/projects/compositional/AFLWinfo_release.mat",
            extract=False,
            note="the CCL (Zhu et al., CVPR 2016) 19-point annotations, https://mmlab.ie.cuhk.edu.hk/projects/"
            "compositional.html",
        ),
    )
    + tuple(
        Source(
            f"aflw-images-{part}.tar.gz",
            "https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/aflw/",
            manual=True,
            note="TU Graz, after signing the AFLW licence agreement; unpacks to data/flickr/" + part,
        )
        for part in ("0", "2", "3")
    ),
    manual_steps="Sign the AFLW licence agreement at TU Graz and download aflw-images-{0,2,3}.tar.gz.",
    raw_layout="read_aflw_mat: AFLWinfo_release.mat (MATLAB v5, or a v7.3 re-save): bbox N x 4 [x1 x2 y1 y2], "
    "data N x 38 (x1..x19, y1..y19), mask_new N x 19, nameList (paths under flickr/), ra (1-based permutation, "
    "the first 20,000 train). Images: flickr/{0,2,3}/<name>.jpg.",
)

COCOWB_FACE = DatasetSpec(
    name="cocowb_face",
    title="COCO-WholeBody-Face (68 points, iBUG layout)",
    num_landmarks=68,
    flip_index=list(IBUG68_FLIP),
    norm_indices=(36, 45),
    crop_box="annotation",
    clip_box=True,
    splits=(
        Split("train", None, "train2017 faces with face_valid and at least one labelled point"),
        Split("val", None, "val2017 faces with face_valid and at least one labelled point"),
    ),
    train_split="train",
    test_split="val",
    homepage="https://github.com/jin-s13/COCO-WholeBody",
    licence="Annotations: research and non-commercial use only (SenseTime, CC BY-NC 4.0); images: Flickr terms.",
    sources=(
        Source(
            "coco_wholebody_train_v1.0.json",
            "https://drive.google.com/file/d/1thErEToRbmM9uLNi1JXXfOsaS5VK2FXf",
            manual=True,
            extract=False,
            note="Google Drive needs a browser (OneDrive, Baidu and OpenXLab mirrors are linked from the homepage).",
        ),
        Source(
            "coco_wholebody_val_v1.0.json",
            "https://drive.google.com/file/d/1N6VgwKnj8DeyGXCvp1eYgNbRmw6jdfrb",
            manual=True,
            extract=False,
            note="Google Drive needs a browser (OneDrive, Baidu and OpenXLab mirrors are linked from the homepage).",
        ),
        Source("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip", folder="train2017"),
        Source("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip", folder="val2017"),
    ),
    manual_steps="Download the two COCO-WholeBody annotation JSONs from Google Drive in a browser.",
    raw_layout="read_coco_wholebody: coco_wholebody_{train,val}_v1.0.json, 'images' (id, file_name) and "
    "'annotations' with face_valid, face_kpts (a flat list of 68 x [x, y, v], 0-based), face_box [x, y, w, h], "
    "image_id, id. Images: {train,val}2017/<file_name>.",
)

SYNTH = DatasetSpec(
    name="synth",
    title="Embedded synthetic faces (68 points, iBUG layout)",
    num_landmarks=68,
    flip_index=list(IBUG68_FLIP),
    norm_indices=(36, 45),
    crop_box="landmarks",
    clip_box=False,
    splits=(
        Split("train", None, "rendered by `popos data synth` (synth.n_train faces)"),
        Split("test", None, "rendered by `popos data synth` (synth.n_test faces)"),
    ),
    train_split="train",
    test_split="test",
    homepage="",
    licence="Generated by popos (Apache-2.0).",
    generated=True,
)

DATASETS: Mapping[str, DatasetSpec] = _Registry((WFLW, W300, COFW, AFLW, COCOWB_FACE, SYNTH))
