"""The CLI edge: a user's mistake is one line and status 2, before any work starts; a bug keeps its traceback."""

import re

import numpy as np
import pytest
from PIL import Image
from test_train import HEATMAP, TINY, K, corrupt_largest_tensor, save_untrained_checkpoint, tiny_params

from popos.cli import main
from popos.data.prepared import PreparedWriter


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", tiny_params("unused"))


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def one_line_error(capsys, step: str) -> str:
    """The CLI's stderr, checked to be exactly one ``popos <step>: error: ...`` line without a traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"popos {step}: error: ") and "Traceback" not in err, err
    return err


def predict(image, checkpoint, out, *extra) -> int:
    return main(["predict", str(image), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", *extra])


def test_predict_on_a_valid_face(face, checkpoint, tmp_path, capsys):
    assert predict(face, checkpoint, tmp_path / "o.png", "--box", "5,5,30,30") == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == K + 1
    assert (tmp_path / "o.png").is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"landmark,x,y\n0,1,2\n", "not a readable image"),
        (b"", "not a readable image"),
        ("truncated", "not a readable image"),
        ("tiny", r"1 x 1 px; without a box"),
    ],
)
def test_predict_refuses_bad_images(face, checkpoint, tmp_path, capsys, content, message):
    path = tmp_path / "input.png"
    if content == "truncated":
        buf = tmp_path / "full.jpg"
        Image.open(face).save(buf, quality=95)
        path = tmp_path / "input.jpg"
        path.write_bytes(buf.read_bytes()[: buf.stat().st_size // 2])
    elif content == "tiny":
        Image.new("RGB", (1, 1)).save(path)
    else:
        path.write_bytes(content)
    assert predict(path, checkpoint, tmp_path / "o.png") == 2
    err = one_line_error(capsys, "predict")
    assert str(path) in err and re.search(message, err), err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ("0,0,1e9,1e9", r"[0-9.]+e-\d+ of it on the 50 x 40 image"),
        ("100,100,20,20", "wholly outside the 50 x 40 image"),
        ("-60,0,20,20", "wholly outside the 50 x 40 image"),
        ("0,0,0,10", r"w, h > 0, got \[0.0, 0.0, 0.0, 10.0\]"),
        ("0,0,nan,10", "four finite numbers"),
        ("1,2,3", "four finite numbers"),
        ("a,b,c,d", "--box: expected four numbers"),
    ],
)
def test_predict_refuses_bad_boxes(face, checkpoint, tmp_path, capsys, box, message):
    assert predict(face, checkpoint, tmp_path / "o.png", f"--box={box}") == 2
    err = one_line_error(capsys, "predict")
    assert re.search(message, err), err
    assert not (tmp_path / "o.png").exists()


def test_predict_refuses_unknown_method_and_bad_checkpoints(face, checkpoint, tmp_path, capsys):
    assert predict(face, checkpoint, tmp_path / "o.png", "--method", "nope") == 2
    assert "unknown decoder 'nope'" in one_line_error(capsys, "predict")
    # weights of another shape than the stored config builds (e.g. an older architecture)
    wide = save_untrained_checkpoint(tmp_path / "wide.pt", tiny_params("unused"), width=6)
    assert predict(face, wide, tmp_path / "o.png") == 2
    assert "wide.pt: its weights do not fit the model" in one_line_error(capsys, "predict")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes())
    corrupt_largest_tensor(corrupt)
    assert predict(face, corrupt, tmp_path / "o.png") == 2
    assert "corrupt.pt: checksum mismatch" in one_line_error(capsys, "predict")
    assert not (tmp_path / "o.png").exists()


def test_a_bad_setting_stops_train_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "synth", "--heatmap-size", str(HEATMAP), "--loss", "mse", "--out", str(out),
                 *[a for o in TINY for a in ("--set", o)], "--set", "decode.popos.bogus=1"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("popos train: error: invalid params") and "decode.popos.bogus" in err
    assert "Traceback" not in err


def test_evaluating_an_empty_split_is_a_clear_error(checkpoint, tmp_path, capsys):
    with PreparedWriter(tmp_path / "synth" / "test", "synth", "test", num_landmarks=K, crop_size=48):
        pass
    overrides = [*TINY, f"data.prepared_dir={tmp_path}"]
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "ev"), "--device", "cpu",
                 *[a for o in overrides for a in ("--set", o)]])
    assert code == 2 and "holds no faces" in one_line_error(capsys, "evaluate")
    assert not (tmp_path / "ev" / "summary.csv").exists()


def test_a_bug_keeps_its_traceback(face, checkpoint, tmp_path, monkeypatch):
    import popos.evaluate

    def broken(*_, **__):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(popos.evaluate, "predict", broken)
    with pytest.raises(ValueError, match="a bug"):
        predict(face, checkpoint, tmp_path / "o.png")


def test_a_bad_setting_stops_download_before_any_file(tmp_path, capsys):
    root = tmp_path / "raw"
    assert main(["data", "download", "300w", "--root", str(root), "--set", "data.padding=.inf"]) == 2
    assert "data.padding: Input should be a finite number" in one_line_error(capsys, "data")
    assert not root.exists()
