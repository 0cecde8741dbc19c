from pathlib import Path

import numpy as np
import pytest

from popos.data.prepared import PreparedSplit, PreparedWriter


def _face(i, k=3, s=8):
    rng = np.random.default_rng(i)
    return dict(
        image=f"img{i}.png",
        crop=rng.integers(0, 255, size=(s, s, 3), dtype=np.uint8),
        landmarks=rng.uniform(0, 50, size=(k, 2)),
        visible=[True, False, True],
        box=[1, 2, 30, 40],
        norm=12.5,
        crop_affine=[[1, 0, 0], [0, 1, 0]],
    )


def test_round_trip(tmp_path):
    out = tmp_path / "ds" / "train"
    faces = [_face(i) for i in range(4)]
    with PreparedWriter(out, "ds", "train", num_landmarks=3, crop_size=8) as w:
        for f in faces:
            w.add(**f)
    split = PreparedSplit.open(out)
    assert len(split) == 4 and split.num_landmarks == 3
    for i, f in enumerate(faces):
        np.testing.assert_array_equal(split.crops[i], f["crop"])
        np.testing.assert_allclose(split.landmarks[i], f["landmarks"], rtol=1e-6)
        assert split.image[i] == f["image"]
    assert split.visible[:, 1].sum() == 0
    assert list(split.table().columns[:2]) == ["image", "box_x"]
    assert not (tmp_path / "ds" / "train.partial").exists()


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "ds" / "train"
    with pytest.raises(ValueError, match="img1.png: landmarks contain NaN"):
        with PreparedWriter(out, "ds", "train", num_landmarks=3, crop_size=8) as w:
            w.add(**_face(0))
            bad = _face(1)
            bad["landmarks"][0, 0] = np.nan
            w.add(**bad)
    assert not out.exists() and not (tmp_path / "ds" / "train.partial").exists()


def test_open_missing_split_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="popos data prepare"):
        PreparedSplit.open(tmp_path / "nothing")


def test_a_failed_replacement_keeps_the_previous_split(tmp_path, monkeypatch):
    out = tmp_path / "ds" / "train"
    with PreparedWriter(out, "ds", "train", num_landmarks=3, crop_size=8) as w:
        w.add(**_face(0))
    real_rename = Path.rename

    def failing_rename(self, target):
        if self.name == "train.partial":
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        with PreparedWriter(out, "ds", "train", num_landmarks=3, crop_size=8) as w:
            w.add(**_face(1))
            w.add(**_face(2))
    monkeypatch.undo()
    split = PreparedSplit.open(out)
    assert len(split) == 1 and split.image.tolist() == ["img0.png"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["train"]
