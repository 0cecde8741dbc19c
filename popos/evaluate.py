"""Evaluation and prediction: trained model -> test heatmaps -> every decoder -> image px -> NME, FR, AUC.

Coordinates follow popos.geometry: (x, y), pixel ``i`` centred at ``i``; heatmap px = input px / stride with
``stride = input_size / heatmap_size``; input px -> image px through the inverse of each face's
``image_to_input`` affine.

Flip test is fused in coordinate space: the mirrored input is decoded on its own, its points are mirrored
back (``x -> input_size - 1 - x``, left/right landmarks swapped with the dataset's ``flip_index``) and
averaged with the unmirrored prediction. Unlike mmpose's heatmap averaging with ``shift_heatmap`` (a +0.5
input-px bias in x, upstream.md section 3.1) this is exact: perfect heatmaps give the exact points.

Outputs of :func:`evaluate` (all written atomically): ``per_image.csv``, ``summary.csv``, ``metrics.json``,
``predictions.npz`` and, when ``evaluate.save_heatmaps``, ``heatmaps.npz`` for decoder ablations without
the model (:func:`evaluate_saved_heatmaps`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from popos.checkpoint import load_checkpoint, model_from_checkpoint
from popos.config import Params
from popos.data.dataset import LandmarkDataset, input_from_image
from popos.data.prepared import PreparedSplit
from popos.decoders import VARIANTS, decode, resolve_variants
from popos.device import resolve_device
from popos.draw import draw_landmarks
from popos.errors import UserError
from popos.geometry import apply_affine, flip_points, heatmap_to_input, invert_affine
from popos.io import atomic_path, write_csv_atomic, write_text_atomic
from popos.layout import split_dir
from popos.metrics import nme_per_image, summarize

Variants = Mapping[str, tuple[str, Mapping]]


class MissingInputError(UserError, FileNotFoundError):
    """An input file of a step is missing; the message names it and the command that makes it."""


# ---------------------------------------------------------------- inference and decoding
@torch.no_grad()
def forward_heatmaps(
    model: nn.Module, images: Tensor, *, flip: bool, amp: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Run ``model`` on ``images [B, 3, S, S]``; returns float32 heatmaps ``[B, K, h, h]`` and, if ``flip``,
    the heatmaps of the horizontally mirrored images (in the mirrored frame), else ``None``."""
    batch = torch.cat([images, images.flip(-1)]) if flip else images
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
        heatmaps = model(batch).float()
    if flip:
        return heatmaps[: len(images)], heatmaps[len(images) :]
    return heatmaps, None


def check_flip_index(flip_index: Sequence[int], num_landmarks: int) -> list[int]:
    """Validate ``flip_index`` as a left/right swap (an involutive permutation of ``num_landmarks``)."""
    idx = [int(i) for i in flip_index]
    if sorted(idx) != list(range(num_landmarks)) or any(idx[j] != i for i, j in enumerate(idx)):
        raise ValueError(f"flip_index must swap pairs among {num_landmarks} landmarks, got {idx}")
    return idx


def decode_coordinates(
    heatmaps: Tensor,
    heatmaps_flip: Tensor | None,
    variants: Variants,
    *,
    input_size: int,
    sigma: float,
    flip_index: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Decode ``[B, K, h, h]`` heatmaps with every variant -> ``{name: [B, K, 2]}`` float64 input px.

    With ``heatmaps_flip`` (the network's output on the mirrored inputs) each variant also decodes those,
    mirrors the points back with ``flip_index`` and averages them with the direct ones (exact, no bias).
    """
    if heatmaps_flip is not None and flip_index is None:
        raise ValueError("decode_coordinates: heatmaps_flip given without flip_index")
    h = heatmaps.shape[-1]
    out = {}
    for name, (method, options) in variants.items():
        direct = decode(heatmaps, method, sigma=sigma, **options).cpu().double().numpy()
        coords = heatmap_to_input(direct, input_size, h)
        if heatmaps_flip is not None:
            mirrored = decode(heatmaps_flip, method, sigma=sigma, **options).cpu().double().numpy()
            coords = (coords + flip_points(heatmap_to_input(mirrored, input_size, h), input_size, flip_index)) / 2
        out[name] = coords
    return out


def predict_split(
    model: nn.Module,
    loader,
    variants: Variants,
    *,
    input_size: int,
    sigma: float,
    flip_index: Sequence[int] | None = None,
    amp: bool = False,
    on_batch: Callable[[np.ndarray, Tensor, Tensor | None, dict], None] | None = None,
) -> dict[str, np.ndarray]:
    """Predictions ``{name: [N, K, 2]}`` float64 image px of every variant for all faces of ``loader``.

    ``loader`` yields LandmarkDataset batches (``image``, ``image_to_input``, ``index``; row ``index`` of
    the result is face ``index``). Flip test when ``flip_index`` is given. ``on_batch(index, heatmaps,
    heatmaps_flip, batch)`` sees every batch's raw heatmaps (e.g. to save them).
    """
    device = next(model.parameters()).device
    n = len(loader.dataset)
    preds: dict[str, np.ndarray] = {}
    for batch in loader:
        idx = batch["index"].numpy()
        heatmaps, heatmaps_flip = forward_heatmaps(model, batch["image"].to(device), flip=flip_index is not None,
                                                   amp=amp)
        coords = decode_coordinates(heatmaps, heatmaps_flip, variants, input_size=input_size, sigma=sigma,
                                    flip_index=flip_index)
        to_image = invert_affine(batch["image_to_input"].double().numpy())
        for name, c in coords.items():
            preds.setdefault(name, np.zeros((n, *c.shape[1:])))[idx] = apply_affine(c, to_image)
        if on_batch is not None:
            on_batch(idx, heatmaps, heatmaps_flip, batch)
    return preds


def nme_table(preds: Mapping[str, np.ndarray], gt: np.ndarray, norm: np.ndarray, visible: np.ndarray) -> pd.DataFrame:
    """Long table (index, method, nme) of per-image NME for ``{name: [N, K, 2]}`` predictions against ``gt
    [N, K, 2]`` (same units as ``norm [N]``; only ``visible [N, K]`` landmarks count)."""
    rows = []
    index = np.arange(len(gt))
    for name, pred in preds.items():
        nme = np.asarray(nme_per_image(pred, gt, norm, visible), dtype=np.float64)
        rows.append(pd.DataFrame({"index": index, "method": name, "nme": nme}))
    return pd.concat(rows, ignore_index=True)


def summarize_table(per_image: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per-image table (index, method, nme) -> one row per method: method, nme, fr, auc, threshold, n_images."""
    rows = []
    for name, group in per_image.groupby("method", sort=False):
        stats = summarize(group["nme"].to_numpy(), threshold)
        rows.append({"method": name, **{k: float(stats[k]) for k in ("nme", "fr", "auc")},
                     "threshold": threshold, "n_images": len(group)})
    return pd.DataFrame(rows, columns=["method", "nme", "fr", "auc", "threshold", "n_images"])


# ---------------------------------------------------------------- evaluate
def evaluate(
    params: Params, checkpoint: str | Path, split: str, out_dir: str | Path, device: str | None = None
) -> pd.DataFrame:
    """Evaluate a trained checkpoint on a prepared split with every decoder of ``params.decode.methods``.

    The dataset, heatmap size and model come from the checkpoint; data location, flip test, batch size,
    decoders and the FR/AUC threshold from ``params``. Writes into ``out_dir``:

    * ``per_image.csv``: index, image, method, nme (fraction of the normaliser);
    * ``summary.csv``: method, nme, fr, auc, threshold, n_images; ``metrics.json``: {method: {nme, fr, auc}};
    * ``predictions.npz``: ``[N, K, 2]`` image px per method, ``gt`` landmarks (image px), ``visible``, ``norm``;
    * ``heatmaps.npz`` (if ``evaluate.save_heatmaps``): float16 ``heatmaps [N, K, h, h]`` and, with flip
      test, ``heatmaps_flip``; ``landmarks`` (gt, input px), ``visible``, ``norm`` (image px),
      ``image_to_input [N, 2, 3]``, ``index``.

    Returns the summary table.
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    dev = resolve_device(device or params.train.device)
    amp = params.train.amp and dev.type == "cuda"
    model = model_from_checkpoint(ckpt, dev, checkpoint)
    input_size, k = cfg["model"]["input_size"], cfg["num_landmarks"]
    flip_index = check_flip_index(cfg["flip_index"], k) if params.evaluate.flip_test else None
    variants = resolve_variants(params.decode.methods, params.decode.popos.model_dump(),
                                compile=params.decode.compile)

    folder = split_dir(params, cfg["dataset"], split)
    prepared = PreparedSplit.open(folder)
    if prepared.num_landmarks != k:
        raise UserError(f"{folder}: {prepared.num_landmarks} landmarks, but the checkpoint predicts {k}")
    if len(prepared) == 0:
        raise UserError(f"{folder}: the split holds no faces, so there is nothing to evaluate; prepare it again "
                        "from a non-empty annotation list")
    dataset = LandmarkDataset(folder, input_size=input_size, train=False, augment=params.augment,
                              seed=params.train.seed)
    loader = DataLoader(dataset, batch_size=params.evaluate.batch_size, shuffle=False, num_workers=params.train.workers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out_dir, prefix=".heatmaps."))
    try:
        store = None
        if params.evaluate.save_heatmaps:
            store = _HeatmapStore(scratch, prepared, cfg["heatmap_size"], flip=flip_index is not None)
        preds = predict_split(model, loader, variants, input_size=input_size, sigma=params.decode.sigma,
                              flip_index=flip_index, amp=amp, on_batch=store.add if store is not None else None)
        per_image = nme_table(preds, prepared.landmarks, prepared.norm, prepared.visible)
        per_image.insert(1, "image", prepared.image[per_image["index"].to_numpy()])
        summary = summarize_table(per_image, params.evaluate.fr_threshold)
        if store is not None:
            store.save(out_dir / "heatmaps.npz")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    write_csv_atomic(per_image, out_dir / "per_image.csv")
    write_csv_atomic(summary, out_dir / "summary.csv")
    metrics = {r.method: {"nme": r.nme, "fr": r.fr, "auc": r.auc} for r in summary.itertuples()}
    write_text_atomic(json.dumps(metrics, indent=2) + "\n", out_dir / "metrics.json")
    with atomic_path(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **{n: p.astype(np.float32) for n, p in preds.items()}, gt=prepared.landmarks,
                 visible=prepared.visible, norm=prepared.norm)
    return summary


class _HeatmapStore:
    """float16 heatmaps written to memory-mapped scratch files as batches arrive, zipped at the end, so
    memory stays flat for large test sets (WFLW at 64 x 64 is about 2 GB per set of heatmaps)."""

    def __init__(self, scratch: Path, prepared: PreparedSplit, h: int, *, flip: bool) -> None:
        n, k = len(prepared), prepared.num_landmarks
        names = ["heatmaps", "heatmaps_flip"] if flip else ["heatmaps"]
        self.maps = {m: np.lib.format.open_memmap(scratch / f"{m}.npy", "w+", np.float16, (n, k, h, h)) for m in names}
        self.landmarks = np.zeros((n, k, 2), np.float32)
        self.image_to_input = np.zeros((n, 2, 3), np.float32)
        # the annotated visibility and normaliser, as evaluate() scores with (the dataset's ``visible`` also
        # drops points outside the input)
        self.visible, self.norm = prepared.visible, prepared.norm

    def add(self, idx: np.ndarray, heatmaps: Tensor, heatmaps_flip: Tensor | None, batch: dict) -> None:
        self.maps["heatmaps"][idx] = heatmaps.half().cpu().numpy()
        if heatmaps_flip is not None:
            self.maps["heatmaps_flip"][idx] = heatmaps_flip.half().cpu().numpy()
        self.landmarks[idx] = batch["landmarks"].numpy()
        self.image_to_input[idx] = batch["image_to_input"].numpy()

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.maps, landmarks=self.landmarks, visible=self.visible, norm=self.norm,
                     image_to_input=self.image_to_input, index=np.arange(len(self.norm)))


def evaluate_saved_heatmaps(
    npz_path: str | Path,
    variants: Variants,
    flip_index: Sequence[int] | None,
    input_size: int,
    sigma: float,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Per-image NME of each decoder variant on a ``heatmaps.npz`` written by :func:`evaluate`.

    ``variants``: ``{name: (method, options)}`` (e.g. POPoS with other sampling areas, rates, anchors);
    ``flip_index`` is needed when the file holds flip-test heatmaps (they are then fused as in
    :func:`evaluate`); ``input_size`` is the network input side (input px = heatmap px * stride);
    ``sigma`` in heatmap px. Predictions go back to image px through the stored ``image_to_input``.
    Returns a long table with columns index, method, nme (fraction of the normaliser).
    """
    path = Path(npz_path)
    if not path.is_file():
        raise MissingInputError(f"{path}: saved heatmaps not found; run `popos evaluate` with evaluate.save_heatmaps")
    with np.load(path) as z:
        missing = [key for key in ("heatmaps", "landmarks", "visible", "norm", "image_to_input") if key not in z]
        if missing:
            raise UserError(f"{path}: missing arrays {missing}")
        data = {key: z[key] for key in z.files}
    heatmaps, heatmaps_flip = data["heatmaps"], data.get("heatmaps_flip")
    if heatmaps_flip is not None:
        flip_index = check_flip_index(flip_index if flip_index is not None else [], heatmaps.shape[1])
    to_image = invert_affine(data["image_to_input"].astype(np.float64))
    gt = apply_affine(data["landmarks"].astype(np.float64), to_image)
    preds = {name: np.zeros(gt.shape) for name in variants}
    for start in range(0, len(heatmaps), batch_size):
        sl = slice(start, start + batch_size)
        flipped = None if heatmaps_flip is None else torch.from_numpy(heatmaps_flip[sl].astype(np.float32))
        coords = decode_coordinates(torch.from_numpy(heatmaps[sl].astype(np.float32)), flipped, variants,
                                    input_size=input_size, sigma=sigma, flip_index=flip_index)
        for name, c in coords.items():
            preds[name][sl] = apply_affine(c, to_image[sl])
    table = nme_table(preds, gt, data["norm"], data["visible"])
    if "index" in data:
        table["index"] = data["index"][table["index"].to_numpy()]
    return table


# ---------------------------------------------------------------- predict
def predict(
    image: str | Path,
    checkpoint: str | Path,
    box: Sequence[float] | None = None,
    out: str | Path | None = None,
    method: str = "popos",
    device: str | None = None,
    flip_test: bool = True,
    compile: bool = False,
) -> np.ndarray:
    """Landmarks ``[K, 2]`` (x, y) image px for one face of an image file.

    ``box`` is the face box ``(x, y, w, h)`` in image px, spanning pixel centres ``x .. x + w`` (default:
    the whole image, ``(0, 0, W - 1, H - 1)``), padded as in training (``data.padding`` of the checkpoint);
    ``method`` a decoder variant with its default options (``compile``: compiled, see
    :func:`popos.decoders.compiled`). With ``out`` the landmarks are drawn over the
    image and saved there (PNG, atomic).

    Raises :class:`popos.errors.UserError` for an unreadable image, a box that is not finite and positive,
    or one of which less than :data:`MIN_BOX_INSIDE` of the area lies on the image (a box wholly or mostly
    outside the image describes no face in it: its landmarks would be guesses on the black border).
    """
    if method not in VARIANTS:
        raise UserError(f"method: unknown decoder {method!r}; available: {', '.join(VARIANTS)}")
    pixels = read_image(image)
    height, width = pixels.shape[:2]
    if box is None:
        if min(height, width) < 2:
            raise UserError(f"{image}: the image is {width} x {height} px; without a box the face box is the whole "
                            "image, which needs at least 2 px a side")
        box = (0.0, 0.0, width - 1.0, height - 1.0)
    box = check_box(box, width, height)

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt, dev, checkpoint)
    input_size = cfg["model"]["input_size"]
    tensor, image_to_input = input_from_image(pixels, np.asarray(box), input_size, cfg["data"]["padding"])
    flip_index = check_flip_index(cfg["flip_index"], cfg["num_landmarks"]) if flip_test else None
    heatmaps, heatmaps_flip = forward_heatmaps(model, torch.as_tensor(tensor)[None].to(dev), flip=flip_test)
    variants = resolve_variants([method], compile=compile)
    coords = decode_coordinates(heatmaps, heatmaps_flip, variants, input_size=input_size,
                                sigma=cfg["train"]["sigma"], flip_index=flip_index)[method][0]
    points = apply_affine(coords, invert_affine(np.asarray(image_to_input, dtype=np.float64)))
    if out is not None:
        out = Path(out)
        with atomic_path(out) as tmp:
            fmt = Image.registered_extensions().get(out.suffix.lower(), "PNG")
            Image.fromarray(draw_landmarks(pixels, points)).save(tmp, format=fmt)
    return points


#: the least fraction of a face box's area that must lie on the image (pixel squares ``[-0.5, W - 0.5]``):
#: a face cut by the border is still a face of the image, a box three quarters outside it is not
MIN_BOX_INSIDE = 0.25


def check_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """``box`` ``(x, y, w, h)`` image px as four floats, or :class:`~popos.errors.UserError` when it is not
    four finite numbers with ``w, h > 0`` or less than :data:`MIN_BOX_INSIDE` of it lies on the
    ``width x height`` image.

    >>> check_box([10, 10, 20, 20], 64, 48)
    (10.0, 10.0, 20.0, 20.0)
    """
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not np.isfinite(values).all() or values[2] <= 0 or values[3] <= 0:
        raise UserError(f"box: expected four finite numbers x,y,w,h (image px) with w, h > 0, got {list(box)}")
    x, y, w, h = values
    inside_x = max(0.0, min(x + w, width - 0.5) - max(x, -0.5))
    inside_y = max(0.0, min(y + h, height - 0.5) - max(y, -0.5))
    inside = inside_x * inside_y / (w * h)
    if inside < MIN_BOX_INSIDE:
        where = "wholly outside" if inside == 0 else f"{inside:.2g} of it on"
        raise UserError(f"box {list(values)}: {where} the {width} x {height} image; a face box must have at least "
                        f"{MIN_BOX_INSIDE:g} of its area on the image")
    return values


def read_image(path: str | Path) -> np.ndarray:
    """The RGB pixels ``[H, W, 3]`` uint8 of an image file; :class:`~popos.errors.UserError` naming the file
    when it is missing, empty, truncated or not an image."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # PIL's ways to say "bad file"
        raise UserError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
