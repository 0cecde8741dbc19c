"""The ImageNet backbone: fetched once from a (local) server, verified, loaded whole; offline message."""

import dataclasses
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from popos import pretrained
from popos.cli import main
from popos.errors import UserError
from popos.models import build_model

# Names, shapes and dtypes of timm's hrnet_w18 state dict (the architecture of IMAGENET's file), listed with
# timm 1.0.31: timm.create_model("hrnet_w18").state_dict(), one "name shape dtype" line per tensor.
KEYS = Path(__file__).parent / "data" / "hrnet_w18_timm_state_dict.txt"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A file with the checkpoint's exact names, shapes and dtypes (seeded values), served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("hub")
    g = torch.Generator().manual_seed(0)
    state = {}
    for line in KEYS.read_text().splitlines():
        name, shape, dtype = line.split()
        size = [] if shape == "-" else [int(v) for v in shape.split("x")]
        state[name] = (torch.randint(0, 100, size, generator=g) if dtype == "int64"
                       else torch.randn(size, generator=g)).to(getattr(torch, dtype))
    save_file(state, str(root / "model.safetensors"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/model.safetensors"
    source = dataclasses.replace(pretrained.IMAGENET, sha256=pretrained.sha256_of(root / "model.safetensors"))
    yield {"url": url, "source": source, "state": state}
    server.shutdown()


def test_fetch_then_load_maps_the_whole_backbone(served, tmp_path, monkeypatch):
    path = pretrained.fetch(tmp_path, served["source"], url=served["url"])
    assert path == tmp_path / served["source"].local_name and pretrained.sha256_of(path) == served["source"].sha256
    monkeypatch.setitem(pretrained.SOURCES, "imagenet", served["source"])
    for size in (64, 4):  # all stages at 64; at 4 only stages 1-2 exist and the extra stem convs stay new
        model = build_model(98, size)
        report = pretrained.load_backbone(model, "imagenet", tmp_path)
        wanted = pretrained.backbone_names(model)
        assert report["tensors"] == report["of_backbone"] == len(wanted) > 0  # 100 % of the backbone
        assert report["parameters"] == sum(model.state_dict()[k].numel() for k in wanted)
        assert torch.equal(model.state_dict()["stages.0.0.branches.1.0.conv1.weight"],
                           served["state"]["stage2.0.branches.1.0.conv1.weight"])
        assert f"{len(wanted)} of {len(wanted)} backbone tensors" in pretrained.summary(report)
    # a second fetch finds the verified file and downloads nothing (the server is not needed)
    assert pretrained.fetch(tmp_path, served["source"], url="http://127.0.0.1:9/unreachable") == path


def test_checksum_mismatch_is_refused(served, tmp_path, monkeypatch):
    wrong = dataclasses.replace(served["source"], sha256="0" * 64)
    with pytest.raises(UserError, match="differs from the pinned 0000"):
        pretrained.fetch(tmp_path, wrong, url=served["url"])
    assert not any(tmp_path.iterdir())  # nothing half-written or unverified is kept
    # a file changed after fetching is refused at load time
    pretrained.fetch(tmp_path, served["source"], url=served["url"])
    monkeypatch.setitem(pretrained.SOURCES, "imagenet", wrong)
    with pytest.raises(UserError, match="differs from the pinned"):
        pretrained.load_backbone(build_model(98, 64), "imagenet", tmp_path)


def test_partial_backbone_is_an_error(served, tmp_path, monkeypatch):
    pretrained.fetch(tmp_path, served["source"], url=served["url"])
    monkeypatch.setitem(pretrained.SOURCES, "imagenet", served["source"])
    slim = build_model(98, 64, width=8, num_blocks=1, num_modules=(1, 1, 1))
    with pytest.raises(UserError, match=r"fills \d+ of the \d+ backbone tensors .*model.width 18"):
        pretrained.load_backbone(slim, "imagenet", tmp_path)


def test_offline_message_names_the_file_and_where_to_put_it(tmp_path, capsys):
    assert main(["model", "fetch-pretrained", "--dir", str(tmp_path), "--url", "http://127.0.0.1:9/x"]) == 2
    err = capsys.readouterr().err
    assert pretrained.IMAGENET.url in err and str(tmp_path / pretrained.IMAGENET.local_name) in err
    with pytest.raises(UserError, match="popos model fetch-pretrained"):  # a training job never downloads
        pretrained.load_backbone(build_model(98, 64), "imagenet", tmp_path)


def test_training_logs_and_saves_what_it_loaded(served, tmp_path, monkeypatch, capsys):
    from test_train import write_tiny_dataset

    from popos.config import load_params
    from popos.train import train

    weights = tmp_path / "weights"
    pretrained.fetch(weights, served["source"], url=served["url"])
    monkeypatch.setitem(pretrained.SOURCES, "imagenet", served["source"])
    root = write_tiny_dataset(tmp_path / "prepared", n_train=8)
    params = load_params(overrides=[f"data.prepared_dir={root}", f"data.pretrained_dir={weights}",
                                    "model.input_size=32", "train.epochs=1", "train.batch_size=8", "train.workers=0",
                                    "train.eval_every=0", "augment.rotation_prob=0",
                                    "grid.heatmap_sizes=[8]", "sweeps.heatmap_size=8", "report.overlay_sizes=[8]"])
    train(params, "synth", 8, "mse", tmp_path / "run", device="cpu")
    loaded = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["config"]["pretrained_loaded"]
    n = len(pretrained.backbone_names(build_model(68, 8, input_size=32)))
    assert loaded["tensors"] == loaded["of_backbone"] == n and loaded["sha256"] == served["source"].sha256
    assert loaded["parameters"] > 9_000_000  # HRNetV2-W18's backbone
    assert f"{n} of {n} backbone tensors ({loaded['parameters']:,} parameters) loaded" in capsys.readouterr().out
