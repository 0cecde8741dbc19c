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


def test_decoders_that_do_not_export_are_refused_in_one_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "popos_authors.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--method", "popos_authors", "--out", str(out)]) == 2
    assert "does not export as one graph" in capsys.readouterr().err and not out.exists()
