"""Training depends on exactly the code its weights depend on: a decoder change re-runs evaluations, oracle,
benchmark, sweeps and report, and no training job; a change of the anchor table (the MA loss's K) retrains."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from project_copy import copy_project

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
COPY = ["popos", "workflow", "config", "params.yaml", "dvc.yaml"]


def _snakemake(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(SNAKEMAKE), "--cores", "1", "--configfile", "config/demo.yaml", *args], cwd=project,
                          env=env, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _planned(project: Path) -> set[str]:
    """Rules of the jobs a dry run would run."""
    out = _snakemake(project, "-n")
    if "Nothing to be done" in out:
        return set()
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.strip() == "Job stats:") + 3
    rules = set()
    for line in lines[start:]:
        if not line.strip():
            break
        rules.add(line.split()[0])
    return rules - {"total"}


def _edit(path: Path) -> None:
    """Append a comment and date the file after every output (the workflow's code inputs are files)."""
    path.write_text(path.read_text() + "\n# edited\n")
    later = time.time() + 60
    os.utime(path, (later, later))


@pytest.mark.slow
def test_decoder_edit_reruns_no_training_and_anchor_edit_does(tmp_path):
    project = copy_project(tmp_path / "project", COPY)
    # every output of the demo's DAG, as if computed: empty files (folders for directory outputs), then --touch
    summary = _snakemake(project, "--summary").splitlines()
    header = next(i for i, line in enumerate(summary) if line.startswith("output_file"))
    for line in summary[header + 1:]:
        if line.count("\t") < 3:  # log lines on stderr
            continue
        output, _, rule = line.split("\t")[:3]
        path = project / output
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if rule == "report" else path.touch()
    _snakemake(project, "--touch")
    assert _planned(project) == set()

    _edit(project / "popos" / "decoders" / "popos.py")
    rules = _planned(project)
    assert {"evaluate", "oracle", "bench_decoders", "sweep_decoders", "report"} <= rules
    assert not {r for r in rules if r.startswith("train")}, rules

    _edit(project / "popos" / "anchors.py")
    assert {"train", "evaluate", "report"} <= _planned(project)
