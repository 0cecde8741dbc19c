"""Atomic writes and copies: a file or folder is either its old self or completely new, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The parent folder is created. On any exception the temporary file is removed and ``path`` is left as
    it was, so nothing half-written survives a failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv_atomic(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``table`` to ``path`` as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


_FICLONE = 0x40049409  # Linux ioctl: make dst a copy-on-write clone of src (btrfs, XFS, bcachefs, ...)


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy the bytes of ``src`` to ``dst``: an independent file, never a link, so writing one never changes
    the other. A copy-on-write clone (reflink, no extra space) where the filesystem supports it, a plain copy
    otherwise."""
    with open(src, "rb") as source, open(dst, "wb") as target:
        try:
            import fcntl

            fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
            return
        except (ImportError, OSError):  # no fcntl (Windows) or no reflink on this filesystem
            pass
        shutil.copyfileobj(source, target, 1 << 20)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh folder beside ``path`` that replaces the folder ``path`` only if the block succeeds.

    The old folder is moved aside and removed only after the new one is in place; on any exception the
    new folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the folder private
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
