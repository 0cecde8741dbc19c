"""What the report's numbers were made with: the code's commit, the torch build and the machine.

The same commit gives slightly different NMEs on different CPUs (floating-point reductions differ), so a
reader needs all three to compare two reports. The report is built in the same environment as the runs it
reads when the workflow runs them together (``make demo``, ``dvc repro``); a report rebuilt elsewhere says
where it was built.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def commit() -> str:
    """The popos checkout's commit hash, ``+ uncommitted changes`` when its tracked files differ from it."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "popos", "workflow")
    return f"{head} + uncommitted changes" if dirty else head


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment() -> dict[str, str]:
    """``{"commit", "torch", "cpu", "gpu", "python"}``: strings for the report's header."""
    import torch

    cuda = torch.version.cuda
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "commit": commit(),
        "torch": torch.__version__ + (f" (CUDA {cuda})" if cuda else " (CPU build)"),
        "cpu": cpu_model(),
        "gpu": ", ".join(gpus) if gpus else "none",
        "python": platform.python_version(),
    }
