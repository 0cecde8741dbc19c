"""A copy of the repository's code, workflow and params, for tests that run Snakemake or DVC in it."""

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_project(dst: Path, names: list[str]) -> Path:
    """Copy ``names`` (files or folders at the repository root, ``__pycache__`` left out) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    return dst
