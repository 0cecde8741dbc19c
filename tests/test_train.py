import os
import socket
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from popos import geometry
from popos.checkpoint import CheckpointError, checksum, load_checkpoint, save_checkpoint
from popos.config import load_params
from popos.data.prepared import PreparedWriter
from popos.data.registry import DATASETS
from popos.errors import UserError
from popos.models import build_model
from popos.train import NonFiniteLossError, make_targets, measure_throughput, run_config, train

K = DATASETS["synth"].num_landmarks
HEATMAP = 8
# A slim model and small inputs: a training epoch on 16 faces takes well under a second on one core.
TINY = [
    "model.pretrained=null",
    "model.input_size=32", "model.width=4", "model.stem_width=8", "model.stage1_blocks=1", "model.num_blocks=1",
    "model.num_modules=[1, 1, 1]", "train.batch_size=8", "train.epochs=3", "train.workers=0", "train.lr=0.005",
    "augment.rotation_prob=0", "augment.flip_prob=0.5", "augment.translate=0.02",
    "decode.methods=[one_hot, popos, popos_authors]",
    "evaluate.batch_size=8", "evaluate.save_heatmaps=true", "train.eval_every=1",
    # a 32 px input makes 8 px heatmaps, not the paper's 64 or 4 (load_params checks it)
    f"grid.heatmap_sizes=[{HEATMAP}]", f"sweeps.heatmap_size={HEATMAP}", f"report.overlay_sizes=[{HEATMAP}]",
]


def write_tiny_dataset(root: Path, name: str = "synth", n_train: int = 16, n_test: int = 6, crop: int = 48) -> Path:
    """Prepared train/test splits of ``name`` under ``root/name``: faces are dots drawn at a jittered,
    rescaled template of K points, so a model can learn them; returns ``root``."""
    rng = np.random.default_rng(0)
    template = rng.uniform(-1, 1, size=(K, 2))
    for split, n in (("train", n_train), ("test", n_test)):
        with PreparedWriter(root / name / split, name, split, num_landmarks=K, crop_size=crop) as w:
            for i in range(n):
                points = template * rng.uniform(30, 40) + rng.uniform(60, 90, size=2) + rng.normal(0, 1, (K, 2))
                box = np.r_[points.min(0), points.max(0) - points.min(0)]
                centre, side = geometry.square_box(box)
                to_crop = geometry.crop_affine(centre, side * 1.5, crop)
                img = np.full((crop, crop, 3), 30, np.uint8)
                for x, y in geometry.apply_affine(points, to_crop):
                    cv2.circle(img, (round(x * 16), round(y * 16)), 16, (220, 200, 180), -1, cv2.LINE_AA, shift=4)
                w.add(image=f"{split}/{i}.png", crop=img, landmarks=points, visible=np.ones(K, bool), box=box,
                      norm=np.linalg.norm(points[36] - points[45]), crop_affine=to_crop)
    return root


def tiny_params(root: Path, *extra: str):
    return load_params(overrides=[*TINY, f"data.prepared_dir={root}", *extra])


def save_untrained_checkpoint(path: Path, params, **model) -> Path:
    """A checkpoint of a freshly initialised model for ``params`` (``model`` overrides its weights' shapes,
    not the stored config); returns ``path``."""
    cfg = run_config(params, "synth", HEATMAP, "mse")
    torch.manual_seed(0)
    net = build_model(K, HEATMAP, **{**params.model.model_dump(), **model})
    save_checkpoint({"config": cfg, "epoch": 0, "model": net.state_dict(), "optimizer": {}, "scheduler": {},
                     "scaler": {}, "rng": {}, "history": []}, path)
    return path


def corrupt_largest_tensor(path: Path, size: int = 4096) -> None:
    """Zero up to ``size`` bytes in the middle of the largest tensor stored in a torch.save file, in place
    (torch's zip archives store tensors uncompressed, and torch.load checks no CRC)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    n = min(size, info.file_size // 2)
    offset = start + (info.file_size - n) // 2
    assert any(data[offset:offset + n])  # the bytes change
    data[offset:offset + n] = bytes(n)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("prepared"))


def test_targets_and_weights():
    landmarks = torch.tensor([[[16.0, 8.0], [4.0, 4.0], [18.0, 10.0]]])
    visible = torch.tensor([[1.0, 0.0, 1.0]])
    target, weight = make_targets(landmarks, visible, input_size=32, heatmap_size=8, sigma=1.0)
    assert target.shape == (1, 3, 8, 8) and weight.tolist() == [[1.0, 0.0, 1.0]]
    # landmark 0 sits at input (16, 8) = heatmap (4, 2) with stride 4: the peak is there and is 1
    assert target[0, 0].argmax().item() == 2 * 8 + 4 and target[0, 0, 2, 4].item() == pytest.approx(1.0)
    # landmark 2 at heatmap (4.5, 2.5): the unbiased target is centred between pixels, four equal maxima
    assert target[0, 2, 2:4, 4:6].flatten().tolist() == pytest.approx([np.exp(-0.25)] * 4)


def test_training_lowers_loss_and_writes_outputs(prepared, tmp_path):
    out = tmp_path / "run"
    history = train(tiny_params(prepared, "train.epochs=4"), "synth", HEATMAP, "mse", out, device="cpu")
    losses = [row["loss"] for row in history]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]
    assert history[-1]["lr"] == pytest.approx(1e-5)  # linear decay reaches train.lr_min on the last step
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3, 4] and {"nme_one_hot", "nme_popos", "mse", "ma"} <= set(log.columns)
    assert (log["nme_one_hot"] > 0).all()
    assert (out / "dvclive" / "metrics.json").is_file()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)  # plain data only
    assert ckpt["epoch"] == 4 and ckpt["config"]["heatmap_size"] == HEATMAP and ckpt["config"]["loss"] == "mse"
    assert ckpt["config"]["train"]["lr"] == 0.005 and len(ckpt["history"]) == 4
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_resume_gives_the_same_weights(prepared, tmp_path, monkeypatch):
    params = tiny_params(prepared, "train.eval_every=2")
    straight = train(params, "synth", HEATMAP, "mse_ma", tmp_path / "straight", device="cpu")

    import popos.train as module

    real_epoch = module._train_epoch

    def stop_at_second_epoch(*args, **kwargs):
        if kwargs["epoch"] == 1:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(module, "_train_epoch", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(params, "synth", HEATMAP, "mse_ma", tmp_path / "resumed", device="cpu")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(module, "_train_epoch", real_epoch)
    resumed = train(params, "synth", HEATMAP, "mse_ma", tmp_path / "resumed", resume=True, device="cpu")

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert pd.read_csv(tmp_path / "resumed" / "train_log.csv")["epoch"].tolist() == [1, 2, 3]


def test_resume_refuses_another_config(prepared, tmp_path):
    out = tmp_path / "run"
    train(tiny_params(prepared, "train.epochs=1", "train.eval_every=0"), "synth", HEATMAP, "mse", out, device="cpu")
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"cannot resume.*loss: 'mse' in the checkpoint, 'mse_ma' now.*train\.lr"):
        train(tiny_params(prepared, "train.epochs=1", "train.lr=0.001"), "synth", HEATMAP, "mse_ma", out,
              resume=True, device="cpu")
    # where the data lives and how many loader workers run may change between a run and its resume
    train(tiny_params(prepared, "train.epochs=1", "train.eval_every=0", "train.workers=1"), "synth", HEATMAP, "mse",
          out, resume=True, device="cpu")
    assert (out / "checkpoint.pt").read_bytes() == before  # already complete: nothing retrained


def test_nan_loss_stops_and_keeps_the_last_checkpoint(prepared, tmp_path, monkeypatch):
    import popos.train as module

    out = tmp_path / "run"
    real_build = module.build_loss
    seen = {}

    def poisoned(params, loss):
        criterion, calls = real_build(params, loss), [0]

        def forward(pred, target, weight):
            calls[0] += 1
            total, parts = criterion(pred, target, weight)
            if calls[0] == 3:  # epoch 2, step 1 (16 faces / batch 8 = 2 steps per epoch)
                seen["checkpoint"] = (out / "checkpoint.pt").read_bytes()
                total = total * float("nan")
            return total, parts

        return forward

    monkeypatch.setattr(module, "build_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 1;.*checkpoint.pt \(epoch 1\) is kept"):
        train(tiny_params(prepared), "synth", HEATMAP, "mse", out, device="cpu")
    assert (out / "checkpoint.pt").read_bytes() == seen["checkpoint"]
    assert pd.read_csv(out / "train_log.csv")["epoch"].tolist() == [1]


def test_unknown_dataset_and_bad_batch_split_are_refused(prepared, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        train(tiny_params(prepared), "nope", HEATMAP, "mse", tmp_path, device="cpu")
    with pytest.raises(ValueError, match="loss must be one of"):
        train(tiny_params(prepared), "synth", HEATMAP, "l1", tmp_path, device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match=r"train.batch_size \(8\) must be divisible by the 3 processes"):
        train(tiny_params(prepared), "synth", HEATMAP, "mse", tmp_path, device="cpu")


def test_measure_throughput_on_cpu(tmp_path):
    stats = measure_throughput(tiny_params(tmp_path), HEATMAP, "mse_ma", num_landmarks=5, steps=2, warmup=1,
                               device="cpu")
    assert stats["images_per_s"] > 0 and stats["peak_memory_mb"] > 0 and stats["batch"] == 8
    assert not stats["amp"]


def _ddp_worker(rank: int, port: int, prepared: Path, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DVC_NO_ANALYTICS="1")
    torch.set_num_threads(1)
    train(tiny_params(prepared, "train.epochs=2"), "synth", HEATMAP, "mse", out, device="cpu")


@pytest.mark.slow
def test_two_process_gloo_training(prepared, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the same environment torchrun gives each process; spawn saves starting torchrun's own agent
    torch.multiprocessing.spawn(_ddp_worker, args=(port, prepared, tmp_path / "ddp"), nprocs=2, join=True)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    # 16 faces, global batch 8 over 2 processes: each process takes 4 faces per step, 2 steps per epoch
    assert all(np.isfinite(row["loss"]) and row["images_per_s"] > 0 for row in ckpt["history"])
    assert "nme_popos" in ckpt["history"][-1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_training_and_evaluation_on_cuda(prepared, tmp_path):
    from popos.evaluate import evaluate

    params = tiny_params(prepared, "train.epochs=2", "train.amp=true")
    history = train(params, "synth", HEATMAP, "mse_ma", tmp_path / "run", device="cuda")
    assert len(history) == 2 and all(np.isfinite(row["loss"]) for row in history)
    assert history[-1]["loss"] < history[0]["loss"]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # the grad scaler ran and its state was saved
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    summary = evaluate(params, tmp_path / "run" / "checkpoint.pt", "test", tmp_path / "eval", device="cuda")
    assert summary["method"].tolist() == ["one_hot", "popos"] and (summary["nme"] > 0).all()


def test_checkpoint_round_trip_and_checksum(prepared, tmp_path):
    path = save_untrained_checkpoint(tmp_path / "checkpoint.pt", tiny_params(prepared))
    state = load_checkpoint(path)
    assert state["format_version"] == 2 and state["checksum"] == checksum(state)
    assert state["checksum"] != checksum({**state, "epoch": 1})
    # a weight changed in memory changes the checksum (it covers every tensor's bytes)
    weights = dict(state["model"])
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1
    assert checksum({**state, "model": weights}) != state["checksum"]


def test_corrupt_weights_are_refused_by_resume_and_load(prepared, tmp_path):
    out = tmp_path / "run"
    params = tiny_params(prepared, "train.epochs=1", "train.eval_every=0")
    train(params, "synth", HEATMAP, "mse", out, device="cpu")
    corrupt_largest_tensor(out / "checkpoint.pt")
    torch.load(out / "checkpoint.pt", weights_only=True)  # torch itself reads the corrupt file without a word
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: checksum mismatch"):
        load_checkpoint(out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: checksum mismatch"):
        train(tiny_params(prepared, "train.epochs=2", "train.eval_every=0"), "synth", HEATMAP, "mse", out,
              resume=True, device="cpu")


def test_old_and_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="none.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a popos checkpoint.*config"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format_version": 1, "config": {}, "model": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="old.pt: checkpoint format 1, this popos reads format 2"):
        load_checkpoint(tmp_path / "old.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pt: not a readable popos checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
