import pandas as pd
import pytest

from popos.io import atomic_path, write_csv_atomic, write_text_atomic


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
