"""Export a trained model and its decoder as one ONNX graph: images -> landmarks in input px.

The graph takes ``images [B, 3, S, S]`` float32 (the normalised face crops the model is trained on, any
batch size ``B``) and returns ``landmarks [B, K, 2]`` float32 ``(x, y)`` in input px, pixel ``i`` centred
at ``i`` (heatmap px x stride). No flip test. It is traced by ``torch.onnx.export(..., dynamo=True)``
(``torch.export``), so the decoder must be a graph: no data-dependent branches. Maps holding a NaN or an
infinity give NaN landmarks there (the eager decoders raise). Needs the ``export`` extra
(``pip install popos[export]``: onnx, onnxscript; onnxruntime to run the graph).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from popos.checkpoint import load_checkpoint, model_from_checkpoint
from popos.errors import UserError
from popos.geometry import stride
from popos.io import atomic_path

#: decoders that export as one graph (``igno`` unrolls its 20 steps: slow to export)
EXPORTABLE = ("one_hot", "two_hot", "dark", "keyposs", "keyposs_peak", "igno", "igno_damped", "popos")
#: the other decoders, and why they do not export
NOT_EXPORTABLE = {
    "popos_authors": "its exact branch-and-bound search prunes candidates with nonzero() and branches on how many "
                     "remain (by design: it reproduces the authors' search bit for bit)",
}


class LandmarkGraph(nn.Module):
    """``model`` then a decoder: ``images [B, 3, S, S]`` -> ``[B, K, 2]`` float32 input px (no flip test)."""

    def __init__(self, model: nn.Module, method: str, sigma: float, input_size: int, heatmap_size: int, **options):
        super().__init__()
        from popos.decoders import decode

        decode(torch.zeros(1, 1, heatmap_size, heatmap_size), method, sigma=sigma, **options)  # checks the options
        self.model, self.method, self.sigma, self.options = model, method, sigma, options
        self.input_size, self.stride = input_size, stride(input_size, heatmap_size)

    def forward(self, images: Tensor) -> Tensor:
        from popos.decoders import decode

        return decode(self.model(images).float(), self.method, sigma=self.sigma, **self.options) * self.stride


def landmark_graph(checkpoint: str | Path, method: str, **options) -> LandmarkGraph:
    """The model of a checkpoint with decoder ``method`` (and ``options``), on the CPU, in eval mode."""
    from popos.decoders import VARIANTS

    if method not in VARIANTS:
        raise UserError(f"method: unknown decoder {method!r}; available: {', '.join(VARIANTS)}")
    state = load_checkpoint(checkpoint)
    cfg = state["config"]
    model = model_from_checkpoint(state, torch.device("cpu"), checkpoint)
    return LandmarkGraph(model, method, cfg["train"]["sigma"], cfg["model"]["input_size"], cfg["heatmap_size"],
                         **options).eval()


def export_onnx(checkpoint: str | Path, method: str, out: str | Path, **options) -> Path:
    """Write the checkpoint's model and decoder ``method`` as one ONNX graph to ``out`` (atomically).

    Input ``images`` ``[B, 3, S, S]`` float32 with a dynamic batch ``B``; output ``landmarks`` ``[B, K, 2]``
    float32 input px. Decoders outside :data:`EXPORTABLE` raise :class:`~popos.errors.UserError` saying why
    (:data:`NOT_EXPORTABLE`).
    """
    if method in NOT_EXPORTABLE:
        raise UserError(f"method: {method!r} cannot be exported as one graph: {NOT_EXPORTABLE[method]}; "
                        f"exportable: {', '.join(EXPORTABLE)}")
    if method not in EXPORTABLE:
        raise UserError(f"method: unknown decoder {method!r}; exportable: {', '.join(EXPORTABLE)}")
    try:
        import onnxscript  # noqa: F401 (torch.onnx's exporter needs it)
    except ImportError:
        raise UserError("export needs onnx and onnxscript: pip install 'popos[export]'") from None
    graph = landmark_graph(checkpoint, method, **options)
    example = torch.zeros(2, 3, graph.input_size, graph.input_size)
    batch = torch.export.Dim("batch", min=1)
    out = Path(out)
    with atomic_path(out) as tmp, torch.no_grad():
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=["images"],
                                    output_names=["landmarks"], dynamic_shapes=({0: batch},),
                                    verbose=False)
        program.save(str(tmp))
    return out
