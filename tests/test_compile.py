"""Decoders as graphs: the one-pass peak and its finiteness check; compiled decoders equal eager ones."""

import pytest
import torch

from popos.decoders import compiled, decode
from popos.decoders.base import peak, peak_xy
from popos.oracle import oracle_heatmaps, random_points, seeded_generator


@pytest.mark.parametrize("shape", [(7, 9), (32, 32), (48, 64)])  # one pass; in segments from 32 x 32 on
def test_peak_is_the_first_maximum_of_one_pass(shape):
    h, w = shape
    maps = torch.rand(50, h, w)
    maps[0] = 0.0  # all equal: the first pixel
    maps[1, 2, 3] = maps[1, 5, 1] = 2.0  # a tie: the first in row-major order (segments apart at 32 x 32)
    maps[2, 0, 5] = maps[2, 0, 6] = 2.0  # a tie within a segment
    x, y, value, finite = peak(maps)
    idx = maps.reshape(50, -1).argmax(-1)
    assert torch.equal(x, idx % w) and torch.equal(y, idx // w)
    assert (x[0], y[0], x[1], y[1], x[2], y[2]) == (0, 0, 3, 2, 5, 0)
    assert torch.equal(value, maps.reshape(50, -1).amax(-1)) and finite is None  # eager: raised if not finite
    xy, finite = peak_xy(maps)
    assert torch.equal(xy, torch.stack([x, y], -1).float()) and finite is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", ["one_hot", "two_hot", "dark", "keyposs", "igno", "popos_authors", "popos"])
@pytest.mark.parametrize("size", [8, 32])
def test_eager_decoders_refuse_each_kind_of_non_finite_value(method, bad, size):
    hm = torch.rand(2, 3, size, size)
    hm[1, 2, 4, 4] = bad  # -inf shows only in a minimum, NaN and +inf in the maximum
    with pytest.raises(ValueError, match="1 non-finite values"):
        decode(hm, method)


def test_huge_finite_values_are_not_called_non_finite():
    hm = torch.full((2, 3, 8, 8), 3e38)  # the check's float32 sum overflows; the count clears it
    assert torch.equal(decode(hm, "one_hot"), torch.zeros(2, 3, 2))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["one_hot", "dark"])
def test_compiled_decoders_equal_eager_ones_and_do_not_recompile_per_batch(method):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    points = random_points(6, 5, 64, "center", seeded_generator(0))
    for condition in ("clean", "ampnoise", "wide"):
        maps = oracle_heatmaps(points, condition, 16, input_size=64, sigma=2.0, generator=seeded_generator(1))
        fn = compiled(method)
        assert fn is compiled(method)  # cached
        for batch in (6, 4, 3):  # new batch sizes reuse the graph
            eager = decode(maps[:batch], method)
            assert torch.allclose(fn(maps[:batch]), eager, atol=1e-4, rtol=0)
            assert torch.allclose(decode(maps[:batch], method, compile=True), eager, atol=1e-4, rtol=0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # batch 6, then one dynamic graph
    bad = maps.clone()
    bad[0, 1, 3, 3] = float("nan")
    out = fn(bad)  # traced: no raise, NaN for that map only
    assert out[0, 1].isnan().all() and not out[0, 0].isnan().any() and not out[1:].isnan().any()


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options"), [
    ("two_hot", {}), ("keyposs", {}), ("keyposs_peak", {}),
    ("igno", {"iterations": 4}), ("igno_damped", {"iterations": 4}),  # fewer steps: a smaller graph to compile
    ("popos", {}),
])
def test_compiled_decoders_equal_eager_ones_on_every_oracle_condition(method, options):
    from popos.config import load_params

    points = random_points(2, 4, 64, "center", seeded_generator(0))
    maps = torch.cat([oracle_heatmaps(points, condition, 8, input_size=64, sigma=2.0, generator=seeded_generator(1))
                      for condition in load_params().oracle.conditions], 1)  # [2, 4 x 12 conditions, 8, 8]
    eager = decode(maps, method, **options)
    assert torch.allclose(compiled(method, **options)(maps), eager, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_compiled_decoders_keep_compiling_past_torchs_recompile_limit(monkeypatch):
    import popos.decoders

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(popos.decoders, "_COMPILED", {})
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    for method, size in (("one_hot", 8), ("two_hot", 8), ("one_hot", 5)):  # a shared function: 3 graphs > 2
        maps = torch.rand(3, 2, size, size)
        assert torch.equal(compiled(method)(maps), decode(maps, method))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3  # none fell back to eager
    assert torch._dynamo.config.recompile_limit >= popos.decoders.RECOMPILE_LIMIT


def test_the_compile_knob_reaches_the_decoders():
    from popos.config import load_params
    from popos.decoders import resolve_variants

    params = load_params(overrides=["decode.compile=true"])
    variants = resolve_variants(["one_hot", "popos"], {"iterations": 3}, compile=params.decode.compile)
    assert variants == {"one_hot": ("one_hot", {"compile": True}),
                        "popos": ("popos", {"iterations": 3, "compile": True})}
    assert not load_params().decode.compile  # eager by default
    with pytest.raises(ValueError, match="no option"):
        compiled("one_hot", window=3)  # unknown options fail at once, not at the first call


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["one_hot", "dark", "keyposs"])
def test_compiled_decoders_equal_eager_ones_on_cuda(method):
    points = random_points(64, 98, 256, "center", seeded_generator(0))
    for size in (64, 4):
        for condition in ("clean", "ampnoise", "wide", "second"):
            maps = oracle_heatmaps(points, condition, size, sigma=2.0, generator=seeded_generator(1)).cuda()
            eager = decode(maps, method)
            assert torch.allclose(compiled(method)(maps), eager, atol=1e-4, rtol=0), (size, condition)
