import csv
from fractions import Fraction

import pytest
import torch
from torch import nn

from popos.cli import main
from popos.config import ModelSection
from popos.errors import UserError
from popos.models import ARCHITECTURES, build_model, model_stats, print_model_table
from popos.models.hrnet import centred_upsample
from popos.pretrained import load_backbone, pretrained_key

# small enough to run every architecture row in well under a second
SLIM = dict(width=2, stem_width=4, stage1_blocks=1, num_blocks=1, num_modules=(1, 1, 1))


def _slim(heatmap_size, input_size, num_landmarks=3, seed=0, **knobs):
    torch.manual_seed(seed)
    return build_model(num_landmarks, heatmap_size, input_size=input_size, **{**SLIM, **knobs})


def test_every_row_reaches_its_stride():
    for stride, row in ARCHITECTURES.items():
        assert row.stride == stride
        assert 2 <= row.stages <= 4


@pytest.mark.parametrize("input_size", [128, 256])
@pytest.mark.parametrize("heatmap_size", [64, 32, 16, 8, 4])
def test_output_shape_at_every_size(heatmap_size, input_size):
    model = _slim(heatmap_size, input_size, num_landmarks=5)
    out = model(torch.randn(2, 3, input_size, input_size))
    assert out.shape == (2, 5, heatmap_size, heatmap_size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("stride", list(ARCHITECTURES))
def test_row_builds_only_what_it_runs(stride):
    row = ARCHITECTURES[stride]
    input_size = 2 * stride * 2 ** (row.stages - 1)  # coarsest branch 2 px wide
    model = _slim(2 * 2 ** (row.stages - 1), input_size, width=3)
    assert (model.conv1.stride[0], model.conv2.stride[0]) == row.conv_strides
    assert len(model.stem_extra) == row.extra_convs
    assert len(model.stages) == len(model.transitions) == row.stages - 1
    assert model.head[0].in_channels == 3 * (2**row.stages - 1)  # branches 3, 6, 12, ... concatenated
    # every parameter is used: nothing is built that the forward skips (the authors build unused stages)
    model(torch.randn(2, 3, input_size, input_size)).square().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


def test_w18_parameter_count_matches_the_paper():
    # upstream floats.txt: the 64x64 300W model (68 landmarks) has 9.654 M parameters
    params = sum(p.numel() for p in build_model(68, 64).parameters())
    assert abs(params / 1e6 - 9.654) / 9.654 < 0.01
    assert sum(p.numel() for p in build_model(98, 64).parameters()) - params == 30 * 270 + 30  # head 1x1 conv


def test_unknown_size_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"heatmap_size 48 .*allowed heatmap sizes.*64 \(stride 4\).*4 \(stride 64\)"):
        build_model(98, 48)
    with pytest.raises(ValueError, match="stride 1 has no architecture"):
        build_model(98, 64, input_size=64)
    with pytest.raises(ValueError, match="input_size 64 must be a multiple of 128"):
        build_model(98, 4, input_size=64)
    with pytest.raises(ValueError, match="num_blocks must be a positive integer"):
        build_model(98, 64, num_blocks=0)
    with pytest.raises(ValueError, match="num_modules must be 3 positive integers"):
        build_model(98, 64, num_modules=(1, 4))


def test_model_section_fields_are_build_model_keywords():
    section = ModelSection(pretrained=None, width=2, input_size=128, stem_width=4, stage1_blocks=1, num_blocks=1,
                           num_modules=(1, 1, 2))
    model = build_model(7, 16, **section.model_dump())
    assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 7, 16, 16)
    assert len(model.stages[-1]) == 2


def test_centred_upsample_keeps_pixel_centres():
    # a ramp sampled at coarse centres x = f * i must come out as the same ramp at fine centres x = j
    for factor in (2, 4, 8):
        coarse = (torch.arange(5.0) * factor).expand(1, 1, 5, 5)
        fine = centred_upsample(coarse, factor)
        assert fine.shape == (1, 1, 5 * factor, 5 * factor)
        n = 4 * factor + 1  # up to the last coarse centre; beyond it the border value is repeated
        torch.testing.assert_close(fine[0, 0, 0, :n], torch.arange(float(n)))
        assert (fine[0, 0, 0, n:] == 4 * factor).all()
        torch.testing.assert_close(fine[0, 0, :, 3], torch.full((5 * factor,), 3.0))


def _linearised(model):
    """Non-negative mirror-symmetric kernels and identity BatchNorm: on positive inputs every ReLU passes,
    so the network is linear and its input gradient is the receptive field of one output pixel."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight.abs()
                m.weight.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.weight.data.fill_(1)
                m.bias.data.zero_()
    return model.eval()


@pytest.mark.parametrize("stride", list(ARCHITECTURES))
def test_output_pixel_j_is_centred_on_input_pixel_stride_times_j(stride):
    row = ARCHITECTURES[stride]
    # coarsest branch 16 px wide, so no receptive field reaches a border
    coarsest = stride * 2 ** (row.stages - 1)
    input_size = 16 * coarsest
    h = input_size // stride
    model = _linearised(_slim(h, input_size))
    x = torch.ones(2, 3, input_size, input_size, requires_grad=True)
    on_grid, off_grid = (h // 2, h // 2), (h // 2 - 1, h // 2 + 3)  # (x, y) heatmap px
    out = model(x)
    (out[0, 0, on_grid[1], on_grid[0]] + out[1, 0, off_grid[1], off_grid[0]]).backward()
    fields = x.grad.sum(1).double()  # [2, S, S]: the receptive field of each chosen output pixel
    # linear interpolation reproduces linear functions, so the centroid is exact for every output pixel
    coords = torch.arange(input_size, dtype=torch.float64)
    for field, (jx, jy) in zip(fields, (on_grid, off_grid), strict=True):
        assert (field.sum(0) * coords).sum() / field.sum() == pytest.approx(stride * jx, abs=1e-3)
        assert (field.sum(1) * coords).sum() / field.sum() == pytest.approx(stride * jy, abs=1e-3)
    # for a pixel on the coarsest grid the whole field is mirror-symmetric about stride * j
    c = stride * on_grid[0]
    r = min(c, input_size - 1 - c)
    window = fields[0, c - r:c + r + 1, c - r:c + r + 1]
    tol = 1e-5 * window.max().item()
    torch.testing.assert_close(window, window.flip(0), rtol=0, atol=tol)
    torch.testing.assert_close(window, window.flip(1), rtol=0, atol=tol)


def _mmpose_naming(state):
    """Rename our keys the way mmpose's hrnetv2_w18 checkpoints spell them."""
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "transitions":
            n, _, rest = rest.partition(".")
            key = f"transition{int(n) + 1}.{rest}"
        elif head == "stages":
            n, _, rest = rest.partition(".")
            key = f"stage{int(n) + 2}.{rest}"
        out["backbone." + key] = value
    return out


def test_pretrained_key_mapping():
    assert pretrained_key("backbone.transition1.1.0.0.weight") == "transitions.0.1.0.0.weight"
    assert pretrained_key("stage4.2.branches.3.0.bn2.running_mean") == "stages.2.2.branches.3.0.bn2.running_mean"
    assert pretrained_key("module.layer1.0.downsample.0.weight") == "layer1.0.downsample.0.weight"


def test_load_pretrained_from_mmpose_and_timm_names(tmp_path):
    source = _slim(16, 128, seed=1)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    mmpose = tmp_path / "hrnet_mmpose.pth"
    torch.save({"state_dict": {**_mmpose_naming(state), "keypoint_head.final_layer.weight": torch.ones(3)}}, mmpose)
    timm = tmp_path / "hrnet_timm.pth"
    torch.save({**_mmpose_naming(state), "classifier.weight": torch.ones(1000, 2048)}, timm)
    for path in (mmpose, timm):
        target = _slim(16, 128, seed=2)
        head_before = target.head[0].weight.clone()
        report = load_backbone(target, str(path))
        assert report["tensors"] == report["of_backbone"] == len([k for k in state if "num_batches" not in k])
        for key, value in state.items():
            torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
        torch.testing.assert_close(target.head[0].weight, head_before, rtol=0, atol=0)
    # a stride-64 model has extra stem convs that an ImageNet file lacks: they keep their initialisation
    model = build_model(3, 2, input_size=128, pretrained=str(mmpose), **SLIM)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight, rtol=0, atol=0)


def test_load_pretrained_errors(tmp_path):
    model = _slim(16, 128)
    with pytest.raises(UserError, match="missing.pth: no such file"):
        load_backbone(model, str(tmp_path / "missing.pth"))
    wrong_width = tmp_path / "wide.pth"
    wide = {k: v for k, v in _slim(16, 128, width=5, stem_width=6).state_dict().items() if not k.startswith("head.")}
    torch.save(_mmpose_naming(wide), wrong_width)
    with pytest.raises(UserError, match="fills 0 of the .* backbone tensors"):
        load_backbone(model, str(wrong_width))
    pickled = tmp_path / "full_checkpoint.pth"
    torch.save({"state_dict": {}, "meta": Fraction(1, 2)}, pickled)  # any non-tensor object
    with pytest.raises(UserError, match="re-save its state dict"):
        load_backbone(model, str(pickled))


def test_model_stats_counts_macs_as_the_paper():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    params, gflops = model_stats(conv, 8)
    assert params == 3 * 4 * 9
    assert gflops * 1e9 == pytest.approx(3 * 4 * 9 * 8 * 8)  # one multiply-accumulate per weight and pixel


def test_model_table_and_cli_csv(tmp_path, capsys):
    rows = print_model_table(3, input_size=128, out=tmp_path / "t.csv", **SLIM)
    assert [r["heatmap_size"] for r in rows] == [64, 32, 16, 8, 4]
    gflops = [r["gflops"] for r in rows]
    assert gflops == sorted(gflops, reverse=True) and gflops[-1] > 0
    with open(tmp_path / "t.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["heatmap_size", "params_m", "gflops"]
    assert [int(r["heatmap_size"]) for r in table] == [64, 32, 16, 8, 4]
    assert "GFLOPs" in capsys.readouterr().out
    # at a 64 input only strides 2, 4, 8 fit (heatmaps 32, 16, 8)
    slim = tmp_path / "slim.yaml"
    slim.write_text("model: {stem_width: 8, stage1_blocks: 1, num_blocks: 1, num_modules: [1, 1, 1]}\n")
    assert main(["model", "info", "--params", str(slim), "--num-landmarks", "5", "--width", "2",
                 "--input-size", "64", "--out", str(tmp_path / "cli.csv")]) == 0
    with open(tmp_path / "cli.csv") as f:
        assert [int(r["heatmap_size"]) for r in csv.DictReader(f)] == [32, 16, 8]
    assert not list(tmp_path.glob(".*tmp"))
