"""Device choice: one rule for every step that runs torch (train, evaluate, predict, bench)."""

from __future__ import annotations

import torch

from popos.errors import UserError


class DeviceError(UserError, ValueError):
    """A device was asked for that does not exist here."""


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; ``"cpu"``/``"cuda"`` as given.

    Raises :class:`DeviceError` (a :class:`popos.errors.UserError`) for another name, or for ``"cuda"``
    when torch sees no GPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise DeviceError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: 'cuda' was asked for but torch sees no CUDA GPU (torch.cuda.is_available() "
                          "is False)")
    return torch.device(device)
