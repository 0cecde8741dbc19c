"""popos export: a model and its decoder as one ONNX graph, run in onnxruntime, equal to torch."""

import numpy as np
import pytest
import torch
from test_train import TINY, save_untrained_checkpoint

from popos.cli import main
from popos.config import load_params
from popos.export import landmark_graph

ort = pytest.importorskip("onnxruntime")  # the `export` extra, part of `make test`


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_untrained_checkpoint(tmp_path_factory.mktemp("export") / "tiny.pt", load_params(overrides=TINY))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["one_hot", "dark"])
def test_exported_graph_equals_torch_for_any_batch(checkpoint, tmp_path, method):
    out = tmp_path / f"{method}.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--method", method, "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    graph = landmark_graph(checkpoint, method)
    for batch in (1, 3):  # exported with 2 example images: the batch is dynamic
        size = graph.input_size
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = graph(images).numpy()
        got = session.run(["landmarks"], {"images": images.numpy()})[0]
        assert got.shape == expected.shape == (batch, graph.model(images).shape[1], 2)
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)  # input px


@pytest.mark.parametrize("method", ["popos_authors"])
def test_decoders_that_do_not_export_are_refused_in_one_line(checkpoint, tmp_path, capsys, method):
    out = tmp_path / f"{method}.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--method", method, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be exported as one graph" in err and "nonzero()" in err and "\n" not in err and not out.exists()


def test_every_decoder_variant_is_either_exportable_or_refused_with_a_reason():
    from popos.decoders import VARIANTS
    from popos.export import EXPORTABLE, NOT_EXPORTABLE

    assert sorted(EXPORTABLE + tuple(NOT_EXPORTABLE)) == sorted(VARIANTS)


@pytest.mark.slow
def test_igno_damped_exports_and_equals_torch(tmp_path):
    # no torch.hypot (no ONNX translation) in its Newton loop; the decoder alone, on oracle maps
    from popos.decoders import decode
    from popos.oracle import oracle_heatmaps, random_points, seeded_generator

    class Decoder(torch.nn.Module):
        def forward(self, maps):
            return decode(maps, "igno_damped", iterations=3)

    points = random_points(2, 5, 32, "center", seeded_generator(0))
    maps = oracle_heatmaps(points, "ampnoise", 8, input_size=32, sigma=2.0, generator=seeded_generator(1))
    torch.onnx.export(Decoder(), (maps,), dynamo=True, verbose=False).save(str(tmp_path / "d.onnx"))
    got = ort.InferenceSession(str(tmp_path / "d.onnx")).run(None, {"maps": maps.numpy()})[0]
    np.testing.assert_allclose(got, decode(maps, "igno_damped", iterations=3).numpy(), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("size", [16, 4])
def test_popos_exports_as_one_graph_and_equals_torch(tmp_path, size):
    # the decoder alone on oracle maps of every kind of peak, exported with one batch size and run with another
    # (an untrained model's near-flat maps make its fits ill-conditioned: no fair comparison there)
    from popos.decoders import decode
    from popos.oracle import oracle_heatmaps, random_points, seeded_generator

    class Decoder(torch.nn.Module):
        def forward(self, maps):
            return decode(maps, "popos")

    points = random_points(3, 40, 64, "center", seeded_generator(0))
    maps = {c: oracle_heatmaps(points, c, size, input_size=64, sigma=2.0, generator=seeded_generator(2))
            for c in ("noise", "ampnoise", "elongated", "second", "offset")}
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(Decoder(), (maps["noise"][:2],), dynamo=True, verbose=False,
                                dynamic_shapes=({0: batch},))
    program.save(str(tmp_path / "popos.onnx"))
    session = ort.InferenceSession(str(tmp_path / "popos.onnx"))
    for condition, m in maps.items():
        got = session.run(None, {session.get_inputs()[0].name: m.numpy()})[0]
        np.testing.assert_allclose(got, decode(m, "popos").numpy(), atol=1e-4, rtol=0, err_msg=condition)
