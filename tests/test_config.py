import pytest

from popos.config import ParamsError, load_params


def test_defaults_are_the_paper_grid():
    p = load_params()
    assert p.grid.heatmap_sizes == [64, 32, 16, 8, 4]
    assert p.train.lr == 2e-3 and p.train.ma_weight == 6.0


def test_later_files_and_overrides_win(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("train:\n  epochs: 5\n  lr: 0.01\n")
    b.write_text("train:\n  epochs: 7\n")
    p = load_params(a, b, overrides=["train.batch_size=8"])
    assert (p.train.epochs, p.train.lr, p.train.batch_size) == (7, 0.01, 8)


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ParamsError, match=r"train\.lrr"):
        load_params(f)


def test_bad_value_is_named(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("grid:\n  heatmap_sizes: [64, 48]\n")
    with pytest.raises(ParamsError, match=r"grid\.heatmap_sizes\.1"):
        load_params(f)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="key.path=value"):
        load_params(overrides=["train.lr"])
