"""Readers of the raw formats, on tiny files written here in each exact layout.

The writers below are also used by tests/test_prepare.py to build raw datasets end to end.
"""

import json

import h5py
import numpy as np
import pytest
import scipy.io

from popos.data.formats import (
    AnnotationError,
    CofwFile,
    iter_json_array,
    landmark_box,
    read_aflw_mat,
    read_coco_wholebody,
    read_ibug_folder,
    read_pts,
    read_wflw_list,
)

# ---------------------------------------------------------------- writers of each raw format


def wflw_line(landmarks, rect, attributes, image):
    """One line of a WFLW list file: 196 coordinates, x_min y_min x_max y_max, 6 attributes, image path."""
    fields = [f"{v:.6f}" for v in np.asarray(landmarks).reshape(-1)] + [f"{v:.3f}" for v in rect]
    return " ".join(fields + [str(int(a)) for a in attributes] + [image]) + "\n"


def wflw_subset_line(landmarks, image):
    """One line of a WFLW test-subset list (list_98pt_test_*.txt): 196 coordinates, then the image path."""
    return " ".join([f"{v:.6f}" for v in np.asarray(landmarks).reshape(-1)] + [image]) + "\n"


def write_pts(path, points_0based):
    """iBUG .pts, 1-based on disk."""
    body = "\n".join(f"{x + 1:.6f} {y + 1:.6f}" for x, y in points_0based)
    path.write_text(f"version: 1\nn_points:  {len(points_0based)}\n{{\n{body}\n}}\n")


def _mat73(path):
    """An HDF5 file with MATLAB's 512-byte v7.3 header, as MATLAB's `save -v7.3` writes."""
    f = h5py.File(path, "w", userblock_size=512)
    f.create_group("#refs#")
    return f


def _finish_mat73(path):
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def _cell(f, name, arrays, matlab_class):
    """A MATLAB N x 1 cell array: references to datasets in #refs# (h5py sees MATLAB arrays transposed)."""
    refs = []
    for i, a in enumerate(arrays):
        ds = f["#refs#"].create_dataset(f"{name}_{i}", data=a)
        ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
        refs.append(ds.ref)
    cell = f.create_dataset(name, data=np.array([refs], dtype=h5py.ref_dtype))  # MATLAB N x 1 -> h5py (1, N)
    cell.attrs["MATLAB_class"] = np.bytes_("cell")


def write_cofw_mat(path, images, landmarks_1based, occluded, boxes_1based, train=True):
    """COFW_{train,test}_color.mat (v7.3): Is* cell of H x W (x 3) uint8, phis* N x 87, bboxes* N x 4."""
    suffix = "Tr" if train else "T"
    phis = np.concatenate([landmarks_1based[..., 0], landmarks_1based[..., 1], occluded.astype(float)], axis=1)
    with _mat73(path) as f:
        _cell(f, "Is" + suffix, [im.T if im.ndim == 2 else im.transpose(2, 1, 0) for im in images], "uint8")
        f.create_dataset("phis" + suffix, data=phis.T).attrs["MATLAB_class"] = np.bytes_("double")
        f.create_dataset("bboxes" + suffix, data=np.asarray(boxes_1based, float).T).attrs["MATLAB_class"] = (
            np.bytes_("double")
        )
    _finish_mat73(path)


def write_aflw_mat(path, names, landmarks, boxes_x1x2y1y2, mask, ra_1based, v73=False):
    """AFLWinfo_release.mat: bbox N x 4 [x1 x2 y1 y2], data N x 38, mask_new N x 19, nameList, ra 1 x N."""
    data = np.concatenate([landmarks[..., 0], landmarks[..., 1]], axis=1)
    variables = {"bbox": np.asarray(boxes_x1x2y1y2, float), "data": data, "mask_new": mask.astype(float),
                 "ra": np.asarray(ra_1based, float)[None, :]}
    if not v73:
        names_cell = np.empty((len(names), 1), dtype=object)
        names_cell[:, 0] = names
        scipy.io.savemat(path, {**variables, "nameList": names_cell})
        return
    with _mat73(path) as f:
        for key, value in variables.items():
            f.create_dataset(key, data=value.T).attrs["MATLAB_class"] = np.bytes_("double")
        _cell(f, "nameList", [np.array([[ord(c)] for c in n], dtype=np.uint16) for n in names], "char")
    _finish_mat73(path)


def coco_face(ann_id, image_id, kpts_xyv, box, valid=True):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "keypoints": [0] * 51, "face_box": list(box),
            "face_kpts": np.asarray(kpts_xyv, float).reshape(-1).tolist(), "face_valid": valid,
            "lefthand_valid": False, "foot_kpts": [0] * 18}


def write_coco_json(path, images, annotations):
    """A COCO-WholeBody file: info, licenses, images, annotations, categories (the real key order)."""
    doc = {"info": {"description": "fixture"}, "licenses": [], "images": images, "annotations": annotations,
           "categories": [{"id": 1, "name": "person"}]}
    path.write_text(json.dumps(doc, indent=1))


# ---------------------------------------------------------------- WFLW


def test_wflw_list_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    lm = rng.uniform(-5, 200, size=(3, 98, 2))
    path = tmp_path / "list_98pt_rect_attr_train.txt"
    path.write_text("".join(
        wflw_line(lm[i], [10 + i, 20, 110, 150 + i], [i % 2, 0, 1, 0, 0, 1], f"51--Dresses/img_{i}.jpg")
        for i in range(3)
    ) + "\n")
    ann = read_wflw_list(path)
    assert len(ann) == 3 and ann.image == [f"51--Dresses/img_{i}.jpg" for i in range(3)]
    np.testing.assert_allclose(ann.landmarks, lm, atol=1e-6)
    np.testing.assert_allclose(ann.box[2], [12, 20, 98, 132])  # (x, y, x2 - x, y2 - y)
    assert ann.extra["attributes"].tolist()[1] == [1, 0, 1, 0, 0, 1]
    assert ann.visible.all() and ann.origin[2] == f"{path}:3"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t[:-2] + t[-1:], r":2: 206 fields, expected 207"),
        (lambda t: ["nan"] + t[1:], r":2: coordinates contain NaN"),
        (lambda t: ["1.0x"] + t[1:], r":2: coordinates: expected a number, got '1.0x'"),
        (lambda t: t[:196] + t[206:], r":2: 197 fields, but the lines above have 207"),
        (lambda t: t[:200] + ["2"] + t[201:], r":2: attributes must be 0 or 1"),
    ],
)
def test_wflw_list_errors_name_file_and_line(tmp_path, mutate, message):
    good = wflw_line(np.zeros((98, 2)), [0, 0, 1, 1], [0] * 6, "a.jpg")
    path = tmp_path / "list.txt"
    path.write_text(good + " ".join(mutate(good.split())) + "\n")
    with pytest.raises(AnnotationError, match=str(path).replace("\\", "\\\\") + message):
        read_wflw_list(path)


def _wflw_full_list(tmp_path, n=4):
    rng = np.random.default_rng(1)
    lm = rng.uniform(0, 100, size=(n, 98, 2))
    names = ["1--Event/a.jpg", "1--Event/a.jpg", "2--Event/b.jpg", "3--Event/c.jpg"][:n]  # two faces in a.jpg
    path = tmp_path / "list_98pt_rect_attr_test.txt"
    path.write_text("".join(
        wflw_line(lm[i], [i, 2 * i, 50 + i, 60 + 3 * i], [i % 2, 1, 0, 0, i == 3, 1], names[i]) for i in range(n)
    ))
    return read_wflw_list(path), lm, names


def test_wflw_subset_takes_box_and_attributes_from_the_full_list(tmp_path):
    full, lm, names = _wflw_full_list(tmp_path)
    sub = tmp_path / "list_98pt_test_blur.txt"
    sub.write_text(wflw_subset_line(lm[3], names[3]) + wflw_subset_line(lm[1], names[1]))
    assert len(sub.read_text().splitlines()[0].split()) == 197  # the official subset layout
    ann = read_wflw_list(sub, full=full)
    assert ann.image == [names[3], names[1]] and ann.origin == [f"{sub}:1", f"{sub}:2"]
    np.testing.assert_allclose(ann.landmarks, lm[[3, 1]], atol=1e-6)
    np.testing.assert_array_equal(ann.box, full.box[[3, 1]])  # face 1, not face 0 of the same image
    np.testing.assert_array_equal(ann.extra["attributes"], full.extra["attributes"][[3, 1]])


def test_wflw_subset_errors_name_file_and_line(tmp_path):
    full, lm, names = _wflw_full_list(tmp_path)
    sub = tmp_path / "list_98pt_test_pose.txt"
    sub.write_text(wflw_subset_line(lm[0], names[0]) + wflw_subset_line(lm[0] + 0.5, names[0]))
    with pytest.raises(AnnotationError, match=r"pose.txt:2: this face of 1--Event/a.jpg is not in .*"
                       r"list_98pt_rect_attr_test.txt .*differs by 0.5 px"):
        read_wflw_list(sub, full=full)
    sub.write_text(wflw_subset_line(lm[0], "9--Other/z.jpg"))
    with pytest.raises(AnnotationError, match=r"pose.txt:1: this face of 9--Other/z.jpg is not in"):
        read_wflw_list(sub, full=full)
    with pytest.raises(AnnotationError, match=r"pose.txt:1: 197 fields .*read it with the full test list"):
        read_wflw_list(sub)


def test_non_utf8_annotation_files_name_the_file(tmp_path):
    wflw = tmp_path / "list.txt"
    wflw.write_bytes(wflw_line(np.zeros((98, 2)), [0, 0, 1, 1], [0] * 6, "a.jpg").encode()
                     + wflw_line(np.zeros((98, 2)), [0, 0, 1, 1], [0] * 6, "caf\xe9.jpg").encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"list.txt:2: not UTF-8 text \(byte 0xe9"):
        read_wflw_list(wflw)
    pts = tmp_path / "a.pts"
    pts.write_bytes(b"version: 1\nn_points: 1\n{\n1 1\n}\n\xff\n")
    with pytest.raises(AnnotationError, match=r"a.pts:6: not UTF-8 text"):
        read_pts(pts)
    coco = tmp_path / "c.json"
    coco.write_bytes(b'{"images": [{"id": 1, "file_name": "\xff.jpg"}], "annotations": []}')
    with pytest.raises(AnnotationError, match=r"c.json: not UTF-8 text \(byte 0xff\)"):
        read_coco_wholebody(coco, "val2017")


def test_annotation_errors_are_user_errors():
    from popos.errors import UserError

    assert issubclass(AnnotationError, UserError)


# ---------------------------------------------------------------- iBUG .pts


def test_read_pts_subtracts_one_once(tmp_path):
    path = tmp_path / "a.pts"
    path.write_text("version: 1\nn_points:  3\n{\n1 1\n10.5 20.25\n101 0.5\n}\n")
    np.testing.assert_array_equal(read_pts(path), [[0, 0], [9.5, 19.25], [100, -0.5]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nn_points: 3\n{\n1 1\n2 2\n}\n", "2 point lines, but n_points says 3"),
        ("version: 1\n{\n1 1\n}\n", "no 'n_points: N' line"),
        ("version: 1\nn_points: 1\n1 1\n", "enclosed"),
        ("version: 1\nn_points: 1\n{\n1 nan\n}\n", "NaN"),
        ("version: 1\nn_points: 1\n{\n1 2 3\n}\n", "point 0: expected 'x y'"),
    ],
)
def test_read_pts_errors(tmp_path, text, message):
    path = tmp_path / "bad.pts"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        read_pts(path)


def test_read_pts_expected_count(tmp_path):
    path = tmp_path / "a.pts"
    write_pts(path, np.zeros((5, 2)))
    with pytest.raises(AnnotationError, match="n_points is 5, expected 68"):
        read_pts(path, 68)


def test_ibug_folder(tmp_path):
    folder = tmp_path / "helen" / "trainset"
    folder.mkdir(parents=True)
    pts = {name: np.random.default_rng(i).uniform(0, 50, size=(68, 2)) for i, name in enumerate(["b", "a"])}
    for name, p in pts.items():
        write_pts(folder / f"{name}.pts", p)
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "b.png").write_bytes(b"x")
    ann = read_ibug_folder(folder, tmp_path)
    assert ann.image == ["helen/trainset/a.jpg", "helen/trainset/b.png"]
    np.testing.assert_allclose(ann.landmarks[0], pts["a"], atol=1e-3)
    np.testing.assert_allclose(ann.box, landmark_box(ann.landmarks))
    (folder / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.pts: no image beside it"):
        read_ibug_folder(folder, tmp_path)


def test_landmark_box():
    pts = np.array([[[3.0, 1.0], [1.0, 5.0], [2.0, 2.0]]])
    np.testing.assert_array_equal(landmark_box(pts), [[1, 1, 2, 4]])


# ---------------------------------------------------------------- COFW (MATLAB v7.3)


def _cofw_data(n=3, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(40 + i, 30 + 2 * i, 3), dtype=np.uint8) for i in range(n)]
    images[1] = images[1][..., 0]  # grey, as some COFW faces are
    lm = rng.uniform(1, 30, size=(n, 29, 2))
    occ = rng.random((n, 29)) < 0.3
    boxes = np.array([[2 + i, 3, 20, 25] for i in range(n)], float)
    return images, lm, occ, boxes


def test_cofw_v73(tmp_path):
    images, lm, occ, boxes = _cofw_data()
    path = tmp_path / "COFW_train_color.mat"
    write_cofw_mat(path, images, lm, occ, boxes)
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(path)  # really v7.3, as the COFW release
    with CofwFile(path) as f:
        ann = f.annotations
        assert len(ann) == 3 and ann.image[2] == "COFW_train_color.mat#2"
        np.testing.assert_allclose(ann.landmarks, lm - 1)
        np.testing.assert_array_equal(ann.extra["occluded"], occ)
        assert ann.visible.all()  # occluded points are scored too
        np.testing.assert_allclose(ann.box, boxes - [1, 1, 0, 0])
        np.testing.assert_array_equal(f.image(0), images[0])
        np.testing.assert_array_equal(f.image(1), np.repeat(images[1][..., None], 3, axis=2))
        assert f.image(2).shape == (42, 34, 3)


def test_cofw_test_file_and_errors(tmp_path):
    images, lm, occ, boxes = _cofw_data(2)
    path = tmp_path / "COFW_test_color.mat"
    write_cofw_mat(path, images, lm, occ, boxes, train=False)
    with CofwFile(path) as f:
        assert len(f.annotations) == 2
    bad = tmp_path / "bad.mat"
    with _mat73(bad) as f:
        _cell(f, "IsT", [images[0].transpose(2, 1, 0)], "uint8")
        f.create_dataset("phisT", data=np.zeros((58, 1)))
        f.create_dataset("bboxesT", data=np.zeros((4, 1)))
    with pytest.raises(AnnotationError, match=r"bad.mat: variable 'phisT' unreadable: expected an N x 87"):
        CofwFile(bad)
    nan = tmp_path / "nan.mat"
    lm[1, 3, 0] = np.nan
    write_cofw_mat(nan, images, lm, occ, boxes)
    with pytest.raises(AnnotationError, match=r"nan.mat\[1\]: coordinates contain NaN"):
        CofwFile(nan)
    text = tmp_path / "text.mat"
    text.write_text("not hdf5")
    with pytest.raises(AnnotationError, match="not a MATLAB v7.3"):
        CofwFile(text)


# ---------------------------------------------------------------- AFLW-19


def _aflw_data(n=5, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"{d}/image{i:05d}.jpg" for i, d in zip(range(n), "02303", strict=False)]
    lm = rng.uniform(10, 90, size=(n, 19, 2))
    boxes = np.array([[5 + i, 95, 8, 100 - i] for i in range(n)], float)  # x1 x2 y1 y2
    mask = rng.random((n, 19)) < 0.8
    ra = rng.permutation(n) + 1
    return names, lm, boxes, mask, ra


@pytest.mark.parametrize("v73", [False, True])
def test_aflw_mat(tmp_path, v73):
    names, lm, boxes, mask, ra = _aflw_data()
    path = tmp_path / "AFLWinfo_release.mat"
    write_aflw_mat(path, names, lm, boxes, mask, ra, v73=v73)
    ann = read_aflw_mat(path)
    assert ann.image == names
    np.testing.assert_allclose(ann.landmarks, lm)
    np.testing.assert_allclose(ann.box[1], [6, 8, 89, 91])  # (x1, y1, x2 - x1, y2 - y1)
    np.testing.assert_array_equal(ann.extra["mask"], mask)
    np.testing.assert_array_equal(np.argsort(ann.extra["rank"]), ra - 1)  # faces in 'ra' order
    assert ann.visible.all()


def test_aflw_mat_errors(tmp_path):
    names, lm, boxes, mask, ra = _aflw_data()
    path = tmp_path / "AFLWinfo_release.mat"
    write_aflw_mat(path, names, lm, boxes, mask, np.ones(5))
    with pytest.raises(AnnotationError, match="variable 'ra' unreadable: expected a permutation of 1..5"):
        read_aflw_mat(path)
    scipy.io.savemat(path, {"bbox": boxes, "data": lm.reshape(5, 38)})
    with pytest.raises(AnnotationError, match="variable 'mask_new' unreadable"):
        read_aflw_mat(path)
    write_aflw_mat(path, names, lm[:, :18], boxes, mask, ra)
    with pytest.raises(AnnotationError, match=r"variable 'data' unreadable: expected a 5 x 38 numeric matrix"):
        read_aflw_mat(path)
    path.write_text("hello")
    with pytest.raises(AnnotationError, match="not a readable MATLAB .mat file"):
        read_aflw_mat(path)


# ---------------------------------------------------------------- COCO-WholeBody


def _coco_fixture(tmp_path):
    rng = np.random.default_rng(0)
    kpts = [np.concatenate([rng.uniform(0, 60, size=(68, 2)), np.ones((68, 1))], axis=1) for _ in range(4)]
    kpts[1][:10, 2] = 0  # ten unlabelled points
    images = [{"id": 7, "file_name": "000000000007.jpg", "width": 64, "height": 48},
              {"id": 9, "file_name": "000000000009.jpg", "width": 64, "height": 48}]
    anns = [coco_face(1, 7, kpts[0], [1, 2, 30, 40]),
            coco_face(2, 9, kpts[1], [3, 4, 20, 10]),
            coco_face(3, 9, kpts[2], [0, 0, 5, 5], valid=False),
            coco_face(4, 7, np.zeros((68, 3)), [0, 0, 0, 0])]
    path = tmp_path / "coco_wholebody_val_v1.0.json"
    write_coco_json(path, images, anns)
    return path, kpts


def test_coco_wholebody(tmp_path):
    path, kpts = _coco_fixture(tmp_path)
    ann = read_coco_wholebody(path, "val2017")
    assert ann.image == ["val2017/000000000007.jpg", "val2017/000000000009.jpg"]
    assert ann.extra["annotation_id"].tolist() == [1, 2]
    np.testing.assert_allclose(ann.landmarks[1], kpts[1][:, :2])
    assert ann.visible[0].all() and ann.visible[1].sum() == 58
    np.testing.assert_array_equal(ann.box, [[1, 2, 30, 40], [3, 4, 20, 10]])


def test_coco_wholebody_errors(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg"}]
    good = coco_face(1, 1, np.ones((68, 3)), [0, 0, 9, 9])
    cases = [
        ({**good, "face_kpts": [1.0] * 200}, r"\[annotations 1\]: face_kpts has 200 values, expected 204"),
        ({**good, "image_id": 5}, r"\[annotations 1\]: image_id 5 is not in 'images'"),
        ({**good, "face_box": [0, 0, 1]}, r"\[annotations 1\]: face_box must be"),
        ({**good, "face_kpts": [float("nan")] + [1.0] * 203}, r"\[annotations 1\]: face_kpts contain NaN"),
        ({**good, "face_kpts": [[1.0, 2.0, 1.0]] * 68}, r"\[annotations 1\]: face_kpts has 68 values, expected 204"),
        ({**good, "face_kpts": [[1.0, 2.0]] + [1.0] * 203},
         r"\[annotations 1\]: face_kpts: expected a number, got \[1.0, 2.0\]"),
        ({**good, "face_box": [0, 0, [9], 9]}, r"\[annotations 1\]: face_box: expected a number, got \[9\]"),
        ({**good, "image_id": [1]}, r"\[annotations 1\]: image_id \[1\] is not in 'images'"),
        ({**good, "id": "x"}, r"\[annotations 1\]: expected an integer annotation 'id', got 'x'"),
    ]
    for bad, message in cases:
        path = tmp_path / "c.json"
        write_coco_json(path, images, [good, bad])
        with pytest.raises(AnnotationError, match=message):
            read_coco_wholebody(path, "val2017")


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1 << 20])
def test_iter_json_array_streams_any_chunking(tmp_path, chunk_size):
    doc = {"info": {"v": [1, 2, {"x": "]}"}]}, "empty": [], "images": [{"id": 12345, "s": "a,b"}, 3.25e-3, "x"],
           "annotations": [{"id": i, "vals": list(range(i))} for i in range(5)], "categories": [1]}
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    assert list(iter_json_array(path, "images", chunk_size=chunk_size)) == doc["images"]
    assert list(iter_json_array(path, "annotations", chunk_size=chunk_size)) == doc["annotations"]
    assert list(iter_json_array(path, "empty", chunk_size=chunk_size)) == []


def test_iter_json_array_errors(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text('{"images": [1, 2}')
    with pytest.raises(AnnotationError, match="expected ',' or ']'"):
        list(iter_json_array(path, "images", chunk_size=4))
    path.write_text('{"images": {"a": 1}}')
    with pytest.raises(AnnotationError, match="'images' is not an array"):
        list(iter_json_array(path, "images"))
    path.write_text('{"info": 1}')
    with pytest.raises(AnnotationError, match="no top-level array 'annotations'"):
        list(iter_json_array(path, "annotations"))
    path.write_text('{"images": [1, 2')
    with pytest.raises(AnnotationError, match="unexpected end"):
        list(iter_json_array(path, "images", chunk_size=3))
