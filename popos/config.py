"""params.yaml: every knob of the library and the pipeline, validated on load.

One section per pipeline step (``grid``, ``data``, ``synth``, ``augment``, ``model``, ``train``,
``decode``, ``evaluate``, ``oracle``, ``bench``, ``sweeps``, ``report``). Every section rejects
unknown keys; an error names the key (``train.lr``) and what is allowed. Files given later override
earlier ones key by key (``params.yaml`` then ``config/demo.yaml``), and ``key.path=value``
overrides come last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

HeatmapSize = Literal[64, 32, 16, 8, 4]


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GridSection(Section):
    """The experiment grid the workflow runs: dataset x heatmap size x loss (x every decoder)."""

    datasets: list[str] = Field(default=["wflw", "300w", "cofw", "aflw", "cocowb_face"], description="dataset names")
    heatmap_sizes: list[HeatmapSize] = Field(default=[64, 32, 16, 8, 4], description="heatmap side in pixels")
    losses: list[Literal["mse", "mse_ma"]] = Field(default=["mse", "mse_ma"], description="training losses")


class DataSection(Section):
    """Where raw and prepared data live and how face crops are cached."""

    raw_dir: str = Field(default="data/raw", description="downloaded / user-supplied raw datasets")
    prepared_dir: str = Field(default="data/prepared", description="prepared splits (annotations + crop cache)")
    crop_size: int = Field(default=384, gt=0, description="side of the cached face crops, px")
    padding: float = Field(default=1.25, gt=0, description="face box padding of the network input")


class SynthSection(Section):
    """The embedded synthetic face dataset."""

    n_train: int = Field(default=2000, ge=1)
    n_test: int = Field(default=400, ge=1)
    seed: int = 0


class AugmentSection(Section):
    """Training-time augmentation (paper section 4.2)."""

    flip_prob: float = Field(default=0.5, ge=0, le=1)
    rotation_prob: float = Field(default=0.6, ge=0, le=1)
    rotation_std: float = Field(default=30.0, ge=0, description="degrees")
    rotation_max: float = Field(default=60.0, ge=0, description="degrees, clip")
    scale_min: float = Field(default=0.75, gt=0)
    scale_max: float = Field(default=1.25, gt=0)
    translate: float = Field(default=0.05, ge=0, description="max shift as a fraction of the input size")
    color_jitter: float = Field(default=0.2, ge=0, description="max relative change of brightness/contrast/saturation")


class ModelSection(Section):
    """The lightweight HRNet."""

    width: int = Field(default=18, gt=0, description="channels of the highest-resolution branch (18 = HRNetV2-W18)")
    input_size: int = Field(default=256, gt=0, description="network input side, px")
    pretrained: str | None = Field(default=None, description="local ImageNet HRNet-W18 weights (mmpose or timm naming)")


class TrainSection(Section):
    """Training (paper section 4.2: Adam, lr 2e-3 decaying to 1e-5)."""

    epochs: int = Field(default=60, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    lr_min: float = Field(default=1e-5, ge=0)
    seed: int = 0
    sigma: float = Field(default=2.0, gt=0, description="target Gaussian sigma, heatmap px")
    ma_weight: float = Field(default=6.0, ge=0, description="w in L = L_MSE + w * L_MA (paper's best: 6)")
    ma_k: int | None = Field(default=None, ge=1, description="MA mask size; None = the decoder's K at that size")
    ma_mask: Literal["pred", "target", "union"] = Field(default="pred", description="where the top-K mask comes from")
    workers: int = Field(default=2, ge=0, description="data-loader worker processes")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(default=True, description="mixed precision on CUDA")


class DecodeSection(Section):
    """Decoders and their options, as evaluation uses them."""

    methods: list[str] = Field(
        default=["one_hot", "two_hot", "dark", "keyposs", "igno", "popos_authors", "popos"],
        description="decoder variants (see popos.decoders.VARIANTS)",
    )
    sigma: float = Field(default=2.0, gt=0, description="Gaussian sigma assumed by the decoders, heatmap px")
    popos: dict[str, Any] = Field(default_factory=dict, description="options of our POPoS decoder")


class EvaluateSection(Section):
    """Evaluation of a trained model."""

    flip_test: bool = True
    batch_size: int = Field(default=64, ge=1)
    fr_threshold: float = Field(default=0.1, gt=0, description="failure threshold (NME) for FR and AUC")
    save_heatmaps: bool = Field(default=True, description="keep float16 test heatmaps for decoder ablations")


class OracleSection(Section):
    """Decoding study without a model."""

    heatmap_sizes: list[HeatmapSize] = Field(default=[64, 32, 16, 8, 4])
    conditions: list[Literal["clean", "noise", "amp07", "ampnoise", "flip"]] = Field(
        default=["clean", "noise", "amp07", "ampnoise", "flip"]
    )
    num_images: int = Field(default=32, ge=1)
    num_landmarks: int = Field(default=98, ge=1)
    seed: int = 0


class BenchSection(Section):
    """Decoder speed benchmark."""

    heatmap_sizes: list[HeatmapSize] = Field(default=[64, 32, 16, 8, 4])
    batch: int = Field(default=32, ge=1, description="faces per batch")
    num_landmarks: int = Field(default=98, ge=1)
    warmup: int = Field(default=3, ge=0)
    repeats: int = Field(default=10, ge=1)
    devices: list[Literal["cpu", "cuda"]] = Field(default=["cpu"])


class SweepsSection(Section):
    """Ablations of Figure 5: decoder knobs on saved heatmaps, MA weight by training."""

    dataset: str = "300w"
    heatmap_size: HeatmapSize = 32
    region: list[float] = Field(default=[1, 2, 3, 4, 6, 8], description="POPoS search region side, heatmap px")
    samples_per_pixel: list[float] = Field(default=[1, 2, 4, 8, 16])
    anchors: list[int] = Field(default=[5, 10, 15, 20, 25, 30, 40])
    ma_weight: list[float] = Field(default=[0, 1, 2, 4, 6, 8, 10])


class ReportSection(Section):
    """The generated report."""

    title: str = "popos: facial landmark decoding at 64 to 4 pixel heatmaps"
    overlay_faces: int = Field(default=4, ge=1, description="faces drawn in Figure 6")


class Params(Section):
    """All of params.yaml."""

    grid: GridSection = GridSection()
    data: DataSection = DataSection()
    synth: SynthSection = SynthSection()
    augment: AugmentSection = AugmentSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    decode: DecodeSection = DecodeSection()
    evaluate: EvaluateSection = EvaluateSection()
    oracle: OracleSection = OracleSection()
    bench: BenchSection = BenchSection()
    sweeps: SweepsSection = SweepsSection()
    report: ReportSection = ReportSection()


class ParamsError(ValueError):
    """A params file or override is invalid; the message names the file and the key."""


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> dict:
    """``"train.lr=0.01"`` -> ``{"train": {"lr": 0.01}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    node: dict = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = yaml.safe_load(value)
    return node


def load_params(*paths: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read, merge and validate params files (later files override earlier ones), then ``overrides``."""
    merged: dict = {}
    for path in paths:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as exc:
            raise ParamsError(f"{path}: file not found") from exc
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
        merged = _merge(merged, data)
    for text in overrides:
        merged = _merge(merged, parse_override(text))
    try:
        return Params.model_validate(merged)
    except ValidationError as exc:
        sources = ", ".join(str(p) for p in paths) or "defaults"
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            allowed = f" (allowed: {err['ctx']['expected']})" if "expected" in err.get("ctx", {}) else ""
            lines.append(f"  {key}: {err['msg']}{allowed}")
        raise ParamsError(f"invalid params in {sources}:\n" + "\n".join(lines)) from None
