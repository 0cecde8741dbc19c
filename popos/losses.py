"""Training losses on heatmaps: the weighted MSE (or Huber) and the multilateration-anchor (MA) loss (paper Eq. 1).

All functions take ``pred`` and ``target`` heatmaps ``[B, K, H, W]`` (any H, W; values in target units,
no sigmoid) and an optional per-landmark ``weight`` ``[B, K]`` (0 for invisible landmarks, 1 otherwise;
``None`` = all ones), and return a scalar tensor.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from popos.anchors import ANCHOR_TABLES, AnchorTable
from popos.anchors import anchors as anchor_count

MaskSource = Literal["pred", "target", "union"]
MASK_SOURCES: tuple[str, ...] = ("pred", "target", "union")
HeatmapLoss = Literal["mse", "huber"]
HEATMAP_LOSSES: tuple[str, ...] = ("mse", "huber")


def _checked_weight(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Validate shapes; return ``weight`` as ``[B, K, 1, 1]`` in ``pred``'s dtype."""
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"pred and target must be tensors, got {type(pred).__name__} and {type(target).__name__}")
    if pred.dim() != 4:
        raise ValueError(f"pred must be [B, K, H, W] heatmaps, got shape {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from pred shape {tuple(pred.shape)}")
    if weight is None:
        return pred.new_ones(pred.shape[:2])[..., None, None]
    if weight.shape != pred.shape[:2]:
        raise ValueError(f"weight must be [B, K] = {tuple(pred.shape[:2])}, got shape {tuple(weight.shape)}")
    return weight.to(pred.dtype)[..., None, None]


def heatmap_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted heatmap MSE: ``mean over B, K, H, W of weight * (pred - target)^2``.

    As mmpose's ``JointsMSELoss(use_target_weight=True)``: invisible landmarks (weight 0) add zero but still
    count in the mean (mmpose 0.x squares the weight, which is the same for 0/1 weights).

    >>> heatmap_mse(torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.tensor([[1.0, 0.0]])).item()
    0.5
    """
    w = _checked_weight(pred, target, weight)
    return (w * (pred - target) ** 2).mean()


def topk_mask(heatmaps: Tensor, k: int) -> Tensor:
    """Boolean ``[..., H, W]`` mask of the ``k`` largest pixels of each ``[H, W]`` map.

    Exactly ``k`` pixels per map; ties are broken towards the lower row-major index (smaller y, then
    smaller x), so the mask is deterministic. No gradient flows through the selection.

    >>> topk_mask(torch.tensor([[1.0, 3.0], [3.0, 0.0]]), 2).tolist()
    [[False, True], [True, False]]
    """
    h, w = heatmaps.shape[-2:]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= h * w:
        raise ValueError(f"k must be an integer in [1, H*W = {h * w}], got {k!r}")
    flat = heatmaps.detach().flatten(-2)
    idx = torch.sort(flat, dim=-1, descending=True, stable=True).indices[..., :k]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.view(heatmaps.shape)


def ma_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    k: int | None = None,
    mask: MaskSource = "union",
    anchors: AnchorTable = "authors",
) -> Tensor:
    """Multilateration-anchor loss, paper Eq. 1: ``L_MA = sum over landmarks i of ||(H_i - Ĥ_i) * Mask_i||_2``.

    Per landmark, the L2 norm of ``(pred - target) * Mask`` over the ``[H, W]`` map, where ``Mask`` holds the
    top-``k`` pixels (:func:`topk_mask`) of the prediction (``"pred"``: the pixels the decoder will take as
    anchors), of the target (``"target"``) or their union (``"union"``, up to ``2k`` pixels). As Eq. 1, the
    norms are **summed** over the K landmarks of a face (times ``weight``); faces are averaged over the
    batch, as every mmpose loss. ``k`` defaults to the anchors of the decoding step at this heatmap size
    (Eq. 1's "K station anchors"), from :func:`popos.anchors.anchors`: the authors' decoder's
    (30 / 10 / 20 / 15 / 10 at 64 / 32 / 16 / 8 / 4, ``anchors="authors"``) or ours (``"ours"``,
    ``min(9, size)^2``), at most every pixel of the map. Gradients reach only masked pixels.

    >>> pred, target = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    >>> pred[0, 0, 1, 1], pred[0, 0, 0, 0] = 3.0, 4.0   # landmark 0: top-2 pixels of pred, target 0 there
    >>> pred[0, 1, 2, 2] = 1.0                          # landmark 1: one error of 1
    >>> ma_loss(pred, target, k=2).item()  # sqrt(3^2 + 4^2) + 1, summed over the landmarks
    6.0
    """
    w = _checked_weight(pred, target, weight)
    if mask not in MASK_SOURCES:
        raise ValueError(f"mask must be one of {MASK_SOURCES}, got {mask!r}")
    if k is None:
        k = min(anchor_count(pred.shape[-1], anchors), pred.shape[-2] * pred.shape[-1])
    if mask == "pred":
        m = topk_mask(pred, k)
    elif mask == "target":
        m = topk_mask(target, k)
    else:
        m = topk_mask(pred, k) | topk_mask(target, k)
    norms = torch.linalg.vector_norm((pred - target) * m, dim=(-2, -1))
    return (w[..., 0, 0] * norms).sum(dim=1).mean()


def heatmap_huber(pred: Tensor, target: Tensor, weight: Tensor | None = None, delta: float = 0.6) -> Tensor:
    """Weighted Huber loss on heatmaps, normalised as :func:`heatmap_mse` (mean over B, K, H, W).

    Per pixel ``e^2 / 2`` for ``|e| <= delta``, else ``delta (|e| - delta / 2)``: the authors' COCO-WholeBody
    face loss (mmpose ``HuberLoss(use_target_weight=True, delta=0.6)`` in teslatasy/POPoS).

    >>> heatmap_huber(torch.tensor([[[[0.5, 2.0]]]]), torch.zeros(1, 1, 1, 2), delta=1.0).item()  # (0.125 + 1.5) / 2
    0.8125
    """
    w = _checked_weight(pred, target, weight)
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    return (w * nn.functional.huber_loss(pred, target, reduction="none", delta=delta)).mean()


def sinkhorn_term(pred: Tensor, target: Tensor) -> Tensor:
    """The authors' optimal-transport term (teslatasy/POPoS ``JointsMSELoss``), mean over landmarks.

    Per landmark ``j``, the debiased Sinkhorn divergence (geomloss ``SamplesLoss("sinkhorn", p=2,
    blur=sqrt(0.1))``, cost ``|x - y|^2 / 2``) between the B predicted and the B target maps of the batch
    taken as two clouds of B points in ``R^(H W)``; no target weight. With one face it is
    ``sum over pixels of (pred - target)^2 / 2``. Needs the ``geomloss`` package (``pip install geomloss``).
    """
    try:
        from geomloss import SamplesLoss
    except ImportError:
        raise ImportError("train.ot_weight > 0 needs geomloss: pip install geomloss") from None
    _checked_weight(pred, target, None)
    b, k = pred.shape[:2]
    ot = SamplesLoss("sinkhorn", p=2, blur=0.1**0.5, backend="tensorized")
    clouds = [m.reshape(b, k, -1).transpose(0, 1).contiguous() for m in (pred, target)]  # [K, B, H W] each
    return ot(*clouds).mean()


class LandmarkLoss(nn.Module):
    """``L = L_MSE + ma_weight * L_MA`` (paper section 3.1, Eq. 1); ``ma_weight = 0`` is plain heatmap MSE.

    Normalisation of the two terms, per batch: ``L_MSE`` is the mean squared error over every pixel of every
    landmark and face (:func:`heatmap_mse`, as mmpose's ``JointsMSELoss``); ``L_MA`` sums the masked L2
    norms over the landmarks of a face and averages over faces (:func:`ma_loss`, as Eq. 1). ``ma_weight``
    is therefore the paper's ``w`` (its best: 6, Figure 5d). ``heatmap="huber"`` replaces the MSE term by
    :func:`heatmap_huber` (``huber_delta``), the authors' COCO-WholeBody loss; ``ot_weight > 0`` adds their
    Sinkhorn term (:func:`sinkhorn_term`, reported as ``parts["ot"]``).

    ``forward(pred, target, weight)`` returns ``(total, parts)`` with ``parts = {"mse", "ma"}`` detached for
    logging (``"mse"`` is the heatmap term, Huber included). The MA term is computed for logging even when
    ``ma_weight`` is 0 (without gradient), so MSE- and MA-trained runs can be compared on it.
    ``ma_k`` / ``ma_mask`` / ``ma_anchors`` are :func:`ma_loss`'s ``k`` / ``mask`` / ``anchors``.
    """

    def __init__(
        self,
        ma_weight: float = 0.0,
        ma_k: int | None = None,
        ma_mask: MaskSource = "union",
        ma_anchors: AnchorTable = "authors",
        heatmap: HeatmapLoss = "mse",
        huber_delta: float = 0.6,
        ot_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if ma_weight < 0:
            raise ValueError(f"ma_weight must be >= 0, got {ma_weight}")
        if ma_mask not in MASK_SOURCES:
            raise ValueError(f"ma_mask must be one of {MASK_SOURCES}, got {ma_mask!r}")
        if ma_anchors not in ANCHOR_TABLES:
            raise ValueError(f"ma_anchors must be one of {ANCHOR_TABLES}, got {ma_anchors!r}")
        if ot_weight < 0:
            raise ValueError(f"ot_weight must be >= 0, got {ot_weight}")
        if heatmap not in HEATMAP_LOSSES:
            raise ValueError(f"heatmap must be one of {HEATMAP_LOSSES}, got {heatmap!r}")
        self.ma_weight = float(ma_weight)
        self.ma_k = ma_k
        self.ma_mask = ma_mask
        self.ma_anchors = ma_anchors
        self.heatmap = heatmap
        self.huber_delta = float(huber_delta)
        self.ot_weight = float(ot_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``pred``, ``target`` ``[B, K, H, W]``, ``weight`` ``[B, K]`` -> (scalar loss, ``{"mse", "ma"}``)."""
        if self.heatmap == "huber":
            mse = heatmap_huber(pred, target, weight, self.huber_delta)
        else:
            mse = heatmap_mse(pred, target, weight)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.ma_weight > 0):
            ma = ma_loss(pred, target, weight, k=self.ma_k, mask=self.ma_mask, anchors=self.ma_anchors)
        total = mse + self.ma_weight * ma if self.ma_weight > 0 else mse
        parts = {"mse": mse.detach(), "ma": ma.detach()}
        if self.ot_weight > 0:
            ot = sinkhorn_term(pred, target)
            total = total + self.ot_weight * ot
            parts["ot"] = ot.detach()
        return total, parts

    def extra_repr(self) -> str:
        return (f"ma_weight={self.ma_weight}, ma_k={self.ma_k}, ma_mask={self.ma_mask!r}, "
                f"ma_anchors={self.ma_anchors!r}, heatmap={self.heatmap!r}, huber_delta={self.huber_delta}, "
                f"ot_weight={self.ot_weight}")
