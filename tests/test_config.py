import inspect
from pathlib import Path

import pytest
from pydantic import ValidationError

from popos.choices import DECODER_KNOBS
from popos.config import Params, ParamsError, PoposOptions, SweepsSection, decoder_options_model, load_params
from popos.decoders import METHODS
from popos.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


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


def test_schema_defaults_are_params_yaml():
    # one set of defaults: the schema's are the paper's params.yaml, key by key
    assert Params().model_dump() == load_params(ROOT / "params.yaml").model_dump()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.sigma=.inf", r"train\.sigma: Input should be a finite number"),
        ("data.padding=.inf", r"data\.padding: Input should be a finite number"),
        ("evaluate.fr_threshold=.nan", r"evaluate\.fr_threshold: Input should be a finite number"),
        ("train.lr=1e39", r"train\.lr: Input should be less than or equal to 1"),
        ("train.seed=-1", r"train\.seed: Input should be greater than or equal to 0"),
        ("decode.sigma=-2", r"decode\.sigma: Input should be greater than 0"),
        ("decode.methods=[popos, nope]", r"decode\.methods\.1: Input should be 'one_hot'"),
        ("decode.popos.bogus=1", r"decode\.popos\.bogus: Extra inputs are not permitted"),
        ("decode.popos.window=2.5", r"decode\.popos\.window: Input should be a valid integer"),
        ("decode.popos.shape_prior=abc", r"decode\.popos\.shape_prior: Input should be a valid number"),
        ("decode.popos.window=2", r"decode\.popos: window must be an integer >= 3"),
        ("decode.popos.border_test=-1", r"decode\.popos: border_test must be a number >= 0"),
        ("sweeps.anchors=[2, 5]", r"sweeps\.anchors 2: anchors must be an integer >= 3"),
        ("model.input_size=64", r"grid\.heatmap_sizes: input_size 64 must be a multiple of 128 for heatmap_size 4"),
        ("model.input_size=96", r"grid\.heatmap_sizes: heatmap_size 64 at input_size 96: stride 1.5"),
    ],
)
def test_settings_no_job_could_run_are_refused_at_load(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(ROOT / "params.yaml", overrides=[override])


def test_params_error_is_a_user_error():
    with pytest.raises(UserError):
        load_params(overrides=["train.lrr=1"])


def test_decoder_options_follow_the_decoder_signature(monkeypatch):
    def toy(heatmaps, *, sigma: float = 2.0, alpha: float = 1.0, mode: str | None = None):  # noqa: ARG001
        return heatmaps

    monkeypatch.setitem(METHODS, "toy", toy)
    options = decoder_options_model("toy")
    assert set(options.model_fields) == {"alpha", "mode"}  # sigma is decode.sigma, for every decoder
    assert options.model_validate({"alpha": 3}).model_dump() == {"alpha": 3.0}
    assert options().model_dump() == {}  # only the options given are passed on
    for bad in ({"alpha": "x"}, {"mode": 1}, {"beta": 1}):
        with pytest.raises(ValidationError):
            options.model_validate(bad)
    # the popos decoder's section has exactly its keyword options
    popos_kwargs = {n for n, p in inspect.signature(METHODS["popos"]).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and n != "sigma"}
    assert set(PoposOptions.model_fields) == popos_kwargs
    assert load_params(overrides=["decode.popos={window: 7, iterations: 2}"]).decode.popos.model_dump() == {
        "window": 7, "iterations": 2}


def test_sweep_knobs_are_sweeps_fields_and_options_of_the_sweep_decoder():
    sweep_decoder = decoder_options_model(SweepsSection().method)
    assert set(DECODER_KNOBS) <= set(SweepsSection.model_fields) & set(sweep_decoder.model_fields)


def test_one_problem_is_one_line():
    with pytest.raises(ParamsError) as info:
        load_params(overrides=["train.sigma=.inf"])
    assert str(info.value) == "invalid params in defaults: train.sigma: Input should be a finite number"
