"""prepare() end to end: tiny raw datasets in each exact format -> prepared splits, every field checked."""

import dataclasses
import warnings

import cv2
import numpy as np
import pytest
from test_formats import (
    coco_face,
    wflw_line,
    wflw_subset_line,
    write_aflw_mat,
    write_coco_json,
    write_cofw_mat,
    write_pts,
)

from popos.cli import main
from popos.data import DATASETS
from popos.data.formats import landmark_box
from popos.data.prepare import PrepareError, clip_box, find_in, prepare
from popos.data.prepared import PreparedSplit
from popos.geometry import apply_affine, invert_affine
from popos.metrics import face_size

CROP, PADDING, CONTEXT = 48, 1.25, 1.5
LISTS = "list_98pt_rect_attr_train_test"


def _image(rng, h, w):
    """A smooth random RGB image (bilinear resampling of it is well defined to a grey level or two)."""
    small = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _write_image(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _bilinear(image, xy):
    x0, y0 = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
    x1, y1 = np.minimum(x0 + 1, image.shape[1] - 1), np.minimum(y0 + 1, image.shape[0] - 1)
    fx, fy = (xy[:, 0] - x0)[:, None], (xy[:, 1] - y0)[:, None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def assert_face(split, i, image, landmarks, visible, box, norm):
    """Every field of face ``i``; the crop is checked pixel by pixel against the image it came from."""
    np.testing.assert_allclose(split.landmarks[i], landmarks, atol=1e-4)
    np.testing.assert_array_equal(split.visible[i], visible)
    np.testing.assert_allclose(split.box[i], box, atol=1e-4)
    np.testing.assert_allclose(split.norm[i], norm, rtol=1e-5)
    m = split.crop_affine[i].astype(np.float64)
    centre = np.asarray(box[:2]) + np.asarray(box[2:]) / 2
    side = PADDING * CONTEXT * max(box[2], box[3])
    # the padded square around the box centre spans the crop: centre -> S/2, centre + side/2 -> S
    np.testing.assert_allclose(apply_affine(np.array([centre, centre + [side / 2, 0]]), m),
                               [[CROP / 2, CROP / 2], [CROP, CROP / 2]], atol=1e-3)
    u, v = np.meshgrid(np.arange(0, CROP, 2), np.arange(0, CROP, 2))
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    xy = apply_affine(uv.astype(np.float64), invert_affine(m))
    h, w = image.shape[:2]
    inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] <= h - 1)
    outside = (xy[:, 0] < -1) | (xy[:, 1] < -1) | (xy[:, 0] > w) | (xy[:, 1] > h)
    assert inside.sum() > 50
    crop = split.crops[i].astype(np.float64)
    np.testing.assert_allclose(crop[uv[inside, 1], uv[inside, 0]], _bilinear(image, xy[inside]), atol=2.0)
    assert (crop[uv[outside, 1], uv[outside, 0]] == 0).all()


def _prepare(name, tmp_path, workers=2):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = prepare(name, tmp_path / "raw", tmp_path / "prepared", CROP, PADDING, context=CONTEXT,
                         progress=False, workers=workers)
    return counts, [str(w.message) for w in caught]


def _open(tmp_path, name, split):
    s = PreparedSplit.open(tmp_path / "prepared" / name / split)
    assert s.meta["dataset"] == name and s.meta["split"] == split and s.meta["crop_size"] == CROP
    assert s.meta["padding"] == PADDING and s.meta["context"] == CONTEXT
    assert s.num_landmarks == DATASETS[name].num_landmarks and s.crops.shape[1:] == (CROP, CROP, 3)
    return s


# ---------------------------------------------------------------- WFLW


def make_wflw_raw(raw_root, n_train, n_test, seed=0, size=(80, 96), subsets=("largepose", "blur")):
    """A WFLW-like raw folder: list files in the release layout and one JPEG per face."""
    rng = np.random.default_rng(seed)
    ds = raw_root / "wflw"
    lists = ds / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    lists.mkdir(parents=True)
    faces = {}
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for i in range(n):
            name = f"{i % 61}--Event/{split}_{i}.jpg"
            image = _image(rng, *size)
            _write_image(ds / "WFLW_images" / name, image)
            lm = rng.uniform([20, 15], [size[1] - 20, size[0] - 15], size=(98, 2))
            lines.append(wflw_line(lm, [10, 10, 60, 70], rng.integers(0, 2, 6), name))
            faces[(split, i)] = (name, lm)
        (lists / f"list_98pt_rect_attr_{split}.txt").write_text("".join(lines))
    sub = ds / "WFLW_annotations" / "list_98pt_test"
    sub.mkdir()
    for k, subset in enumerate(subsets):  # the official subset layout: 98 x,y then the image, 197 fields
        lines = [wflw_subset_line(faces[("test", i)][1], faces[("test", i)][0]) for i in range(k, n_test, 2)]
        if lines:
            (sub / f"list_98pt_test_{subset}.txt").write_text("".join(lines))
    return faces


def test_wflw(tmp_path):
    faces = make_wflw_raw(tmp_path / "raw", 4, 3)
    counts, messages = _prepare("wflw", tmp_path)
    assert counts == {"train": 4, "test": 3, "test_largepose": 2, "test_blur": 1}
    assert "wflw/train: 4 faces, but the published split has 7500" in messages
    for split, n in (("train", 4), ("test", 3)):
        s = _open(tmp_path, "wflw", split)
        for i in range(n):
            name, lm = faces[(split, i)]
            assert s.image[i] == f"wflw/WFLW_images/{name}"
            image = cv2.cvtColor(cv2.imread(str(tmp_path / "raw" / s.image[i])), cv2.COLOR_BGR2RGB)
            assert_face(s, i, image, lm, np.ones(98, bool), landmark_box(lm), np.linalg.norm(lm[60] - lm[72]))
    blur = _open(tmp_path, "wflw", "test_blur")
    assert blur.image.tolist() == [f"wflw/WFLW_images/{faces[('test', 1)][0]}"]
    np.testing.assert_array_equal(blur.crops[0], _open(tmp_path, "wflw", "test").crops[1])
    assert not (tmp_path / "prepared" / "wflw" / "test_makeup").exists()  # its list file is absent: skipped


def test_threads_do_not_change_the_result(tmp_path):
    make_wflw_raw(tmp_path / "raw", 6, 1)
    _prepare("wflw", tmp_path)
    first = _open(tmp_path, "wflw", "train")
    crops, images = np.array(first.crops), first.image.copy()
    _prepare("wflw", tmp_path, workers=1)
    again = _open(tmp_path, "wflw", "train")
    np.testing.assert_array_equal(again.crops, crops)
    assert again.image.tolist() == images.tolist()


def test_strict_count_mismatch_is_an_error_and_writes_nothing(tmp_path):
    make_wflw_raw(tmp_path / "raw", 2, 1)
    with pytest.raises(ValueError, match=r"wflw/train: 2 faces, but the published split has 7500 \(strict\)"):
        prepare("wflw", tmp_path / "raw", tmp_path / "prepared", CROP, PADDING, strict=True, progress=False)
    assert not list((tmp_path / "prepared").rglob("*.u8"))


def test_missing_image_names_the_line_and_writes_nothing_of_that_split(tmp_path):
    faces = make_wflw_raw(tmp_path / "raw", 3, 1)
    (tmp_path / "raw" / "wflw" / "WFLW_images" / faces[("train", 1)][0]).unlink()
    with pytest.raises(PrepareError, match=r"list_98pt_rect_attr_train.txt:2: image .*train_1.jpg not found"):
        _prepare("wflw", tmp_path)
    assert sorted(p.name for p in (tmp_path / "prepared" / "wflw").iterdir()) == ["test", "test_largepose"]


def test_undecodable_image_mid_split_leaves_nothing(tmp_path):
    faces = make_wflw_raw(tmp_path / "raw", 5, 1)
    (tmp_path / "raw" / "wflw" / "WFLW_images" / faces[("train", 3)][0]).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"list_98pt_rect_attr_train.txt:4: cannot decode image"):
        _prepare("wflw", tmp_path)
    out = tmp_path / "prepared" / "wflw"
    assert not (out / "train").exists() and not (out / "train.partial").exists()


def test_bad_optional_split_does_not_hide_the_others(tmp_path, capsys):
    faces = make_wflw_raw(tmp_path / "raw", 3, 3)
    blur = tmp_path / "raw" / "wflw" / "WFLW_annotations" / "list_98pt_test" / "list_98pt_test_blur.txt"
    name, lm = faces[("test", 1)]
    blur.write_text(blur.read_text() + wflw_subset_line(lm + 2.0, name))  # a face that is not in the test list
    with pytest.raises(PrepareError, match=r"wflw: split\(s\) test_blur failed .*list_98pt_test_blur.txt:2: this face"):
        _prepare("wflw", tmp_path)
    out = capsys.readouterr().out
    assert "test_blur" in out and "FAILED" in out and "test_largepose" in out
    for split, n in (("train", 3), ("test", 3), ("test_largepose", 2)):
        assert len(_open(tmp_path, "wflw", split)) == n
    assert not (tmp_path / "prepared" / "wflw" / "test_blur").exists()


@pytest.mark.parametrize("damage", ["truncated", "tail zeroed", "not an image", "empty"])
def test_damaged_image_is_an_error_naming_it(tmp_path, damage):
    faces = make_wflw_raw(tmp_path / "raw", 2, 1, size=(240, 320), subsets=())
    path = tmp_path / "raw" / "wflw" / "WFLW_images" / faces[("train", 1)][0]
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "tail zeroed": data[:-4096] + bytes(4096),
               "not an image": b"<html>", "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(PrepareError, match=rf"list_98pt_rect_attr_train.txt:2: cannot decode image {path}"):
        _prepare("wflw", tmp_path)
    assert not (tmp_path / "prepared" / "wflw" / "train").exists()


def test_exif_orientation_is_applied_as_cv2_imread_does(tmp_path):
    from PIL import Image

    faces = make_wflw_raw(tmp_path / "raw", 2, 1, size=(96, 96), subsets=())
    name, lm = faces[("train", 0)]
    path = tmp_path / "raw" / "wflw" / "WFLW_images" / name
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(_image(np.random.default_rng(5), 80, 96)).save(path, exif=exif.tobytes(), quality=95)
    _prepare("wflw", tmp_path)
    upright = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert upright.shape == (96, 80, 3)  # cv2 turned it upright
    s = _open(tmp_path, "wflw", "train")
    assert_face(s, 0, upright, lm, np.ones(98, bool), landmark_box(lm), np.linalg.norm(lm[60] - lm[72]))


def test_image_path_leaving_the_image_folder_is_refused(tmp_path):
    make_wflw_raw(tmp_path / "raw", 2, 1, subsets=())
    lst = tmp_path / "raw" / "wflw" / "WFLW_annotations" / LISTS / "list_98pt_rect_attr_train.txt"
    outside = tmp_path / "raw" / "secret.jpg"
    _write_image(outside, _image(np.random.default_rng(0), 80, 96))
    lines = lst.read_text().splitlines(keepends=True)
    lines[1] = lines[1].rsplit(" ", 1)[0] + " ../../secret.jpg\n"
    lst.write_text("".join(lines))
    with pytest.raises(PrepareError, match=r"train.txt:2: image path '../../secret.jpg' leaves the image folder"):
        _prepare("wflw", tmp_path)
    assert not (tmp_path / "prepared" / "wflw" / "train").exists()


def test_empty_list_never_replaces_a_prepared_split_without_force(tmp_path):
    make_wflw_raw(tmp_path / "raw", 3, 1, subsets=())
    _prepare("wflw", tmp_path)
    lst = tmp_path / "raw" / "wflw" / "WFLW_annotations" / LISTS / "list_98pt_rect_attr_train.txt"
    lst.write_text("")
    with pytest.raises(PrepareError, match=r"wflw/train: no face to write .*was left as it was.*--force"):
        _prepare("wflw", tmp_path)
    assert len(_open(tmp_path, "wflw", "train")) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare("wflw", tmp_path / "raw", tmp_path / "prepared", CROP, PADDING, context=CONTEXT, progress=False,
                force=True)
    assert len(_open(tmp_path, "wflw", "train")) == 0


# ---------------------------------------------------------------- 300W


def test_300w(tmp_path):
    rng = np.random.default_rng(1)
    ds = tmp_path / "raw" / "300w"
    truth = {}
    for k, folder in enumerate(["afw", "helen/trainset", "helen/testset", "lfpw/trainset", "lfpw/testset", "ibug"]):
        for j in range(2 if folder == "afw" else 1):
            suffix = ".png" if k % 2 else ".jpg"
            stem = ds / folder / f"img_{k}_{j}"
            image = _image(rng, 70, 90)
            _write_image(stem.with_suffix(suffix), image)
            lm = rng.uniform([15, 12], [75, 58], size=(68, 2))
            write_pts(stem.with_suffix(".pts"), lm)
            truth[f"300w/{folder}/img_{k}_{j}{suffix}"] = lm
    counts, messages = _prepare("300w", tmp_path)
    assert counts == {"train": 4, "common": 2, "challenging": 1, "full": 3}  # no 300W private test set: skipped
    assert any("300w/full: 3 faces, but the published split has 689" in m for m in messages)
    full = _open(tmp_path, "300w", "full")
    assert full.image.tolist() == ["300w/helen/testset/img_2_0.jpg", "300w/lfpw/testset/img_4_0.jpg",
                                   "300w/ibug/img_5_0.png"]
    for split in ("train", "full"):
        s = _open(tmp_path, "300w", split)
        for i, name in enumerate(s.image):
            lm = truth[name]
            image = cv2.cvtColor(cv2.imread(str(tmp_path / "raw" / name)), cv2.COLOR_BGR2RGB)
            assert_face(s, i, image, lm, np.ones(68, bool), landmark_box(lm), np.linalg.norm(lm[36] - lm[45]))


def test_default_split_missing_is_an_error(tmp_path):
    (tmp_path / "raw" / "300w" / "afw").mkdir(parents=True)
    with pytest.raises(PrepareError, match=r"split\(s\) train, full failed.*no folder 'helen'"):
        _prepare("300w", tmp_path)


# ---------------------------------------------------------------- COFW


def test_cofw(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "raw" / "cofw" / "COFW_color"
    folder.mkdir(parents=True)
    data = {}
    for train, n in ((True, 3), (False, 2)):
        images = [_image(rng, 64, 72) for _ in range(n)]
        images[0] = images[0][..., 1]  # a grey face
        lm = rng.uniform(15, 55, size=(n, 29, 2))
        occ = rng.random((n, 29)) < 0.3
        boxes = np.array([[10, 12, 40, 36]] * n, float)
        boxes[-1] = [-9, 30, 50, 60]  # partly outside the 72 x 64 image: clipped
        name = "COFW_train_color.mat" if train else "COFW_test_color.mat"
        write_cofw_mat(folder / name, images, lm, occ, boxes, train=train)
        data["train" if train else "test"] = (name, images, lm, boxes)
    counts, _ = _prepare("cofw", tmp_path)
    assert counts == {"train": 3, "test": 2}
    for split, (name, images, lm, boxes) in data.items():
        s = _open(tmp_path, "cofw", split)
        for i, image in enumerate(images):
            assert s.image[i] == f"cofw/COFW_color/{name}#{i}"
            rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
            x, y, w, h = boxes[i] - [1, 1, 0, 0]
            box = clip_box(np.array([x, y, w, h]), 72, 64)
            p = lm[i] - 1
            assert_face(s, i, rgb, p, np.ones(29, bool), box, np.linalg.norm(p[8] - p[9]))
        np.testing.assert_allclose(s.box[-1], [0, 29, 40, 34])  # x: -10..40 -> 0..40, y: 29..89 -> 29..63


# ---------------------------------------------------------------- AFLW-19


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_aflw(tmp_path):
    rng = np.random.default_rng(3)
    ds = tmp_path / "raw" / "aflw"
    n = 6
    names = [f"{'023'[i % 3]}/image{i:05d}.jpg" for i in range(n)]
    for name in names:
        _write_image(ds / "aflw" / "data" / "flickr" / name, _image(rng, 90, 80))
    lm = rng.uniform(20, 70, size=(n, 19, 2))
    boxes = np.array([[12 + i, 68 + i, 15, 80 - i] for i in range(n)], float)  # x1 x2 y1 y2, not square
    mask = np.ones((n, 19), bool)
    mask[[1, 4], 3] = False
    ra = np.array([3, 6, 1, 5, 2, 4])  # 1-based permutation: faces 2, 5, 0 train; 4, 1, 3 test
    write_aflw_mat(ds / "AFLWinfo_release.mat", names, lm, boxes, mask, ra)
    published = {"train": 3, "test": 3, "frontal": 1}  # the train size defines the split: first 3 of 'ra'
    spec = dataclasses.replace(DATASETS["aflw"], splits=tuple(
        dataclasses.replace(s, count=published[s.name]) for s in DATASETS["aflw"].splits
    ))
    counts, messages = _prepare(spec, tmp_path)
    assert counts == published and messages == []
    # frontal: the test faces (in 'ra' order) whose 19 points are all visible in mask_new
    for split, order in (("train", [2, 5, 0]), ("test", [4, 1, 3]), ("frontal", [3])):
        s = _open(tmp_path, "aflw", split)
        assert s.image.tolist() == [f"aflw/aflw/data/flickr/{names[i]}" for i in order]
        for row, i in enumerate(order):
            x1, x2, y1, y2 = boxes[i]
            box = [x1, y1, x2 - x1, y2 - y1]
            image = _read_rgb(tmp_path / "raw" / s.image[row])
            assert x2 - x1 != y2 - y1  # non-square boxes: the face size is sqrt(w * h), not max(w, h)
            assert_face(s, row, image, lm[i], np.ones(19, bool), box, np.sqrt((x2 - x1) * (y2 - y1)))


# ---------------------------------------------------------------- COCO-WholeBody-Face


def test_cocowb_face(tmp_path, capsys):
    rng = np.random.default_rng(4)
    ds = tmp_path / "raw" / "cocowb_face"
    (ds / "annotations").mkdir(parents=True)
    truth = {}
    for split in ("train", "val"):
        images, anns = [], []
        for k in range(2):
            file_name = f"{split}_{k:012d}.jpg"
            _write_image(ds / f"{split}2017" / file_name, _image(rng, 60, 80))
            images.append({"id": 100 + k, "file_name": file_name, "width": 80, "height": 60})
        for a in range(4):
            xyv = np.concatenate([rng.uniform(10, 50, size=(68, 2)), rng.uniform(0.5, 2, size=(68, 1))], axis=1)
            box = [5 + a, 8, 40, 30] if a != 1 else [60, -4, 30, 30]  # face 1 pokes out: clipped to the image
            if a == 1:
                xyv[:5, 2] = 0  # five unlabelled points
            if a == 2 and split == "val":
                xyv[45] = 0  # an unlabelled normaliser point: the face cannot be scored
            anns.append(coco_face(10 * a, 100 + a % 2, xyv, box, valid=a != 3))
            truth[(split, a)] = (f"cocowb_face/{split}2017/{images[a % 2]['file_name']}", xyv, box)
        write_coco_json(ds / "annotations" / f"coco_wholebody_{split}_v1.0.json", images, anns)
    counts, _ = _prepare("cocowb_face", tmp_path)
    assert counts == {"train": 3, "val": 2}  # face 3 invalid; val face 2 has no normaliser
    assert "1 unscorable faces skipped" in capsys.readouterr().out
    for split, kept in (("train", [0, 1, 2]), ("val", [0, 1])):
        s = _open(tmp_path, "cocowb_face", split)
        for row, a in enumerate(kept):
            name, xyv, box = truth[(split, a)]
            assert s.image[row] == name
            clipped = clip_box(np.array(box, float), 80, 60)
            assert_face(s, row, _read_rgb(tmp_path / "raw" / name), xyv[:, :2], xyv[:, 2] > 0, clipped,
                        np.linalg.norm(xyv[36, :2] - xyv[45, :2]))
        np.testing.assert_allclose(s.box[1], [60, 0, 19, 26])


# ---------------------------------------------------------------- helpers, CLI


def test_find_in(tmp_path):
    (tmp_path / "a" / "b" / "target").mkdir(parents=True)
    (tmp_path / ".hidden" / "target").mkdir(parents=True)
    assert find_in(tmp_path, "target", folder=True) == tmp_path / "a" / "b" / "target"
    with pytest.raises(FileNotFoundError, match="no file 'target'"):
        find_in(tmp_path, "target")
    (tmp_path / "c" / "d" / "target").mkdir(parents=True)
    with pytest.raises(ValueError, match="several 'target' found"):
        find_in(tmp_path, "target", folder=True)


def test_aflw_face_size_of_a_non_square_box():
    boxes = np.array([[5.0, 7.0, 40.0, 90.0], [0.0, 0.0, 30.0, 30.0]])
    np.testing.assert_allclose(face_size(boxes), [60.0, 30.0])  # sqrt(40 * 90); a square box: its side


def test_clip_box():
    np.testing.assert_array_equal(clip_box(np.array([-5.0, 2.0, 20.0, 100.0]), 10, 50), [0, 2, 9, 47])


def test_cli_prepare_on_the_official_layouts(tmp_path, capsys):
    make_wflw_raw(tmp_path / "raw", 2, 3, subsets=("largepose", "expression", "blur"))
    args = ["data", "prepare", "wflw", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "prepared"),
            "--set", f"data.crop_size={CROP}", "--workers", "1"]
    with pytest.warns(UserWarning, match="but the published split has"):
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "size differs from the published one" in out and "test_makeup" in out and "skipped" in out
    assert "FAILED" not in out
    assert PreparedSplit.open(tmp_path / "prepared" / "wflw" / "train").crops.shape == (2, CROP, CROP, 3)
    for subset, n in (("largepose", 2), ("expression", 1), ("blur", 1)):
        assert len(PreparedSplit.open(tmp_path / "prepared" / "wflw" / f"test_{subset}")) == n
    assert main([*args, "--strict"]) == 2
    assert "(strict)" in capsys.readouterr().err


def test_synth_and_missing_raw(tmp_path):
    with pytest.raises(ValueError, match="popos data synth"):
        prepare("synth", tmp_path, tmp_path, CROP, PADDING)
    with pytest.raises(FileNotFoundError, match="run `popos data download cofw` first"):
        prepare("cofw", tmp_path, tmp_path, CROP, PADDING)
