"""Face-alignment metrics: NME, failure rate, AUC and the cumulative error distribution (CED).

Conventions follow the face-alignment papers (HRNet-Facial, PIPNet, STAR): the NME of an image is the mean
over its (visible) landmarks of the point-to-point distance divided by the image's normaliser; the dataset
NME is the mean over images. FR@t is the share of images with NME > t; AUC@t integrates the CED over
``[0, t]`` on a ``1e-4`` grid with Simpson's rule and divides by ``t``. All values are fractions (multiply by
100 for percent). Inputs are NumPy arrays or torch tensors; outputs are NumPy arrays or floats.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import simpson

CED_STEP = 1e-4


def _as_numpy(value, name: str, dtype=np.float64) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, on any device
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected an array of numbers, got {type(value).__name__}") from exc


def _landmarks(value, name: str) -> np.ndarray:
    arr = _as_numpy(value, name)
    if arr.ndim != 3 or arr.shape[-1] != 2:
        raise ValueError(f"{name}: expected shape [N, K, 2], got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def interocular(gt, left: int, right: int):
    """Normaliser ``[N]``: distance between landmarks ``left`` and ``right`` of ``gt`` ``[N, K, 2]``.

    Same units as ``gt`` (usually image px). WFLW uses (60, 72), 300W and COCO-WholeBody-Face (36, 45),
    COFW (8, 9): the outer eye corners.

    >>> interocular(np.array([[[0.0, 0.0], [3.0, 4.0]]]), 0, 1).tolist()
    [5.0]
    """
    gt = _landmarks(gt, "gt")
    k = gt.shape[1]
    for name, index in (("left", left), ("right", right)):
        if not isinstance(index, (int, np.integer)) or not 0 <= index < k:
            raise ValueError(f"{name}: expected a landmark index in [0, {k}), got {index!r}")
    if left == right:
        raise ValueError(f"left and right must differ, got both {left}")
    return np.linalg.norm(gt[:, left] - gt[:, right], axis=-1)


def face_size(boxes):
    """AFLW's NME normaliser ``[N]``: the face size ``sqrt(w * h)`` of ``[N, 4]`` boxes ``(x, y, w, h)``, px.

    The AFLW-19 protocol (Zhu et al., CVPR 2016) normalises by the size of the face box of
    ``AFLWinfo_release.mat``; the reference code that reads that file computes it as ``sqrt(w * h)``
    (SAN's ``aflw_from_mat.py``, FaRL's ``NormalizeByBox``). HRNet-Facial's csv and mmpose's JSONs store it
    as ``box_size = 200 * scale``, the side of the box made square (mmpose's fixture: scale 1.81, box_size
    362); for a square box all of these agree.

    >>> face_size(np.array([[0.0, 0.0, 40.0, 90.0]])).tolist()
    [60.0]
    """
    boxes = _as_numpy(boxes, "boxes")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected shape [N, 4] (x, y, w, h), got {list(boxes.shape)}")
    return np.sqrt(boxes[:, 2] * boxes[:, 3])


def nme_per_image(pred, gt, norm, visible=None) -> np.ndarray:
    """Normalised mean error of each image: ``[N]``, a fraction of the normaliser.

    ``pred`` and ``gt`` are ``[N, K, 2]`` (x, y) in the same units as ``norm`` ``[N]`` (usually image px);
    ``visible`` ``[N, K]`` bool (default: all) restricts each image's mean to its visible landmarks.

    >>> nme_per_image(np.array([[[3.0, 4.0], [0.0, 0.0]]]), np.zeros((1, 2, 2)), np.array([10.0])).tolist()
    [0.25]
    """
    pred, gt = _landmarks(pred, "pred"), _landmarks(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred has shape {list(pred.shape)} but gt has {list(gt.shape)}; expected equal")
    n, k = gt.shape[:2]
    norm = _as_numpy(norm, "norm")
    if norm.shape != (n,):
        raise ValueError(f"norm: expected shape [{n}], got {list(norm.shape)}")
    bad = np.flatnonzero(~(np.isfinite(norm) & (norm > 0)))
    if bad.size:
        raise ValueError(f"norm: must be positive and finite; images {bad[:10].tolist()} are not")
    dist = np.linalg.norm(pred - gt, axis=-1)
    if visible is None:
        return dist.mean(axis=1) / norm
    visible = _as_numpy(visible, "visible", dtype=bool)
    if visible.shape != (n, k):
        raise ValueError(f"visible: expected shape [{n}, {k}], got {list(visible.shape)}")
    count = visible.sum(axis=1)
    empty = np.flatnonzero(count == 0)
    if empty.size:
        raise ValueError(f"visible: images {empty[:10].tolist()} have no visible landmark, so no NME")
    return (dist * visible).sum(axis=1) / count / norm


def _nmes(nme) -> np.ndarray:
    nme = _as_numpy(nme, "nme")
    if nme.ndim != 1 or nme.size == 0:
        raise ValueError(f"nme: expected a non-empty [N] array of per-image errors, got shape {list(nme.shape)}")
    if not np.isfinite(nme).all() or (nme < 0).any():
        raise ValueError("nme: expected finite, non-negative per-image errors")
    return nme


def _threshold(threshold: float) -> float:
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold: expected a positive number, got {threshold!r}")
    return float(threshold)


def failure_rate(nme, threshold: float = 0.1) -> float:
    """FR@threshold: share of images whose NME exceeds ``threshold`` (equal is not a failure).

    >>> failure_rate(np.array([0.02, 0.05, 0.08, 0.12]), 0.1)
    0.25
    """
    return float((_nmes(nme) > _threshold(threshold)).mean())


def ced_curve(nme, threshold: float = 0.1, step: float = CED_STEP) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution on ``[0, threshold]``: ``x`` (NME grid), ``y`` (share with NME <= x).

    The grid runs from 0 to ``threshold`` inclusive in steps of ``step``; both arrays have that length.
    """
    nme = np.sort(_nmes(nme))
    threshold = _threshold(threshold)
    if not np.isfinite(step) or not 0 < step <= threshold:
        raise ValueError(f"step: expected a number in (0, threshold={threshold}], got {step!r}")
    x = np.linspace(0.0, threshold, int(round(threshold / step)) + 1)
    y = np.searchsorted(nme, x, side="right") / nme.size
    return x, y


def auc(nme, threshold: float = 0.1, step: float = CED_STEP) -> float:
    """AUC@threshold: Simpson integral of the CED over ``[0, threshold]`` divided by ``threshold``, in [0, 1]."""
    x, y = ced_curve(nme, threshold, step)
    return float(simpson(y, x=x) / x[-1])


def summarize(nme, threshold: float = 0.1) -> dict[str, float]:
    """``{"nme": mean per-image NME, "fr": FR@threshold, "auc": AUC@threshold}``, all fractions.

    >>> summarize(np.array([0.02, 0.05, 0.08, 0.12]))["nme"]
    0.0675
    """
    nme = _nmes(nme)
    return {"nme": float(nme.mean()), "fr": failure_rate(nme, threshold), "auc": auc(nme, threshold)}
