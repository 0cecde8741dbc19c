"""The checkpoint file: one training run's state, written by :mod:`popos.train`, read by every later step.

A checkpoint is a ``torch.save``'d dict of plain tensors and containers (loadable with
``torch.load(weights_only=True)``, so reading one runs no code) with the keys :data:`KEYS`:
``format_version`` (:data:`FORMAT_VERSION`), ``config`` (the run's settings, :func:`popos.train.run_config`),
``epoch``, ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``history`` and ``checksum``: the
SHA-256 of everything else (:func:`checksum`), so that a flipped byte inside a weight tensor is an error
naming the file rather than a silently different result. Files are written atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from popos.errors import UserError
from popos.io import atomic_path

#: 2: adds ``checksum``. Files of another version are refused (retrain, or read them with that popos).
FORMAT_VERSION = 2
KEYS = ("format_version", "config", "epoch", "model", "optimizer", "scheduler", "scaler", "rng", "history",
        "checksum")


class CheckpointError(UserError, ValueError):
    """A file is not a checkpoint this popos can use; the message names the file and why."""


def checksum(state: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of every entry of ``state`` but ``checksum``, in a fixed order.

    Walks the nested dicts (keys sorted), lists and tuples; hashes each leaf's path and, for a tensor, its
    dtype, shape and raw bytes (CPU, contiguous), for anything else its ``repr``. Equal for a dict and its
    ``torch.save`` / ``torch.load`` round trip.
    """
    digest = hashlib.sha256()

    def walk(path: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value, key=str):
                if not (path == "" and key == "checksum"):
                    walk(f"{path}/{key}", value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"{path}:seq{len(value)}".encode())
            for i, item in enumerate(value):
                walk(f"{path}/{i}", item)
        elif isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{path}:{t.dtype}:{tuple(value.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{path}={value!r}".encode())

    walk("", state)
    return f"sha256:{digest.hexdigest()}"


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """Write ``state`` (every key of :data:`KEYS` but ``format_version`` and ``checksum``) to ``path``.

    Tensors are moved to the CPU (a CPU machine can read the file); the format version and the checksum
    are added; the file is replaced atomically.
    """
    missing = [k for k in KEYS if k not in ("format_version", "checksum") and k not in state]
    if missing:
        raise ValueError(f"save_checkpoint: missing keys {missing}")
    body = {**_to_cpu(dict(state)), "format_version": FORMAT_VERSION}
    body["checksum"] = checksum(body)
    with atomic_path(path) as tmp:
        torch.save(body, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` (naming ``path``) when the file is missing, unreadable, not a popos
    checkpoint, of another format version, or when its content no longer matches its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with `popos train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable popos checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
    if isinstance(state, dict) and state.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']!r}, this popos reads format "
                              f"{FORMAT_VERSION}; retrain it (or use the popos version that wrote it)")
    if missing:
        raise CheckpointError(f"{path}: not a popos checkpoint (missing keys: {', '.join(missing)})")
    if checksum(state) != state["checksum"]:
        raise CheckpointError(f"{path}: checksum mismatch: the checkpoint's content changed after it was written "
                              "(a corrupt or edited file); restore it or retrain")
    return state


def model_from_checkpoint(state: Mapping[str, Any], device: torch.device, path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the trained model of ``state`` (from :func:`load_checkpoint` of ``path``) in eval mode on ``device``.

    Raises :class:`CheckpointError` when the stored weights do not fit the model its config describes
    (e.g. a checkpoint of an older architecture).
    """
    from popos.models import build_model

    cfg = state["config"]
    # The trained weights replace any ImageNet initialisation, whose file may not exist on this machine.
    model = build_model(cfg["num_landmarks"], cfg["heatmap_size"], **{**cfg["model"], "pretrained": None})
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes "
                              f"({' '.join(line.strip() for line in first)})") from exc
    return model.to(device).eval()


def _to_cpu(tree):
    """The same nested dicts / lists with every tensor on the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree
