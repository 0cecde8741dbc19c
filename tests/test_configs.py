"""The three configs: params.yaml (the paper), config/authors.yaml (the authors' released setup) and the demo:
what each sets and the jobs a dry run of each lists."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from project_copy import copy_project

from popos.config import load_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAPER = [ROOT / "params.yaml"]
AUTHORS = [*PAPER, ROOT / "config/authors.yaml"]
DEMO = [*PAPER, ROOT / "config/demo.yaml"]


def test_the_paper_by_default():
    p = load_params(*PAPER)
    assert p.model.pretrained == "imagenet" and p.train.schedule == "linear" and p.train.warmup_iters == 0
    assert p.train.ma_weight == 6 and p.train.ma_anchors == "authors" and p.train.target == "unbiased"
    assert p.augment.translate == 0 and p.augment.color_jitter == 0 and p.evaluate.checkpoint == "last"


def test_the_authors_setup_per_dataset():
    p = load_params(*AUTHORS)
    epochs = {d: p.train.for_dataset(d).epochs for d in p.grid.datasets}
    assert epochs == {"wflw": 1000, "300w": 100, "cofw": 210, "aflw": 100, "cocowb_face": 1000}
    cofw = p.train.for_dataset("cofw")
    assert (cofw.schedule, cofw.lr_min, cofw.warmup_iters, cofw.baseline_sigma) == ("cosine", 1e-5, 5, 1.5)
    wflw = p.train.for_dataset("wflw")
    assert (wflw.schedule, wflw.lr_steps, wflw.warmup_iters, wflw.baseline_sigma) == ("step", [40, 55], 500, 2.0)
    assert p.train.for_dataset("cocowb_face").heatmap_loss == "huber" and wflw.heatmap_loss == "mse"
    assert p.augment.for_dataset("cocowb_face").translate_prob == 0.3 and p.augment.for_dataset("wflw").translate == 0
    assert p.train.batch_size == 256 and p.train.save_best == "test" and p.evaluate.checkpoint == "best_test"
    assert "checkpoint selected on the test set" in p.report.title
    assert load_params(*PAPER).train.save_best == "none"  # the test set selects nothing outside this config


def test_the_demo_trains_slim_models_from_scratch():
    p = load_params(*DEMO)
    assert p.model.pretrained is None and p.model.width < 18


def _jobs(project: Path, *configfiles: Path) -> tuple[dict[str, int], str]:
    """Jobs per rule of a dry run, and its output."""
    args = [str(BIN / "snakemake"), "-n", "--cores", "1"]
    for f in configfiles:
        args += ["--configfile", str(f.relative_to(ROOT))]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=project, env=env, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    start = max(i for i, line in enumerate(lines) if line.strip() == "Job stats:") + 3
    counts = {}
    for line in lines[start:]:
        if not line.strip():
            break
        rule, count = line.split()
        counts[rule] = int(count)
    return counts, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("project"), ["popos", "workflow", "config", "params.yaml", "dvc.yaml"])


@pytest.mark.parametrize("configs", [PAPER, AUTHORS, DEMO], ids=["paper", "authors", "demo"])
def test_dry_run_lists_exactly_the_jobs_of_each_config(project, configs):
    p = load_params(*configs)
    jobs, out = _jobs(project, *configs[1:])
    grid = len(p.grid.datasets) * len(p.grid.heatmap_sizes) * len(p.grid.losses)
    extra = [w for w in p.sweeps.ma_weight if w not in (0, p.train.ma_weight)]
    assert jobs["train"] == grid + len(extra)  # the MA-weight sweep's models are train jobs too
    assert jobs["evaluate"] + jobs["evaluate_keep_heatmaps"] == grid + len(extra)
    assert jobs.get("fetch_pretrained", 0) == (p.model.pretrained == "imagenet")  # once, never per training job
    data = sum(1 if d == "synth" else 2 for d in p.grid.datasets)  # synth; or download + prepare
    oracle, bench = len(p.grid.datasets), len(p.bench.devices)
    fixed = 4  # model_info, sweep_decoders, report, all
    expected = grid + 2 * len(extra) + grid + (p.model.pretrained == "imagenet") + data + oracle + bench + fixed
    assert jobs["total"] == expected  # paper 131, authors 121 (25 of them the baseline models), demo 29
    evaluated = [line for line in out.split("\nrule evaluate")[1].splitlines() if "input:" in line][0]
    assert ("/best.pt" in evaluated) == (p.evaluate.checkpoint != "last")  # authors: the test-selected epoch
