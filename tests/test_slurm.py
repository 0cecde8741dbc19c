"""The workflow on a SLURM cluster, as a user runs it: `snakemake --profile profiles/slurm-local` (Snakemake's
SLURM executor) on the demo's workflow shrunk to two heatmap sizes, one epoch and a few faces.

One run has a training job killed with `scancel` mid-training (and `--keep-going`, so that everything else
finishes); the rerun, with the profile from SNAKEMAKE_PROFILE as `dvc repro` would take it, must resubmit
only that job and what depends on it. Then: every job was a SLURM job that sacct lists COMPLETED, with the
profile's partition, CPUs, memory and time limit; each job's SLURM log is beside the workflow's logs; the
report's numbers equal those of the same workflow run with the local executor.

Needs a running cluster (`scripts/slurm-local.sh start`, which CI's .ci/run does) and the executor plugin
(popos's `slurm` extra); skips otherwise.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from project_copy import copy_project

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILE = "profiles/slurm-local"
COPY = ["popos", "workflow", "config", "params.yaml", "profiles"]
# Over params.yaml + config/demo.yaml: two heatmap sizes, one epoch, 64 + 8 faces, a 64-pixel input; the
# MA-weight sweep adds one model (weight 2). 16 SLURM jobs.
SHRINK = {
    "grid": {"heatmap_sizes": [16, 8], "results_dir": "results"},
    "data": {"prepared_dir": "data/prepared", "crop_size": 96},
    "synth": {"n_train": 64, "n_test": 8},
    "model": {"input_size": 64},
    "train": {"epochs": 1, "batch_size": 16},
    "oracle": {"heatmap_sizes": [16, 8], "num_images": 2},
    "bench": {"heatmap_sizes": [8], "batch": 2, "warmup": 0, "repeats": 1},
    "sweeps": {"heatmap_size": 16, "region": [1], "samples_per_pixel": [2], "anchors": [5], "ma_weight": [0, 2, 6]},
    "report": {"overlay_faces": 1, "overlay_sizes": [8]},
}
CONFIG = ["--configfile", "config/demo.yaml", "shrink.yaml"]
KILLED = "synth_8_mse"  # the run whose training is cancelled: its evaluation and the report depend on it
# Report files with the workflow's numbers (decoder_speed.csv and report.md hold timings, which vary).
SAME_NUMBERS = ["metrics.json", "per_resolution.csv", "ablation.csv", "oracle.csv", "sweeps.csv", "table1.csv",
                "fig5_region.csv", "fig5_samples_per_pixel.csv", "fig5_anchors.csv", "fig5_ma_weight.csv"]
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (.+?)\)")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_PROFILE"))}
    return {**env, "DVC_NO_ANALYTICS": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _cluster_or_skip() -> None:
    """Skip, saying why, unless the executor plugin is installed and a SLURM cluster answers with a node
    (fail instead where POPOS_REQUIRE_SLURM is set, as in CI, which starts the cluster)."""
    missing = pytest.fail if os.environ.get("POPOS_REQUIRE_SLURM") else pytest.skip
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        missing("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    if shutil.which("sinfo") is None:
        missing("no SLURM client (sinfo) on PATH: start a local cluster with scripts/slurm-local.sh start")
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], env=_env(), text=True, capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        missing("sinfo did not answer in 30 s: no SLURM cluster running (scripts/slurm-local.sh start)")
    if proc.returncode or not {"idle", "mixed", "allocated"} & set(proc.stdout.split()):
        said = (proc.stderr or proc.stdout).strip().splitlines()
        missing(f"no SLURM node ready ({said[-1] if said else 'no nodes'}): "
                "start a local cluster with scripts/slurm-local.sh start")


def _project(dst: Path) -> Path:
    copy_project(dst, COPY)
    (dst / "shrink.yaml").write_text(yaml.safe_dump(SHRINK, sort_keys=False))
    return dst


def _start(project: Path, name: str, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """Start Snakemake in ``project`` on the shrunk config; its output goes to ``<project>/<name>.out``."""
    env = {**(env or _env()), "PYTHONPATH": str(project)}  # the copy's popos, not the repository's
    out = project / f"{name}.out"
    with open(out, "w") as f:
        proc = subprocess.Popen([str(BIN / "snakemake"), *args, *CONFIG], cwd=project, env=env, text=True,
                                stdout=f, stderr=subprocess.STDOUT)
    return proc, out


def _wait(started: tuple[subprocess.Popen, Path], timeout: float = 600) -> tuple[int, str]:
    proc, out = started
    proc.wait(timeout)
    return proc.returncode, out.read_text()


def _sacct(jobids: list[str]) -> dict[str, dict]:
    """SLURM job id -> its accounting record (allocation line only)."""
    fields = ["JobID", "State", "Comment", "Partition", "ReqCPUS", "ReqMem", "Timelimit"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(jobids), "-o", ",".join(fields)],
                         env=_env(), text=True, capture_output=True, check=True).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return {r["JobID"]: r for r in rows}


def _job_of(comment: str) -> tuple[str, str]:
    """The executor's job comment ``rule_<rule>[_wildcards_<values>]`` -> (rule, values)."""
    rule, values = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", comment).groups()
    return rule, values or ""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The shrunk workflow run locally, then through SLURM with one training cancelled, then rerun."""
    _cluster_or_skip()
    base = tmp_path_factory.mktemp("slurm")
    local, cluster = _project(base / "local"), _project(base / "cluster")

    start = time.monotonic()
    rc, local_out = _wait(_start(local, "local", "--cores", "2", "--resources", "gpu=2"))
    assert rc == 0, local_out
    local_s = time.monotonic() - start

    start = time.monotonic()
    first = _start(cluster, "first", "--profile", PROFILE, "--keep-going")
    try:
        killed_id = _cancel_mid_training(cluster, *first)
        rc, first_out = _wait(first)
    finally:
        if first[0].poll() is None:  # the test failed before the end: Snakemake cancels its SLURM jobs on SIGTERM
            first[0].terminate()
            first[0].wait(120)
    first_s = time.monotonic() - start
    killed_checkpoint = (cluster / f"results/models/{KILLED}/checkpoint.pt").exists()

    start = time.monotonic()
    rerun_rc, rerun_out = _wait(_start(cluster, "rerun", env={**_env(), "SNAKEMAKE_PROFILE": PROFILE}))
    rerun_s = time.monotonic() - start
    print(f"\nshrunk workflow: local {local_s:.0f} s; SLURM {first_s:.0f} s (one job cancelled) + rerun "
          f"{rerun_s:.0f} s")
    return {"local": local, "cluster": cluster, "killed_id": killed_id, "first": (rc, first_out),
            "killed_checkpoint": killed_checkpoint, "rerun": (rerun_rc, rerun_out)}


def _cancel_mid_training(project: Path, proc: subprocess.Popen, out: Path, timeout: float = 600) -> str:
    """Wait until the training of KILLED has started its epoch (its log shows the progress bar), then scancel
    its SLURM job; return the job id."""
    log = project / "results/logs/train" / f"{KILLED}.log"
    comment = f"rule_train_wildcards_{KILLED}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the SLURM run ended before {KILLED} trained:\n{out.read_text()}")
        if log.is_file() and "epoch 1/1" in log.read_text(errors="replace"):
            queue = subprocess.run(["squeue", "-h", "-o", "%i %T %k"], env=_env(), text=True, capture_output=True)
            for line in queue.stdout.splitlines():
                jobid, state, job_comment = line.split(maxsplit=2)
                if job_comment == comment and state == "RUNNING":
                    subprocess.run(["scancel", jobid], env=_env(), check=True)
                    return jobid
        time.sleep(0.1)
    pytest.fail(f"{KILLED} did not start training within {timeout} s")


def test_a_cancelled_job_fails_the_run_clearly(runs):
    rc, out = runs["first"]
    assert rc != 0
    error = re.search(r"Error in rule train:\n    message: (.*?)\n(?:    .*\n)*?    output: (\S+),", out)
    assert error, out
    assert error[1].startswith(f"SLURM-job '{runs['killed_id']}' failed, SLURM status is: 'CANCELLED'"), error[1]
    assert error[2] == f"results/models/{KILLED}/checkpoint.pt"
    assert not runs["killed_checkpoint"]  # killed before the end of its epoch
    state = _sacct([runs["killed_id"]])[runs["killed_id"]]["State"]
    assert state.startswith("CANCELLED"), state


def test_the_rerun_resubmits_only_the_cancelled_job_and_its_dependents(runs):
    rc, out = runs["rerun"]
    assert rc == 0, out
    rerun = _sacct([jobid for jobid, _ in SUBMITTED.findall(out)])
    assert sorted(_job_of(r["Comment"]) for r in rerun.values()) == [
        ("evaluate", KILLED), ("report", ""), ("train", KILLED)]


def test_every_job_is_a_slurm_job_with_the_profiles_resources_and_its_log_beside_the_workflows(runs):
    jobs = SUBMITTED.findall(runs["first"][1]) + SUBMITTED.findall(runs["rerun"][1])
    records = _sacct([jobid for jobid, _ in jobs])
    assert len(records) == len(jobs)
    profile = yaml.safe_load((ROOT / PROFILE / "config.yaml").read_text())
    ran = set()
    for jobid, slurm_log in jobs:
        r = records[jobid]
        rule, values = _job_of(r["Comment"])
        ran.add((rule, values))
        assert r["State"].split()[0] == ("CANCELLED" if jobid == runs["killed_id"] else "COMPLETED"), r
        want = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
        assert r["Partition"] == want["slurm_partition"] and int(r["ReqCPUS"]) == want["cpus_per_task"], r
        assert r["ReqMem"] == f"{want['mem_mb']}M", r
        assert r["Timelimit"] == f"{want['runtime'] // 60:02d}:{want['runtime'] % 60:02d}:00", r
        log = runs["cluster"] / slurm_log
        assert log.is_file() and log.is_relative_to(runs["cluster"] / "results/logs/slurm"), slurm_log
    # every job of the workflow but the target `all` (which Snakemake runs itself) was a SLURM job
    dry = subprocess.run([str(BIN / "snakemake"), "-n", "--forceall", "--cores", "1", *CONFIG],
                         cwd=runs["cluster"], env={**_env(), "PYTHONPATH": str(runs["cluster"])},
                         text=True, capture_output=True, check=True).stdout
    planned = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry):
        if m := re.match(r"(?:local)?rule (\w+):", block):
            wildcards = re.search(r"^    wildcards: (.*)$", block, re.M)
            values = "_".join(w.split("=", 1)[1] for w in wildcards[1].split(", ")) if wildcards else ""
            planned.add((m[1], values))
    assert len(planned) == 17 and ran == planned - {("all", "")}


@pytest.mark.parametrize("profile", ["profiles/slurm", PROFILE])
def test_every_rule_gets_the_profiles_resources(profile, tmp_path):
    """No cluster needed: a dry run with the profile gives each job its rule's resources from the profile
    (a rule renamed in the workflow but not in the profile would silently lose them)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    project = _project(tmp_path / "proj")
    dry = subprocess.run([str(BIN / "snakemake"), "-n", "--profile", profile, *CONFIG], cwd=project,
                         env={**_env(), "PYTHONPATH": str(project)}, text=True, capture_output=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    config = yaml.safe_load((ROOT / profile / "config.yaml").read_text())
    jobs = {}
    for rule, resources in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", dry.stdout, re.M):
        jobs.setdefault(rule, []).append(dict(r.split("=", 1) for r in resources.split(", ")))
    assert set(config["set-resources"]) <= set(jobs), "the profile names rules the workflow lacks"
    for rule, resources in jobs.items():
        want = {**config["default-resources"], **config["set-resources"].get(rule, {})}
        for got in resources:
            assert {k: got.get(k) for k in want} == {k: str(v) for k, v in want.items()}, rule


def test_the_report_equals_the_local_run(runs):
    cluster, local = runs["cluster"] / "results/report", runs["local"] / "results/report"
    for name in SAME_NUMBERS:
        assert (cluster / name).read_bytes() == (local / name).read_bytes(), name
    assert json.loads((cluster / "metrics.json").read_text())["nme"]["synth"]
