"""Training: one model per dataset x heatmap size x loss (paper section 4.2: Adam, lr 2e-3 -> 1e-5).

Targets are unbiased Gaussians (sigma in heatmap px) centred at ``landmarks / stride``, with
``stride = input_size / heatmap_size``; landmarks are (x, y) input px, pixel ``i`` centred at ``i``. The
loss is heatmap MSE (``mse``), MSE + ``train.ma_weight`` x MA (``mse_ma``, paper Eq. 1), or MSE on
integer-centred Gaussians of ``train.baseline_sigma`` (``mse_biased``: the models behind the authors'
one-hot / two-hot rows). The learning rate follows ``train.schedule`` per step (:func:`lr_factor`; the
paper: linear from ``train.lr`` to ``train.lr_min``). ``train.per_dataset`` overrides apply first.
``model.pretrained`` initialises the backbone (:mod:`popos.pretrained`); the counts loaded are logged
and stored in the run's configuration.

Runs on CPU or CUDA (mixed precision with ``train.amp``), and on several processes when started with
``torchrun`` (DistributedDataParallel; NCCL on CUDA, gloo on CPU; ``train.batch_size`` is the global batch,
split over the processes). Each epoch ends with an atomic ``checkpoint.pt`` (:mod:`popos.checkpoint`: model,
optimizer, scheduler, scaler, RNG states, config, history and their checksum), ``train_log.csv`` and
dvclive metrics under ``dvclive/`` (when dvclive, of the ``pipeline`` extra, is installed). ``resume=True``
continues from the checkpoint; on CPU in one process the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import random
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from popos.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from popos.choices import LOSSES
from popos.codec import encode_heatmaps
from popos.config import Params
from popos.data.dataset import LandmarkDataset
from popos.data.prepared import PreparedSplit
from popos.data.registry import get_dataset
from popos.device import resolve_device
from popos.errors import UserError
from popos.geometry import stride
from popos.io import atomic_path
from popos.layout import split_dir
from popos.losses import LandmarkLoss
from popos.models import build_model
from popos.pretrained import load_backbone
from popos.pretrained import summary as pretrained_summary

# Where and how a run executes, not what it computes: these may change between a run and its resume.
RESUME_FREE_KEYS = frozenset({"train.workers", "train.device", "data.raw_dir", "data.prepared_dir"})
QUICK_DECODERS = ("one_hot", "popos")


class NonFiniteLossError(UserError, ValueError):
    """The training loss became NaN or infinite; the last checkpoint is left untouched."""


def run_config(params: Params, dataset: str, heatmap_size: int, loss: str) -> dict:
    """Everything that defines a training run, as plain data (stored in the checkpoint, checked on resume)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    spec = get_dataset(dataset)
    params = for_dataset(params, dataset)
    return {
        "dataset": dataset,
        "heatmap_size": int(heatmap_size),
        "loss": loss,
        "num_landmarks": int(spec.num_landmarks),
        "flip_index": [int(i) for i in spec.flip_index],
        **{name: getattr(params, name).model_dump(mode="json") for name in ("train", "model", "augment", "data")},
    }


def for_dataset(params: Params, dataset: str) -> Params:
    """``params`` with the ``per_dataset[dataset]`` overrides of its train and augment sections applied."""
    return params.model_copy(update={name: getattr(params, name).for_dataset(dataset) for name in ("train", "augment")})


def make_targets(
    landmarks: Tensor,
    visible: Tensor,
    *,
    input_size: int,
    heatmap_size: int,
    sigma: float,
    unbiased: bool = True,
    annotated: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Heatmap targets for ``landmarks [B, K, 2]`` (x, y) input px and ``visible [B, K]``.

    Returns ``target [B, K, h, h]`` (Gaussians of ``sigma`` heatmap px at ``landmarks / stride``, on the exact
    point or, ``unbiased=False``, on the nearest pixel) and ``weight [B, K]`` float: 1 for ``visible``
    landmarks (LandmarkDataset marks those off the input invisible). Given ``annotated [B, K]`` (visible
    whether inside the input or not), the weight is instead 0 only when the landmark is not annotated or its
    whole 3-sigma box ``[round(c) - 3 sigma, round(c) + 3 sigma]`` lies off the heatmap, as mmpose (the authors).
    """
    centres = landmarks.float() / stride(input_size, heatmap_size)
    target = encode_heatmaps(centres, heatmap_size, sigma, unbiased=unbiased)
    if annotated is None:
        return target, visible.float()
    mu = torch.floor(centres + 0.5)
    box_on_map = ((mu + 3 * sigma >= 0) & (mu - 3 * sigma <= heatmap_size - 1)).all(dim=-1)
    return target, (annotated.bool() & box_on_map).float()


def target_settings(params: Params, loss: str, heatmap_size: int) -> dict:
    """Keywords of :func:`make_targets` for ``loss`` (already per dataset): sigma, encoding, weight rule."""
    tp = params.train
    return {"input_size": params.model.input_size, "heatmap_size": heatmap_size,
            "sigma": tp.baseline_sigma if loss == "mse_biased" else tp.sigma,
            "unbiased": loss != "mse_biased" and tp.target == "unbiased", "box_weight": tp.target_weight == "box"}


def lr_factor(step: int, steps_per_epoch: int, tp) -> float:
    """Learning-rate factor (x ``tp.lr``) after ``step`` optimiser steps, for ``train.schedule``.

    ``linear``: 1 -> ``lr_min / lr`` over all steps (paper 4.2); ``step``: x ``lr_step_factor`` at each epoch
    of ``lr_steps``; ``cosine``: half a cosine from 1 to ``lr_min / lr`` (the authors' configs). A linear
    warm-up from ``warmup_ratio`` over the first ``warmup_iters`` steps multiplies any of them (mmcv's).

    >>> from popos.config import TrainSection
    >>> tp = TrainSection(epochs=60, schedule="step", lr_steps=[40, 55], warmup_iters=0)
    >>> [round(lr_factor(e * 10, 10, tp), 4) for e in (0, 39, 40, 55)]
    [1.0, 1.0, 0.1, 0.01]
    """
    total = max(1, tp.epochs * steps_per_epoch - 1)
    end = tp.lr_min / tp.lr
    if tp.schedule == "linear":
        factor = 1 + (end - 1) * min(step, total) / total
    elif tp.schedule == "step":
        factor = tp.lr_step_factor ** sum(step >= e * steps_per_epoch for e in tp.lr_steps)
    else:
        factor = end + (1 - end) * (1 + math.cos(math.pi * min(step, total) / total)) / 2
    if step < tp.warmup_iters:
        factor *= 1 - (1 - step / tp.warmup_iters) * (1 - tp.warmup_ratio)
    return factor


def build_loss(params: Params, loss: str) -> nn.Module:
    """The training criterion: ``mse`` / ``mse_biased`` (MA weight 0) or ``mse_ma`` (``train.ma_weight``)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    tp = params.train
    return LandmarkLoss(ma_weight=tp.ma_weight if loss == "mse_ma" else 0.0, ma_k=tp.ma_k, ma_mask=tp.ma_mask,
                        ma_anchors=tp.ma_anchors, heatmap=tp.heatmap_loss, huber_delta=tp.huber_delta,
                        ot_weight=tp.ot_weight)


def train(
    params: Params,
    dataset: str,
    heatmap_size: int,
    loss: str,
    out_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
) -> list[dict]:
    """Train one model and return the per-epoch history (epoch, loss, lr, images_per_s, nme_<decoder>, ...).

    Reads the prepared ``train`` split of ``dataset`` (and its ``test`` split for the per-epoch NME of the
    one_hot and popos decoders, every ``train.eval_every`` epochs) under ``params.data.prepared_dir``.
    Writes ``out_dir/checkpoint.pt``, ``out_dir/train_log.csv`` and ``out_dir/dvclive/``. With ``resume``
    the run continues from ``out_dir/checkpoint.pt`` (a fresh run starts when there is none); a
    checkpoint of another configuration is refused with the differing keys. A NaN/inf loss raises
    :class:`NonFiniteLossError` naming epoch and step, leaving the previous checkpoint in place.
    ``device`` ('auto', 'cpu', 'cuda') overrides ``train.device``.
    """
    cfg = run_config(params, dataset, heatmap_size, loss)
    params = for_dataset(params, dataset)
    dev = resolve_device(device or params.train.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if params.train.batch_size % world:
        raise UserError(f"train.batch_size ({params.train.batch_size}) must be divisible by the {world} processes")
    if world > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        return _train(params, cfg, Path(out_dir), resume, dev, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(params: Params, cfg: dict, out_dir: Path, resume: bool, dev: torch.device, world: int) -> list[dict]:
    tp, rank = params.train, dist.get_rank() if world > 1 else 0
    amp = tp.amp and dev.type == "cuda"
    input_size, heatmap_size = params.model.input_size, cfg["heatmap_size"]
    _seed_all(tp.seed)
    model = build_model(cfg["num_landmarks"], heatmap_size, **{**params.model.model_dump(), "pretrained": None})
    if params.model.pretrained is not None:
        cfg["pretrained_loaded"] = load_backbone(model, params.model.pretrained, params.data.pretrained_dir)
        if rank == 0:
            print(f"popos train: {pretrained_summary(cfg['pretrained_loaded'])}")
    model = model.to(dev)
    loss_fn = build_loss(params, cfg["loss"])
    full_train = LandmarkDataset(split_dir(params, cfg["dataset"], "train"), input_size=input_size, train=True,
                                 augment=params.augment, seed=tp.seed)
    train_idx, val_idx = validation_split(len(full_train), tp.val_fraction, tp.seed)
    train_set = Subset(full_train, train_idx.tolist()) if len(val_idx) else full_train
    if len(train_set) < world:
        raise ValueError(f"{train_set.split_dir}: {len(train_set)} training faces, fewer than the {world} processes")
    # One sampler for one or many processes: its shuffle depends only on (seed, epoch), which resume needs.
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=tp.seed)
    loader = DataLoader(train_set, batch_size=tp.batch_size // world, sampler=sampler, num_workers=tp.workers,
                        pin_memory=dev.type == "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=tp.lr)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, tp))
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)

    ckpt_path = out_dir / "checkpoint.pt"
    history: list[dict] = []
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        check_same_config(ckpt["config"], cfg, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty when saved without mixed precision
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        history = list(ckpt["history"])
    elif resume and rank == 0:
        print(f"popos train: no checkpoint in {out_dir}; starting from scratch")
    start = len(history)

    net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) if world > 1 else model
    monitored = {}  # split name -> (faces, their prepared split, the faces' rows in it)
    if rank == 0 and tp.eval_every:
        test_dir = split_dir(params, cfg["dataset"], "test")
        test_set = LandmarkDataset(test_dir, input_size=input_size, train=False, augment=params.augment, seed=tp.seed)
        monitored["test"] = (test_set, test_dir, np.arange(len(test_set)))
        if len(val_idx):
            val_set = LandmarkDataset(full_train.split_dir, input_size=input_size, train=False,
                                      augment=params.augment, seed=tp.seed)
            monitored["val"] = (_Rows(val_set, val_idx), full_train.split_dir, val_idx)
    live = _live(out_dir / "dvclive", resume=start > 0) if rank == 0 else None
    if live is not None and start == 0:
        live.log_params(cfg)
    for epoch in range(start, tp.epochs):
        sampler.set_epoch(epoch)
        full_train.set_epoch(epoch)
        row = _train_epoch(net, loader, loss_fn, optimizer, scheduler, scaler, dev=dev, amp=amp, epoch=epoch,
                           epochs=tp.epochs, world=world, rank=rank, ckpt_path=ckpt_path,
                           targets=target_settings(params, cfg["loss"], heatmap_size))
        if rank != 0:
            continue
        if monitored and ((epoch + 1) % tp.eval_every == 0 or epoch + 1 == tp.epochs):
            for split, (faces, folder, rows) in monitored.items():
                prefix = "nme" if split == "test" else f"{split}_nme"
                row.update({k.replace("nme", prefix, 1): v
                            for k, v in _quick_nme(model, faces, folder, rows, params, amp).items()})
        history.append(row)
        ckpt = {"config": cfg, "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                "history": history}
        _record_epoch(out_dir, ckpt, live)
        if is_best_epoch(history, tp.save_best):
            save_checkpoint({**ckpt, "selected_on": tp.save_best, "selected_by": BEST_METRIC[tp.save_best]},
                            out_dir / "best.pt")
    if live is not None:
        live.end()
    if world > 1:
        dist.barrier()  # every process leaves only once rank 0 has written the last checkpoint
    return history


def _record_epoch(out_dir: Path, ckpt: dict, live) -> None:
    """Write the epoch's checkpoint and log (each atomically), then its dvclive metrics."""
    save_checkpoint(ckpt, out_dir / "checkpoint.pt")
    with atomic_path(out_dir / "train_log.csv") as tmp:
        pd.DataFrame(ckpt["history"]).to_csv(tmp, index=False)
    if live is not None:
        row = ckpt["history"][-1]
        live.step = row["epoch"] - 1
        for key, value in row.items():
            if key != "epoch":
                live.log_metric(key if key.startswith("nme") else f"train/{key}", value)
        live.next_step()


def _live(folder: Path, *, resume: bool):
    """A dvclive logger for ``folder``, or ``None`` (with a warning) when dvclive is not installed."""
    try:
        from dvclive import Live
    except ImportError:
        warnings.warn("dvclive is not installed (pip install 'popos[pipeline]'): metrics go to train_log.csv only",
                      stacklevel=3)
        return None
    return Live(dir=str(folder), resume=resume, dvcyaml=False, save_dvc_exp=False)


def _train_epoch(net, loader, loss_fn, optimizer, scheduler, scaler, *, dev, amp, epoch, epochs, world, rank,
                 ckpt_path, targets) -> dict:
    """One pass over ``loader``; returns the epoch's mean losses, final lr and throughput."""
    net.train()
    loss_sum, parts_sum, images = 0.0, {}, 0
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=rank != 0, leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar, 1):
        total, parts = _batch_loss(net, batch, loss_fn, dev=dev, amp=amp, targets=targets)
        value = total.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        value = float(value)
        if not math.isfinite(value):
            kept = f"{ckpt_path} (epoch {epoch}) is kept" if epoch else f"no checkpoint was written to {ckpt_path}"
            raise NonFiniteLossError(f"training loss is {value} at epoch {epoch + 1}, step {step}; stopped, {kept}")
        _optimise(total, optimizer, scaler)
        scheduler.step()
        loss_sum += value
        for key, part in parts.items():
            parts_sum[key] = parts_sum.get(key, 0.0) + part.detach()
        images += len(batch["image"]) * world
        bar.set_postfix(loss=f"{value:.3g}")
    seconds = time.perf_counter() - t0
    steps = max(1, len(loader))
    return {"epoch": epoch + 1, "loss": loss_sum / steps, **{k: float(v) / steps for k, v in parts_sum.items()},
            "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": images / seconds}


def _batch_loss(net: nn.Module, batch: dict, loss_fn: nn.Module, *, dev, amp: bool, targets: dict):
    images = batch["image"].to(dev, non_blocking=True)
    settings = {k: v for k, v in targets.items() if k != "box_weight"}
    annotated = batch["annotated"].to(dev) if targets.get("box_weight") else None
    target, weight = make_targets(batch["landmarks"].to(dev), batch["visible"].to(dev), annotated=annotated,
                                  **settings)
    with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
        pred = net(images)
    return loss_fn(pred.float(), target, weight)


def _optimise(total: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training faces ``0..n-1`` -> (train rows, validation rows), sorted; ``round(fraction * n)`` faces (at
    least 1 when ``fraction > 0``) drawn with ``seed``, so a run and its resume hold out the same faces.

    >>> [r.tolist() for r in validation_split(5, 0.4, seed=0)]
    [[0, 1, 3], [2, 4]]
    """
    if not fraction:
        return np.arange(n), np.arange(0)
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise UserError(f"train.val_fraction {fraction} leaves no training faces of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


#: the per-epoch NME column that picks best.pt for train.save_best
BEST_METRIC = {"val": "val_nme_popos", "test": "nme_popos"}


def is_best_epoch(history: list[dict], save_best: str) -> bool:
    """Whether the last epoch of ``history`` has the lowest ``BEST_METRIC[save_best]`` so far (ties: the earlier)."""
    if save_best == "none" or BEST_METRIC[save_best] not in history[-1]:
        return False
    values = [row[BEST_METRIC[save_best]] for row in history if BEST_METRIC[save_best] in row]
    return values[-1] < min(values[:-1], default=math.inf)


class _Rows(torch.utils.data.Dataset):
    """Faces ``rows`` of ``dataset`` as faces ``0..len(rows)-1`` (their ``index`` renumbered to match)."""

    def __init__(self, dataset, rows: np.ndarray) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[int(self.rows[i])], "index": torch.tensor(i, dtype=torch.int64)}


def _quick_nme(model: nn.Module, faces, folder: Path, rows: np.ndarray, params: Params, amp: bool) -> dict:
    """NME (no flip test) of the one_hot and popos decoders on ``faces`` (rows ``rows`` of the prepared
    split in ``folder``): {'nme_one_hot': ..., 'nme_popos': ...}. Logging only: the weights never depend on
    it, so the decoders are not among the training job's code inputs (workflow/rules/train.smk)."""
    from popos.decoders import resolve_variants
    from popos.evaluate import nme_table, predict_split, summarize_table

    loader = DataLoader(faces, batch_size=params.evaluate.batch_size, num_workers=params.train.workers)
    variants = resolve_variants(QUICK_DECODERS, params.decode.popos.model_dump())
    preds = predict_split(model, loader, variants, input_size=params.model.input_size, sigma=params.decode.sigma,
                          amp=amp)
    gt = PreparedSplit.open(folder)
    table = nme_table(preds, gt.landmarks[rows], gt.norm[rows], gt.visible[rows])
    summary = summarize_table(table, params.evaluate.fr_threshold)
    return {f"nme_{r.method}": r.nme for r in summary.itertuples()}


def check_same_config(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume ``path`` (config ``saved``) with another ``current`` config; the error lists the keys."""
    old, new = _flatten(saved), _flatten(current)
    differing = sorted(k for k in old.keys() | new.keys() if k not in RESUME_FREE_KEYS and old.get(k) != new.get(k))
    if differing:
        details = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in differing)
        raise CheckpointError(f"{path}: cannot resume, the checkpoint was trained with another configuration "
                              f"({details}); use another --out folder or drop --resume to start afresh")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------- RNG state as plain tensors / numbers
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(state), "gauss_next": gauss_next},
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


# ---------------------------------------------------------------- throughput
def measure_throughput(
    params: Params,
    heatmap_size: int,
    loss: str = "mse",
    *,
    num_landmarks: int = 98,
    steps: int = 50,
    warmup: int = 5,
    device: str | None = None,
) -> dict:
    """Training-step throughput of the model of ``params`` on random batches (data loading excluded).

    Runs ``warmup`` then ``steps`` full steps (targets, forward, loss, backward, Adam; mixed precision on
    CUDA with ``train.amp``) at batch ``train.batch_size``. Returns device, heatmap_size, loss, batch,
    input_size, width, amp, images_per_s and peak_memory_mb (CUDA: peak allocated; CPU: process peak RSS).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"measure_throughput: steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    dev = resolve_device(device or params.train.device)
    amp = params.train.amp and dev.type == "cuda"
    _seed_all(params.train.seed)
    size, batch_size = params.model.input_size, params.train.batch_size
    net = build_model(num_landmarks, heatmap_size, **{**params.model.model_dump(), "pretrained": None}).to(dev).train()
    loss_fn = build_loss(params, loss)
    optimizer = torch.optim.Adam(net.parameters(), lr=params.train.lr)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    batch = {"image": torch.randn(batch_size, 3, size, size, device=dev),
             "landmarks": torch.rand(batch_size, num_landmarks, 2, device=dev) * (size - 1),
             "visible": torch.ones(batch_size, num_landmarks, dtype=torch.bool, device=dev)}
    targets = target_settings(params, loss, heatmap_size)
    for i in range(warmup + steps):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
        total, _ = _batch_loss(net, batch, loss_fn, dev=dev, amp=amp, targets=targets)
        _optimise(total, optimizer, scaler)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - t0
    return {"device": str(dev), "heatmap_size": heatmap_size, "loss": loss, "batch": batch_size, "input_size": size,
            "width": params.model.width, "amp": amp, "images_per_s": steps * batch_size / seconds,
            "peak_memory_mb": peak}
