import cv2
import numpy as np
import pytest

import popos.io
from popos import draw
from popos.cli import main
from popos.data.synth import write_synth_dataset


def _centroid(channel):
    ys, xs = np.mgrid[: channel.shape[0], : channel.shape[1]]
    w = channel.astype(np.float64)
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


@pytest.mark.parametrize("point", [(12.25, 20.75), (20.5, 9.0), (7.0, 30.375)])
def test_dots_are_centred_with_sub_pixel_accuracy(point):
    image = np.zeros((40, 40, 3), np.uint8)
    out = draw.draw_landmarks(image, np.array([point]), radius=3.0, color=(0, 255, 0))
    assert image.max() == 0  # the input is not modified
    # rounding to whole pixels would be off by up to 0.5 px
    np.testing.assert_allclose(_centroid(out[..., 1]), point, atol=0.08)
    assert out[..., 0].max() == 0


def test_invisible_points_are_rings_and_non_finite_points_are_skipped():
    image = np.zeros((30, 30, 3), np.uint8)
    out = draw.draw_landmarks(image, np.array([[10.0, 10.0], [20.0, 20.0], [np.nan, 3.0]]), radius=4.0,
                              visible=[True, False, True])
    assert out[10, 10, 1] == 255 and out[20, 20, 1] == 0 and out[20, 24, 1] > 100


def test_numbers_are_written_beside_the_points():
    image = np.zeros((60, 60, 3), np.uint8)
    plain = draw.draw_landmarks(image, np.array([[10.0, 30.0]]), radius=2.0)
    numbered = draw.draw_landmarks(image, np.array([[10.0, 30.0]]), radius=2.0, numbers=True)
    text = (numbered != plain).any(axis=2)
    ys, xs = np.nonzero(text)
    assert text.sum() > 10 and xs.min() > 10 and ys.max() < 30  # above right of the dot


def test_draw_rejects_bad_input():
    with pytest.raises(ValueError, match=r"points must be \[K, 2\]"):
        draw.draw_landmarks(np.zeros((5, 5, 3), np.uint8), np.zeros((3,)))
    with pytest.raises(ValueError, match="image must be uint8"):
        draw.draw_landmarks(np.zeros((5, 5, 3)), np.zeros((1, 2)))


def test_image_grid():
    images = [np.full((4, 5, 3), i * 40, np.uint8) for i in range(5)]
    grid = draw.image_grid(images, 3, gap=1, fill=255)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 2, 3)
    assert (grid[5:9, 6:11] == 160).all()  # image 4: row 1, column 1
    assert (grid[5:9, 12:] == 255).all()  # the empty cell
    assert draw.image_grid(images[:2], 4).shape == (4, 12, 3)  # no more columns than images
    with pytest.raises(ValueError, match=r"images\[1\] has shape"):
        draw.image_grid([images[0], np.zeros((2, 2, 3), np.uint8)], 2)
    with pytest.raises(ValueError, match="empty"):
        draw.image_grid([], 2)


def test_write_png_round_trips_rgb_and_is_atomic(tmp_path, monkeypatch):
    image = np.zeros((3, 4, 3), np.uint8)
    image[..., 0] = 200  # red
    out = tmp_path / "sub" / "a.png"
    draw.write_png(image, out)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB), image)

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(popos.io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        draw.write_png(np.zeros((3, 4, 3), np.uint8), out)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB), image)
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.png"]


def test_show_dataset_and_cli(tmp_path):
    write_synth_dataset(tmp_path / "prep" / "synth", n_train=2, n_test=5, seed=0, crop_size=96, progress=False)
    grid = draw.show_dataset(tmp_path / "prep" / "synth" / "test", 5, tmp_path / "grid.png", tile=64, ncols=3)
    assert grid.shape == (2 * 64 + 2, 3 * 64 + 4, 3)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(tmp_path / "grid.png")), cv2.COLOR_BGR2RGB), grid)
    args = ["data", "show", "synth", "--prepared", str(tmp_path / "prep"), "--n", "2", "--out", str(tmp_path / "c.png")]
    assert main(args) == 0 and (tmp_path / "c.png").is_file()
    assert main(["data", "show", "synth", "--prepared", str(tmp_path / "none"), "--out", str(tmp_path / "d.png")]) == 2
