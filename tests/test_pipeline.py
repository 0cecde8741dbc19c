"""The pipeline: params files and schema, run naming, the Snakemake DAG (dry runs of the paper and the demo),
the DVC stages, and one real `dvc repro` of a tiny config followed by a decoder-knob change."""

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from project_copy import copy_project

from popos.config import DatasetName, Params, ParamsError, load_params
from popos.data.registry import DATASETS
from popos.layout import Run, all_runs, decoder_sweep_run, grid_runs, ma_sweep_runs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What a project copy needs to run the workflow: no results, data, git or DVC state.
COPY = ["popos", "workflow", "config", "params.yaml", "dvc.yaml", ".dvcignore"]
# 1 dataset x 1 heatmap size x 2 losses with a slim model on 16 synthetic faces, 1 epoch; the MA sweep adds
# one model (weight 2; 0 and 6 reuse the grid's).
TINY = {
    "grid": {"datasets": ["synth"], "heatmap_sizes": [8]},
    "data": {"crop_size": 64},
    "synth": {"n_train": 16, "n_test": 6},
    "model": {"pretrained": None, "width": 4, "input_size": 64, "stem_width": 8, "stage1_blocks": 1, "num_blocks": 1,
              "num_modules": [1, 1, 1]},
    "train": {"epochs": 1, "batch_size": 8, "workers": 0, "device": "cpu", "eval_every": 0},
    "decode": {"methods": ["one_hot", "igno", "popos", "popos_authors"]},
    "evaluate": {"batch_size": 8},
    "oracle": {"heatmap_sizes": [8], "conditions": ["clean"], "num_images": 2},
    "bench": {"heatmap_sizes": [8], "batch": 2, "num_landmarks": 68, "warmup": 0, "repeats": 1},
    "sweeps": {"dataset": "synth", "heatmap_size": 8, "region": [1], "samples_per_pixel": [2], "anchors": [5],
               "ma_weight": [0, 2, 6]},
    "report": {"overlay_faces": 1, "overlay_sizes": [8]},
}


def _env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONDONTWRITEBYTECODE": "1", "CI": "true",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    """Run a command; return stdout + stderr, failing the test with both if it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or _env(), text=True, capture_output=True)
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def job_stats(text: str) -> dict[str, int]:
    """Snakemake's last "Job stats" table -> {rule: count}."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    counts = {}
    for line in lines[start + 3:]:
        if not line.strip():
            break
        rule, n = line.split()
        counts[rule] = int(n)
    counts.pop("total", None)
    return counts


@pytest.fixture
def project(tmp_path):
    """A copy of the code, workflow and params, to run Snakemake / DVC in without touching the repo."""
    return copy_project(tmp_path / "proj", COPY)


def dry_run(project: Path, *configfiles: str) -> str:
    args = [str(BIN / "snakemake"), "-n", "--cores", "1"]
    if configfiles:
        args += ["--configfile", *configfiles]
    return run(args, project)


# ---------------------------------------------------------------- params
def test_params_files_validate_and_set_every_knob():
    paper, demo = load_params(ROOT / "params.yaml"), load_params(ROOT / "params.yaml", ROOT / "config/demo.yaml")
    assert paper.grid.datasets == ["wflw", "300w", "cofw", "aflw", "cocowb_face"] and demo.grid.datasets == ["synth"]
    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, field in Params.model_fields.items():
        missing = set(field.annotation.model_fields) - set(written.get(section, {}))
        assert not missing, f"params.yaml lacks {section}.{sorted(missing)}: every knob belongs in it"


def test_dataset_names_match_the_registry():
    assert set(typing.get_args(DatasetName)) == set(DATASETS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["grid.datasets=[wflw, wflw]"], r"grid\.datasets: duplicate"),
        (["grid.datasets=[lfpw]"], r"grid\.datasets\.0"),
        (["grid.losses=[]"], r"grid\.losses"),
        (["report.main_loss=mse", "grid.losses=[mse_ma]"], r"report\.main_loss 'mse' is not in grid\.losses"),
        (["report.overlay_sizes=[16]", "grid.heatmap_sizes=[8, 4]"], r"report\.overlay_sizes \[16\]"),
        (["sweeps.anchors=[5, 17]", "sweeps.heatmap_size=4"], r"sweeps\.anchors \[17\] exceed"),
        (["sweeps.ma_weight=[-1]"], r"sweeps\.ma_weight: every value must be >= 0"),
        (["sweeps.method=popos_authors", "decode.methods=[popos]"], r"lacks 'popos_authors' \(sweeps\.method"),
        (["report.titel=x"], r"report\.titel"),
    ],
)
def test_params_errors_name_the_key(overrides, message):
    with pytest.raises(ParamsError, match=message):
        load_params(ROOT / "params.yaml", overrides=overrides)


# ---------------------------------------------------------------- runs
def test_ma_sweep_reuses_grid_models():
    p = load_params(overrides=["sweeps.dataset=cofw", "sweeps.heatmap_size=8", "sweeps.ma_weight=[0, 1.5, 6]"])
    runs = ma_sweep_runs(p)
    assert runs == {0: Run("cofw", 8, "mse"), 1.5: Run("cofw", 8, "mse_ma", 1.5), 6: Run("cofw", 8, "mse_ma")}
    assert [r.name for r in runs.values()] == ["cofw_8_mse", "cofw_8_mse_ma_w1.5", "cofw_8_mse_ma"]
    assert set(all_runs(p)) == set(grid_runs(p)) | {Run("cofw", 8, "mse_ma", 1.5)}
    moved = load_params(overrides=["sweeps.ma_weight=[0, 4, 6]", "train.ma_weight=4"])
    assert ma_sweep_runs(moved)[4] == Run("300w", 32, "mse_ma") and ma_sweep_runs(moved)[6].ma_weight == 6
    outside = load_params(overrides=["grid.datasets=[wflw]", "sweeps.ma_weight=[0, 6]"])
    assert set(all_runs(outside)) - set(grid_runs(outside)) == {Run("300w", 32, "mse"), Run("300w", 32, "mse_ma")}
    assert decoder_sweep_run(outside) == Run("300w", 32, "mse_ma")


# ---------------------------------------------------------------- Snakemake DAG
def test_dry_run_of_the_paper(project):
    p = load_params(ROOT / "params.yaml")
    jobs = job_stats(dry_run(project))
    n_grid = len(p.grid.datasets) * len(p.grid.heatmap_sizes) * len(p.grid.losses)
    extra = [w for w in p.sweeps.ma_weight if w not in (0, p.train.ma_weight)]
    assert n_grid == 50 and len(extra) == 5 and jobs["train"] == n_grid + len(extra)
    assert jobs["evaluate"] + jobs["evaluate_keep_heatmaps"] == n_grid + len(extra)
    assert jobs["evaluate_keep_heatmaps"] == 1
    assert jobs["download"] == 5 and all(jobs[f"prepare_{d}"] == 1 for d in p.grid.datasets)
    assert jobs["oracle"] == 5
    for rule in ("bench_decoders", "model_info", "sweep_decoders", "report", "all"):
        assert jobs[rule] == 1, rule
    assert "synth" not in jobs


def test_dry_run_of_the_demo_and_code_inputs(project):
    out = dry_run(project, "config/demo.yaml")
    p = load_params(ROOT / "params.yaml", ROOT / "config/demo.yaml")
    jobs = job_stats(out)
    assert jobs["synth"] == 1 and "download" not in jobs
    extra = [w for w in p.sweeps.ma_weight if w not in (0, p.train.ma_weight)]
    assert jobs["train"] == len(p.grid.heatmap_sizes) * len(p.grid.losses) + len(extra)
    # each job lists the popos modules it runs (imported transitively) as inputs, and only those
    blocks = {b.split(":", 1)[0].strip(): b for b in out.split("\nrule ")[1:]}
    train_inputs = blocks["train"].split("input:", 1)[1].splitlines()[0]
    for module in ("popos/train.py", "popos/models/hrnet.py", "popos/data/dataset.py", "popos/anchors.py"):
        assert module in train_inputs
    assert "popos/decoders" not in train_inputs  # the weights do not depend on them (tests/test_train_inputs.py)
    assert "popos/report/__init__.py" not in train_inputs and "popos/oracle.py" not in train_inputs
    report_inputs = blocks["report"].split("input:", 1)[1].splitlines()[0]
    assert "popos/paper_numbers.py" in report_inputs and "popos/train.py" not in report_inputs
    for size in p.grid.heatmap_sizes:  # predictions are read only where Figure 6 draws them
        drawn = f"{p.grid.results_dir}/eval/synth_{size}_{p.report.main_loss}/predictions.npz" in report_inputs
        assert drawn == (size in p.report.overlay_sizes), size


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"decode": {"popos": {"bogus": 1}}}, r"decode\.popos\.bogus: Extra inputs"),
        ({"decode": {"popos": {"window": 2}}}, r"decode\.popos: window must be an integer >= 3"),
        ({"model": {"input_size": 64}}, r"grid\.heatmap_sizes: input_size 64 must be a multiple of 128"),
        ({"train": {"sigma": float("inf")}}, r"train\.sigma: Input should be a finite number"),
    ],
)
def test_a_bad_setting_stops_the_workflow_before_any_job_and_keeps_results(project, bad, message):
    (project / "bad.yaml").write_text(yaml.safe_dump(bad))
    kept = project / "demo/results/eval/synth_8_mse/summary.csv"  # a good result of an earlier run
    kept.parent.mkdir(parents=True)
    kept.write_text("method,nme\npopos,0.05\n")
    for flags in (["-n"], []):  # the dry run and the real run both stop while reading the params
        proc = subprocess.run([str(BIN / "snakemake"), *flags, "--cores", "1", "--configfile", "config/demo.yaml",
                               "bad.yaml"], cwd=project, env=_env(), text=True, capture_output=True)
        out = proc.stdout + proc.stderr
        assert proc.returncode and re.search(message, out) and "Job stats" not in out, out
        assert kept.read_text() == "method,nme\npopos,0.05\n"


def test_invalid_config_and_config_flag_are_refused(project):
    (project / "bad.yaml").write_text("train:\n  lr: -1\n")
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", "bad.yaml"], cwd=project,
                          env=_env(), text=True, capture_output=True)
    assert proc.returncode and "train.lr" in proc.stdout + proc.stderr
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "1", "--config", "train={epochs: 2}"],
                          cwd=project, env=_env(), text=True, capture_output=True)
    assert proc.returncode and "--configfile" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- DVC
def test_dvc_params_cover_every_section():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    keys = {k for s in stages.values() for k in s.get("params", s.get("do", {}).get("params", []))}
    assert {k.split(".")[0] for k in keys} == set(Params.model_fields)
    for key in keys:
        section, _, field = key.partition(".")
        assert not field or field in Params.model_fields[section].annotation.model_fields, key


@pytest.mark.slow
def test_dvc_repro_then_a_decoder_knob_reruns_only_evaluation(project):
    merged = Params.model_validate(TINY).model_dump(mode="json")
    (project / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    env = {**_env(), "PYTHONPATH": str(project)}  # the copy's popos, not the repository's
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"], [str(BIN / "dvc"), "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        run(cmd, project, env)

    first = run([str(BIN / "dvc"), "repro"], project, env)
    jobs = job_stats(first)
    assert jobs["train"] == 3 and "synth" not in jobs  # DVC's data stage made it
    report = project / "results/report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["nme"]["synth"]["mse_ma"]) == {"one_hot", "igno", "popos", "popos_authors"}
    assert (report / "fig6_synth.jpg").stat().st_size > 0
    assert "up to date" in run([str(BIN / "dvc"), "status"], project, env)

    again = run([str(BIN / "dvc"), "repro"], project, env)
    assert "Job stats" not in again and "didn't change, skipping" in again

    changed = run([str(BIN / "dvc"), "exp", "run", "-S", "decode.sigma=2.5"], project, env)
    jobs = job_stats(changed)
    assert "train" not in jobs and "synth" not in jobs
    assert jobs["evaluate"] + jobs["evaluate_keep_heatmaps"] == 3
    assert "Running stage 'report'" in changed and "Running stage 'data@synth'" not in changed

    # a bad setting stops `dvc repro` before any job runs, and every result stays as it was
    results = {p: p.read_bytes() for p in (project / "results").rglob("*") if p.is_file()}
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["decode"]["popos"] = {"bogus": 1}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=env, text=True, capture_output=True)
    assert proc.returncode and "decode.popos.bogus" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr
    assert {p: p.read_bytes() for p in (project / "results").rglob("*") if p.is_file()} == results
