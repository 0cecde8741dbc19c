import pandas as pd
import pytest

from popos.io import atomic_dir, atomic_path, write_csv_atomic, write_text_atomic


def test_success_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "t.txt"
    write_text_atomic("old", target)
    write_text_atomic("new", target)
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["t.txt"]


def test_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_csv_round_trip(tmp_path):
    table = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_csv_atomic(table, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), table)


def test_copy_file_is_independent_of_its_source(tmp_path):
    from popos.io import copy_file

    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    copy_file(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert src.stat().st_nlink == 1 and dst.stat().st_ino != src.stat().st_ino  # not a hard link
    with open(dst, "r+b") as f:  # an in-place write to the copy leaves the source as it was
        f.write(b"changed")
    assert src.read_bytes()[:7] == bytes(range(7))


def test_atomic_dir_replaces_the_folder_only_when_complete(tmp_path):
    target = tmp_path / "report"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "first"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary or old folder left
    assert target.stat().st_mode & 0o777 == 0o755
