"""params.yaml: every knob of the library and the pipeline, validated on load.

One section per pipeline step (``grid``, ``data``, ``synth``, ``augment``, ``model``, ``train``,
``decode``, ``evaluate``, ``oracle``, ``bench``, ``sweeps``, ``report``). Every section rejects
unknown keys; an error names the key (``train.lr``) and what is allowed. Files given later override
earlier ones key by key (``params.yaml`` then ``config/demo.yaml``), and ``key.path=value``
overrides come last. Numbers must be finite, and ``decode.popos`` takes exactly the keyword options of
the ``popos`` decoder, typed from its signature; the decoder options, the sweeps' values and the heatmap
sizes are also tried out at load time (on a tiny map, and against the model's stride rules), so that a
setting no job could run is an error here, never halfway through a workflow.

The merge and the dot-list overrides are twenty lines of our own rather than OmegaConf: pydantic already
types and validates every key, and a second config library would add interpolation syntax we do not want.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from popos.choices import DECODER_KNOBS, DatasetName, HeatmapSize, Loss
from popos.decoders import METHODS, VARIANTS
from popos.errors import UserError

#: the decoder variants of popos.decoders.VARIANTS
DecoderName = Literal[tuple(VARIANTS)]  # type: ignore[valid-type]
#: every seed feeds numpy's legacy generator, which takes 0 <= seed < 2**32
SEED_MAX = 2**32 - 1


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, numbers are finite, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def decoder_options_model(method: str) -> type[Section]:
    """A params section typed from a decoder's keyword-only arguments (their names, type hints, defaults).

    It follows the decoder: an option added, renamed or retyped there is one here. ``sigma`` is left out
    (``decode.sigma`` sets it for every decoder). Values are checked strictly (no ``"3"`` for ``3``, no
    ``True`` for ``1``); dumping keeps only the options given (and not ``None``), so ``model_dump()`` is
    the keyword arguments to pass, and an empty section dumps as ``{}``.
    """
    fn = METHODS[method]
    hints = get_type_hints(fn)
    fields = {
        name: (hints[name], Field(default=p.default))
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name != "sigma"
    }

    class Options(Section):
        model_config = ConfigDict(strict=True)

        @model_serializer(mode="wrap")
        def _given_only(self, handler):
            return {k: v for k, v in handler(self).items() if k in self.model_fields_set and v is not None}

    return create_model(f"{method.capitalize()}Options", __base__=Options,
                        __doc__=f"Options of the {method!r} decoder (its keyword arguments).", **fields)


PoposOptions = decoder_options_model("popos")


class GridSection(Section):
    """The experiment grid the workflow runs: dataset x heatmap size x loss (x every decoder)."""

    datasets: list[DatasetName] = Field(
        default=["wflw", "300w", "cofw", "aflw", "cocowb_face"], min_length=1, description="dataset names"
    )
    heatmap_sizes: list[HeatmapSize] = Field(
        default=[64, 32, 16, 8, 4], min_length=1, description="heatmap side in pixels"
    )
    losses: list[Loss] = Field(default=["mse", "mse_ma"], min_length=1, description="training losses")
    results_dir: str = Field(default="results", description="root of every workflow output (dvc.yaml assumes results)")

    @field_validator("datasets", "heatmap_sizes", "losses")
    @classmethod
    def _unique(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate entries in {value}")
        return value


class DataSection(Section):
    """Where raw and prepared data live and how face crops are cached."""

    raw_dir: str = Field(default="data/raw", description="downloaded / user-supplied raw datasets")
    prepared_dir: str = Field(default="data/prepared", description="prepared splits (annotations + crop cache)")
    crop_size: int = Field(default=384, gt=0, description="side of the cached face crops, px")
    padding: float = Field(default=1.25, gt=0, le=10, description="face box padding of the network input "
                           "(at most 10: beyond, the face spans a few input px)")
    pretrained_dir: str = Field(default="data/pretrained", description="where `popos model fetch-pretrained` puts the "
                                "ImageNet backbone that model.pretrained: imagenet loads")


class SynthSection(Section):
    """The embedded synthetic face dataset (``popos data synth``; see popos.data.synth)."""

    n_train: int = Field(default=2000, ge=1, description="training faces")
    n_test: int = Field(default=400, ge=1, description="test faces")
    seed: int = Field(default=0, ge=0, le=SEED_MAX,
                      description="face i of a split is the same for a given seed, whatever the sizes")


def _for_dataset(section: Section, dataset: str) -> Section:
    """``section`` with its ``per_dataset[dataset]`` overrides applied, validated (errors name the dataset)."""
    override = section.per_dataset.get(dataset, {})
    if not override:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **override, "per_dataset": {}})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"per_dataset.{dataset}{'.' + where if where else ''}: "
                         f"{err['msg'].removeprefix('Value error, ')}") from None


def _check_per_dataset(section: Section) -> None:
    for dataset, override in section.per_dataset.items():
        if "per_dataset" in override:
            raise ValueError(f"per_dataset.{dataset}: per_dataset cannot nest")
        section.for_dataset(dataset)


class AugmentSection(Section):
    """Training-time augmentation (paper section 4.2, the mmpose settings of KeyPosS/POPoS); one affine warp."""

    flip_prob: float = Field(default=0.5, ge=0, le=1, description="probability of a horizontal flip")
    rotation_prob: float = Field(default=0.6, ge=0, le=1, description="probability of a rotation")
    rotation_std: float = Field(default=30.0, ge=0, description="rotation ~ N(0, std), degrees")
    rotation_max: float = Field(default=60.0, ge=0, description="rotation clipped to +-max, degrees")
    scale_std: float = Field(default=0.25, ge=0, description="crop side x clip(1 + N(0, std), min, max)")
    scale_min: float = Field(default=0.75, gt=0, description="smallest crop-side factor (> 1 zooms out)")
    scale_max: float = Field(default=1.25, gt=0, description="largest crop-side factor")
    translate: float = Field(default=0.0, ge=0, description="max shift as a fraction of the input size")
    translate_prob: float = Field(default=1.0, ge=0, le=1, description="probability of the shift (the authors' "
                                  "COCO-WholeBody box-centre shift: translate 0.16, probability 0.3)")
    color_jitter: float = Field(default=0.0, ge=0, le=1,
                                description="max relative change of brightness, contrast and saturation")
    per_dataset: dict[DatasetName, dict[str, Any]] = Field(
        default_factory=dict, description="augment.* overrides per dataset, e.g. {cocowb_face: {translate: 0.16}}")
    for_dataset = _for_dataset

    @model_validator(mode="after")
    def _scale_range(self) -> AugmentSection:
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) must not exceed scale_max ({self.scale_max})")
        _check_per_dataset(self)
        return self


class ModelSection(Section):
    """The lightweight HRNet; the field names are ``popos.models.build_model``'s keywords.

    Defaults are the paper's HRNetV2-W18; smaller ``width``/``stem_width``/``*blocks``/``num_modules``
    give slim models for CPU demos (see README, "Model").
    """

    width: int = Field(default=18, gt=0, description="channels of the highest-resolution branch (18 = HRNetV2-W18)")
    input_size: int = Field(default=256, gt=0, description="network input side, px; input_size / heatmap size must "
                            "be a stride of popos.models.ARCHITECTURES (2, 4, 8, 16, 32, 64)")
    pretrained: str | None = Field(
        default="imagenet", description="'imagenet' (the pinned ImageNet-1k HRNet-W18 of popos.pretrained, fetched "
        "once by `popos model fetch-pretrained`), a local weights file (mmpose, official or timm naming), or null "
        "(from scratch)")
    stem_width: int = Field(default=64, gt=0, description="channels of the stem convs and stage-1 bottlenecks (x4 out)")
    stage1_blocks: int = Field(default=4, gt=0, description="Bottleneck blocks of stage 1")
    num_blocks: int = Field(default=4, gt=0, description="Basic blocks per branch in every module of stages 2-4")
    num_modules: tuple[int, int, int] = Field(default=(1, 4, 3), description="HRNet modules in stages 2, 3, 4")

    @field_validator("num_modules")
    @classmethod
    def _positive_modules(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"every stage needs at least one module, got {list(value)}")
        return value


class TrainSection(Section):
    """Training (paper section 4.2: Adam, lr 2e-3 decaying to 1e-5)."""

    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=32, ge=1, description="global batch, split over the processes under torchrun")
    lr: float = Field(default=2e-3, gt=0, le=1, description="initial Adam learning rate")
    lr_min: float = Field(default=1e-5, ge=0, description="final lr; linear per-step decay from lr, <= lr")
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="model init, shuffling and augmentation")
    sigma: float = Field(default=2.0, gt=0, le=64, description="target Gaussian sigma, heatmap px (at most the "
                         "largest heatmap side)")
    ma_weight: float = Field(default=6.0, ge=0, description="w in L = L_MSE + w * L_MA (paper's best: 6)")
    ma_k: int | None = Field(default=None, ge=1, description="MA mask size; None = the decoder's K at that size")
    ma_mask: Literal["pred", "target", "union"] = Field(
        default="union",
        description="top-K mask of the MA loss: of the prediction, the target or both; 'pred' alone lets a 64 x 64 "
        "model satisfy MA with flat negative maps whose top K sit on background (NME > 100% in the demo)",
    )
    ma_anchors: Literal["authors", "ours"] = Field(
        default="authors", description="MA mask size when ma_k is None: the authors' decoder's anchors per size "
        "(30/10/20/15/10 at 64/32/16/8/4) or our decoder's window (min(9, size)^2); see popos.anchors")
    heatmap_loss: Literal["mse", "huber"] = Field(default="mse", description="heatmap term: MSE, or Huber (the "
                                                  "authors' COCO-WholeBody face loss)")
    huber_delta: float = Field(default=0.6, gt=0, description="Huber threshold, heatmap value units")
    ot_weight: float = Field(default=0.0, ge=0, description="weight of the authors' Sinkhorn term (geomloss; "
                             "popos.losses.sinkhorn_term); 0 = off, as the paper")
    schedule: Literal["linear", "step", "cosine"] = Field(
        default="linear", description="lr per step: linear lr -> lr_min (paper 4.2); step: x lr_step_factor at "
        "each of lr_steps (epochs); cosine: lr -> lr_min (the authors' configs)")
    lr_steps: list[int] = Field(default=[40, 55], description="epochs of the step schedule's decays")
    lr_step_factor: float = Field(default=0.1, gt=0, le=1, description="factor of each step decay")
    warmup_iters: int = Field(default=0, ge=0, description="linear warm-up iterations from warmup_ratio x lr")
    warmup_ratio: float = Field(default=0.001, gt=0, le=1, description="lr factor at the first warm-up iteration")
    target: Literal["unbiased", "biased"] = Field(
        default="unbiased", description="Gaussian centred on the exact point, or on the nearest pixel (integer-"
        "centred, mmpose's non-dark encoding)")
    target_weight: Literal["crop", "box"] = Field(
        default="crop", description="a landmark weighs 0 when it leaves the input crop ('crop'), or only when its "
        "whole 3-sigma box leaves the heatmap ('box', mmpose / the authors)")
    baseline_sigma: float = Field(default=1.5, gt=0, description="sigma of the mse_biased baseline models, hm px")
    val_fraction: float = Field(default=0.0, ge=0, lt=1, description="share of the training faces held out "
                                "(seeded by seed) as a validation split; needed by evaluate.checkpoint=best_val")
    save_best: Literal["none", "val", "test"] = Field(
        default="none", description="also keep best.pt, the epoch of lowest POPoS NME on the validation split "
        "('val') or on the test set ('test': the authors' save_best='NME'; tables then say so)")
    per_dataset: dict[DatasetName, dict[str, Any]] = Field(
        default_factory=dict, description="train.* overrides per dataset, e.g. {cofw: {epochs: 210}}")
    for_dataset = _for_dataset
    workers: int = Field(default=4, ge=0, description="data-loader worker processes")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(default=True, description="mixed precision on CUDA")
    eval_every: int = Field(
        default=10, ge=0, description="test NME (one_hot, popos) every N epochs and at the end; 0 = never"
    )

    @model_validator(mode="after")
    def _lr_decays(self) -> TrainSection:
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must not exceed lr ({self.lr})")
        if self.save_best != "none" and not self.eval_every:
            raise ValueError(f"save_best {self.save_best!r} needs eval_every > 0 (the epochs it compares)")
        if self.save_best == "val" and not self.val_fraction:
            raise ValueError("save_best 'val' needs val_fraction > 0 (a validation split)")
        _check_per_dataset(self)
        return self


class DecodeSection(Section):
    """Decoders and their options, as evaluation uses them."""

    methods: list[DecoderName] = Field(
        default=["one_hot", "two_hot", "dark", "keyposs", "igno", "popos_authors", "popos"],
        min_length=1,
        description="decoder variants (see popos.decoders.VARIANTS)",
    )
    sigma: float = Field(default=2.0, gt=0, le=64, description="Gaussian sigma assumed by the decoders, heatmap px "
                         "(at most the largest heatmap side)")
    popos: PoposOptions = Field(default_factory=PoposOptions,
                                description="options of our POPoS decoder (popos.decoders.popos.popos's keywords)")
    compile: bool = Field(default=False, description="decode with torch.compile'd decoders (popos.decoders.compiled) "
                          "in evaluate, predict and bench; the first batch of each size compiles")


class EvaluateSection(Section):
    """Evaluation of a trained model."""

    flip_test: bool = Field(default=True, description="also decode the mirrored face; average in input px (exact)")
    batch_size: int = Field(default=64, ge=1, description="faces per forward pass")
    fr_threshold: float = Field(default=0.1, gt=0, le=1, description="failure threshold (NME) for FR and AUC")
    save_heatmaps: bool = Field(default=False, description="keep float16 test heatmaps for decoder ablations")
    checkpoint: Literal["last", "best_val", "best_test"] = Field(
        default="last", description="weights evaluated: the last epoch, or best.pt, the epoch of lowest POPoS NME "
        "on the validation split (best_val: train.save_best val) or on the test set (best_test: train.save_best "
        "test, the authors' choice; its tables are marked 'checkpoint selected on the test set')")


class OracleSection(Section):
    """Decoding study without a model."""

    heatmap_sizes: list[HeatmapSize] = Field(default=[64, 32, 16, 8, 4])
    conditions: list[
        Literal[
            "clean", "noise", "amp07", "ampnoise", "flip", "flipcoord", "flipshift",
            "wide", "narrow", "elongated", "second", "offset",
        ]
    ] = Field(
        default=["clean", "noise", "amp07", "ampnoise", "flip", "flipcoord", "flipshift",
                 "wide", "narrow", "elongated", "second", "offset"],
        description="map perturbations (popos.oracle): perfect, +N(0,0.05), peak x0.7, peak x U(0.6,1) + "
        "N(0,0.02), flip test averaging maps (exact mirror), flip test averaging decoded points (as evaluate), "
        "mmpose's flip test (whole-column shift, +0.5 px bias in x; upstream's flip_center); peaks 1.3 and "
        "0.75 sigma wide, elongated up to 2:1 and rotated, a half-height second peak 3 sigma away, a -0.05 "
        "baseline + N(0,0.02)",
    )  # fmt: skip
    points: Literal["center", "full"] = Field(
        default="center",
        description="random ground truth uniform over the central [s/8, 7s/8]^2 of the s-px input (as upstream) "
        "or over all of it",
    )
    num_images: int = Field(default=32, ge=1, description="images (or faces drawn from --dataset-dir)")
    num_landmarks: int = Field(default=98, ge=1, description="landmarks per random image")
    seed: int = Field(default=0, ge=0, le=SEED_MAX)


class BenchSection(Section):
    """Decoder speed benchmark."""

    heatmap_sizes: list[HeatmapSize] = Field(default=[64, 32, 16, 8, 4])
    batch: int = Field(default=32, ge=1, description="faces per batch")
    num_landmarks: int = Field(default=98, ge=1)
    warmup: int = Field(default=3, ge=0)
    repeats: int = Field(default=10, ge=1, description="timed calls per decoder and size; the median is reported")
    devices: list[Literal["cpu", "cuda"]] = Field(default=["cpu"])
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="seed of the benchmark heatmaps")


class SweepsSection(Section):
    """Ablations of Figure 5 on one dataset x heatmap size: decoder knobs on saved heatmaps, MA weight by training."""

    dataset: DatasetName = Field(default="300w", description="dataset of every sweep (the paper: 300W)")
    heatmap_size: HeatmapSize = Field(default=32, description="heatmap side of every sweep (the paper: 32)")
    loss: Loss = Field(default="mse_ma", description="loss of the model whose saved heatmaps the decoder sweeps decode")
    method: Literal["popos_authors"] = Field(
        default="popos_authors",
        description="the decoder swept: the authors' POPoS, as their Figure 5 (ours has no grid, anchors or region)",
    )
    region: list[float] = Field(
        default=[0.5, 1, 1.5, 2, 3, 4, 6, 8], min_length=1, description="POPoS search region side, heatmap px"
    )
    samples_per_pixel: list[float] = Field(
        default=[1, 2, 4, 6, 8, 10, 12, 16, 20], min_length=1, description="POPoS candidates per heatmap px (tau)"
    )
    anchors: list[int] = Field(
        default=[4, 5, 10, 15, 20, 25, 30, 40, 50], min_length=1, description="POPoS anchors K (top-K responses)"
    )
    ma_weight: list[float] = Field(
        default=[0, 1, 2, 4, 6, 8, 10], min_length=1, description="w in L_MSE + w * L_MA; one model per value"
    )

    @field_validator("samples_per_pixel", "anchors")
    @classmethod
    def _positive(cls, value: list) -> list:
        if any(v <= 0 for v in value):
            raise ValueError(f"every value must be > 0, got {value}")
        return value

    @field_validator("region", "ma_weight")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError(f"every value must be >= 0, got {value}")
        return value


class ReportSection(Section):
    """The generated report."""

    title: str = "popos: facial landmark decoding at 64 to 4 pixel heatmaps"
    main_loss: Loss = Field(
        default="mse_ma", description="loss of the models in Table 1, the radar plots, CED curves and Figure 6"
    )
    overlay_faces: int = Field(default=4, ge=1, description="test faces drawn in Figure 6")
    overlay_sizes: list[HeatmapSize] = Field(default=[8, 4], min_length=1, description="heatmap sizes of Figure 6")
    reproduced_within: float = Field(
        default=0.1, gt=0, description="the headline calls a paper NME reproduced within this fraction of it"
    )


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

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        problems = []
        if self.report.main_loss not in self.grid.losses:
            problems.append(f"report.main_loss {self.report.main_loss!r} is not in grid.losses {self.grid.losses}")
        missing = sorted(set(self.report.overlay_sizes) - set(self.grid.heatmap_sizes))
        if missing:
            problems.append(f"report.overlay_sizes {missing} are not in grid.heatmap_sizes {self.grid.heatmap_sizes}")
        for needed, user in (("popos", "Table 1"), (self.sweeps.method, "sweeps.method")):
            if needed not in self.decode.methods:
                problems.append(f"decode.methods {self.decode.methods} lacks {needed!r} ({user} uses it)")
        if self.evaluate.checkpoint != "last" and self.evaluate.checkpoint != f"best_{self.train.save_best}":
            problems.append(f"evaluate.checkpoint {self.evaluate.checkpoint} needs train.save_best: "
                            f"{self.evaluate.checkpoint.removeprefix('best_')}")
        too_many = [k for k in self.sweeps.anchors if k > self.sweeps.heatmap_size**2]
        if too_many:
            problems.append(f"sweeps.anchors {too_many} exceed the {self.sweeps.heatmap_size}^2 heatmap pixels")
        problems += self._model_problems() + self._decoder_problems()
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _model_problems(self) -> list[str]:
        """Heatmap sizes a model is trained at that ``model.input_size`` cannot produce (the model's stride rules)."""
        from popos.models.hrnet import architecture

        problems = []
        for key, sizes in (("grid.heatmap_sizes", self.grid.heatmap_sizes),
                           ("sweeps.heatmap_size", [self.sweeps.heatmap_size])):
            for size in sizes:
                try:
                    architecture(self.model.input_size, size)
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
        return problems

    def _decoder_problems(self) -> list[str]:
        """Decoder settings the decoders refuse, found by decoding a tiny map with each of them.

        ``decode.popos`` is tried at every heatmap size the workflow decodes; each value of the decoder
        sweeps at ``sweeps.heatmap_size``. The decoders' own checks (ranges, choices, combinations) speak.
        """
        import torch

        from popos.codec import encode_heatmaps
        from popos.decoders import decode, resolve_variants

        sigma = self.decode.sigma

        def refused(size: int, method: str, options: dict) -> str | None:
            probe = encode_heatmaps(torch.full((1, 1, 2), (size - 1) / 2), size, sigma)
            try:
                decode(probe, method, sigma=sigma, **options)
            except ValueError as exc:
                return f"{exc} (at {size} x {size})"
            return None

        problems = []
        options = self.decode.popos.model_dump()
        sizes = {*self.grid.heatmap_sizes, self.sweeps.heatmap_size, *self.oracle.heatmap_sizes,
                 *self.bench.heatmap_sizes}
        for size in sorted(sizes, reverse=True):
            if options and (why := refused(size, "popos", options)):
                return [f"decode.popos: {why}"]
        method, base = resolve_variants([self.sweeps.method], options)[self.sweeps.method]
        for knob in DECODER_KNOBS:
            for value in getattr(self.sweeps, knob):
                if why := refused(self.sweeps.heatmap_size, method, {**base, knob: value}):
                    problems.append(f"sweeps.{knob} {value:g}: {why}")
        return problems


class ParamsError(UserError, ValueError):
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


def validate_params(data: dict, source: str = "defaults") -> Params:
    """Validate a merged params mapping (as Snakemake's ``config``); ``source`` names it in errors."""
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            expected = str(err.get("ctx", {}).get("expected", ""))
            allowed = f" (allowed: {expected})" if expected and expected not in err["msg"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {key + ': ' if key else ''}{msg}{allowed}")
        text = "\n".join(lines)
        if "\n" not in text:  # one problem: one line
            raise ParamsError(f"invalid params in {source}: {text.strip()}") from None
        raise ParamsError(f"invalid params in {source}:\n{text}") from None


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
    return validate_params(merged, ", ".join(str(p) for p in paths) or "defaults")
