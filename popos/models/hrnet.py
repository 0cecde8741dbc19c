"""Lightweight HRNetV2 (W18 by default) producing 64 to 4 pixel heatmaps (paper section 3.1).

The network maps ``[B, 3, S, S]`` images to ``[B, K, h, h]`` heatmaps with ``h = S / stride``. As in the
authors' code, the heatmap size is chosen by the stem: a larger total stride comes from strided stem convs
and, below 16 pixels at a 256 input, extra stride-2 stem convs plus fewer HRNet stages, so compute falls
with the heatmap size. :data:`ARCHITECTURES` holds one row per total stride and a single ``forward`` reads
it; unlike the authors' code, stages that a row does not run are not built.

Geometry: every convolution is ``k x k`` with padding ``k // 2`` and every upsampling samples the coarse map
at ``fine / factor`` (pixel centres, :func:`centred_upsample`), so output pixel ``j`` is centred on input
pixel ``stride * j``, the convention of :mod:`popos.geometry`. (mmpose upsamples with nearest-neighbour in
the fusion layers and ``align_corners=False`` in the head, which shifts lower-branch features by a fraction
of a pixel; the layers and their weights are the same, only the sampling differs.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class StemRow:
    """How the network reaches one total stride (input px per heatmap px).

    ``conv_strides``: strides of the two 3x3 stem convs; ``extra_convs``: further 3x3 stride-2 stem convs
    (64 channels, no pretrained weights); ``stages``: HRNet stages run (1 = the bottleneck stage only),
    so the head concatenates ``stages`` branches.
    """

    conv_strides: tuple[int, int]
    extra_convs: int
    stages: int

    @property
    def stride(self) -> int:
        """Total stride of the stem, i.e. of the heatmap."""
        return self.conv_strides[0] * self.conv_strides[1] * 2**self.extra_convs


#: Total stride -> architecture. At a 256 input, strides 4/8/16/32/64 give the paper's 64/32/16/8/4
#: heatmaps exactly as the authors' code does (upstream.md section 7); stride 2 serves a 64 heatmap at
#: a 128 input (same stage cost as the 256 model at 64).
ARCHITECTURES: dict[int, StemRow] = {
    2: StemRow(conv_strides=(2, 1), extra_convs=0, stages=4),
    4: StemRow(conv_strides=(2, 2), extra_convs=0, stages=4),
    8: StemRow(conv_strides=(4, 2), extra_convs=0, stages=4),
    16: StemRow(conv_strides=(4, 4), extra_convs=0, stages=4),
    32: StemRow(conv_strides=(4, 4), extra_convs=1, stages=3),
    64: StemRow(conv_strides=(4, 4), extra_convs=2, stages=2),
}


def centred_upsample(x: Tensor, factor: int) -> Tensor:
    """Bilinear upsampling ``[B, C, h, w] -> [B, C, h * factor, w * factor]`` in the pixel-centre convention.

    Fine pixel ``j`` samples the coarse map at ``j / factor`` (coarse pixel ``i`` centred at fine ``i * factor``,
    as a stride-``factor`` conv with padding ``k // 2`` places it); beyond the last coarse centre the border
    value is repeated.

    >>> centred_upsample(torch.tensor([[[[0.0, 2.0]]]]), 2)[0, 0, 0].tolist()
    [0.0, 1.0, 2.0, 2.0]
    """
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    y = F.interpolate(x, size=((h - 1) * factor + 1, (w - 1) * factor + 1), mode="bilinear", align_corners=True)
    return F.pad(y, (0, factor - 1, 0, factor - 1), mode="replicate")


class CentredUpsample(nn.Module):
    """Module form of :func:`centred_upsample` (no parameters)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return centred_upsample(x, self.factor)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """``kernel x kernel`` conv (padding ``kernel // 2``, no bias) + BatchNorm (+ ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (channels unchanged)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + x, inplace=True)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) with a projected shortcut when the channels change."""

    expansion = 4

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = conv_bn(cin, cout, kernel=1, relu=False) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        return F.relu(self.bn3(self.conv3(y)) + self.downsample(x), inplace=True)


def _fuse_layer(channels: list[int], src: int, dst: int) -> nn.Module:
    """Map branch ``src`` onto branch ``dst``'s resolution and channels (HRNet multi-scale fusion)."""
    if src == dst:
        return nn.Identity()
    if src > dst:  # coarser -> finer: 1x1 conv, then upsample
        return nn.Sequential(*conv_bn(channels[src], channels[dst], kernel=1, relu=False),
                             CentredUpsample(2 ** (src - dst)))
    steps = [conv_bn(channels[src], channels[src], stride=2) for _ in range(dst - src - 1)]
    steps.append(conv_bn(channels[src], channels[dst], stride=2, relu=False))
    return nn.Sequential(*steps)


class HRModule(nn.Module):
    """Parallel branches of Basic blocks followed by all-to-all fusion; ``[x_0..x_n] -> [y_0..y_n]``."""

    def __init__(self, channels: list[int], num_blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c) for _ in range(num_blocks))) for c in channels
        )
        n = len(channels)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_layer(channels, j, i) for j in range(n)) for i in range(n)
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        return [F.relu(sum(f(x) for f, x in zip(fuse, xs, strict=True)), inplace=True) for fuse in self.fuse_layers]


def _transition(cin: list[int], cout: list[int]) -> nn.ModuleList:
    """Adapt ``len(cin)`` branches to ``len(cout)``: the new branch comes from the last one at stride 2."""
    layers = []
    for i, c in enumerate(cout):
        if i < len(cin):
            layers.append(nn.Identity() if cin[i] == c else conv_bn(cin[i], c))
        else:
            layers.append(nn.Sequential(conv_bn(cin[-1], c, stride=2)))
    return nn.ModuleList(layers)


class HRNetHeatmap(nn.Module):
    """HRNetV2 backbone + heatmap head; ``[B, 3, S, S] -> [B, K, S / stride, S / stride]``, no sigmoid.

    Module names follow mmpose / the official HRNet (``conv1``, ``bn1``, ``layer1``, ``stage2``'s
    ``branches`` and ``fuse_layers``...), except that transitions and stages sit in the lists
    ``transitions`` and ``stages`` (``transition1`` -> ``transitions.0``, ``stage2`` -> ``stages.0``).
    """

    def __init__(
        self,
        num_landmarks: int,
        row: StemRow,
        *,
        width: int = 18,
        stem_width: int = 64,
        stage1_blocks: int = 4,
        num_blocks: int = 4,
        num_modules: tuple[int, int, int] = (1, 4, 3),
    ) -> None:
        super().__init__()
        self.row = row
        s1, s2 = row.conv_strides
        self.conv1 = nn.Conv2d(3, stem_width, 3, stride=s1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.conv2 = nn.Conv2d(stem_width, stem_width, 3, stride=s2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_width)
        self.stem_extra = nn.Sequential(*(conv_bn(stem_width, stem_width, stride=2) for _ in range(row.extra_convs)))
        self.layer1 = nn.Sequential(
            *(Bottleneck(stem_width if b == 0 else stem_width * Bottleneck.expansion, stem_width)
              for b in range(stage1_blocks))
        )
        channels = [stem_width * Bottleneck.expansion]
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for stage in range(2, row.stages + 1):
            new = [width * 2**i for i in range(stage)]
            self.transitions.append(_transition(channels, new))
            self.stages.append(nn.Sequential(*(HRModule(new, num_blocks) for _ in range(num_modules[stage - 2]))))
            channels = new
        concat = sum(channels)
        self.head = nn.Sequential(
            nn.Conv2d(concat, concat, 1), nn.BatchNorm2d(concat), nn.ReLU(inplace=True),
            nn.Conv2d(concat, num_landmarks, 1),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # small initial heatmaps, as mmpose's head (normal, std 0.001)
        nn.init.normal_(self.head[-1].weight, std=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, S, S]`` normalised images -> ``[B, K, S / stride, S / stride]`` heatmaps."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        xs = [self.layer1(self.stem_extra(x))]
        for transition, stage in zip(self.transitions, self.stages, strict=True):
            xs = [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            xs = stage(xs)
        return self.head(torch.cat([centred_upsample(x, 2**i) for i, x in enumerate(xs)], dim=1))


def architecture(input_size: int, heatmap_size: int) -> StemRow:
    """The row of :data:`ARCHITECTURES` for ``stride = input_size / heatmap_size``; ``ValueError`` if none fits.

    The stride must be a key of :data:`ARCHITECTURES`, and ``input_size`` a multiple of the stride of the
    row's coarsest branch.

    >>> architecture(256, 8).stages, architecture(256, 4).stages
    (3, 2)
    """
    stride, rest = divmod(input_size, heatmap_size)
    if rest or stride not in ARCHITECTURES:
        allowed = ", ".join(f"{input_size // s} (stride {s})" for s in ARCHITECTURES if input_size % s == 0)
        raise ValueError(
            f"heatmap_size {heatmap_size} at input_size {input_size}: stride {input_size / heatmap_size:g} has no "
            f"architecture; allowed heatmap sizes at this input: {allowed or 'none'} (strides {list(ARCHITECTURES)})"
        )
    row = ARCHITECTURES[stride]
    coarsest = stride * 2 ** (row.stages - 1)
    if input_size % coarsest:
        raise ValueError(
            f"input_size {input_size} must be a multiple of {coarsest} for heatmap_size {heatmap_size} "
            f"(the coarsest of its {row.stages} branches has stride {coarsest})"
        )
    return row


def build_model(
    num_landmarks: int,
    heatmap_size: int,
    width: int = 18,
    input_size: int = 256,
    pretrained: str | Path | None = None,
    stem_width: int = 64,
    stage1_blocks: int = 4,
    num_blocks: int = 4,
    num_modules: tuple[int, int, int] | list[int] = (1, 4, 3),
) -> HRNetHeatmap:
    """The lightweight HRNet for ``[B, 3, input_size, input_size] -> [B, num_landmarks, h, h]``, ``h = heatmap_size``.

    The row of :data:`ARCHITECTURES` is chosen by ``stride = input_size / heatmap_size`` (heatmap pixel ``j``
    is centred on input pixel ``stride * j``). Defaults are HRNetV2-W18 as in the paper: ``width`` 18
    (branches 18/36/72/144), a 64-channel stem and 4 Bottleneck blocks in stage 1 (``stem_width``,
    ``stage1_blocks``), 4 Basic blocks per branch (``num_blocks``) and 1/4/3 modules in stages 2/3/4
    (``num_modules``); smaller values give slim models for CPU demos. ``pretrained``: ImageNet HRNet
    weights (``"imagenet"`` or a file) for the whole backbone, see :func:`popos.pretrained.load_backbone`.
    Keyword names equal :class:`popos.config.ModelSection`'s.

    >>> model = build_model(68, heatmap_size=8, width=4, input_size=128, num_blocks=1).eval()
    >>> model(torch.zeros(1, 3, 128, 128)).shape
    torch.Size([1, 68, 8, 8])
    """
    for name, value in {"num_landmarks": num_landmarks, "heatmap_size": heatmap_size, "width": width,
                        "input_size": input_size, "stem_width": stem_width, "stage1_blocks": stage1_blocks,
                        "num_blocks": num_blocks}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    num_modules = tuple(num_modules)
    if len(num_modules) != 3 or any(not isinstance(m, int) or m < 1 for m in num_modules):
        raise ValueError(f"num_modules must be 3 positive integers (stages 2, 3, 4), got {num_modules!r}")
    row = architecture(input_size, heatmap_size)
    model = HRNetHeatmap(num_landmarks, row, width=width, stem_width=stem_width, stage1_blocks=stage1_blocks,
                         num_blocks=num_blocks, num_modules=num_modules)
    if pretrained is not None:
        from popos.pretrained import load_backbone  # it maps checkpoint names onto this module's

        load_backbone(model, str(pretrained))
    return model
