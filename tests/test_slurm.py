"""Jobs started by submitit, and DDP started as a launcher's tasks: every task runs the task
function on the same job directory and joins the process group from submitit's environment.
First with submitit's local executor (a sweep of two jobs of 2 tasks each, no cluster), then on
a real one-node Slurm (tests/support/slurm.sh: Debian's slurm-wlm and munge), skipped with the
reason where that cannot be started."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_train

SMOKE = ["experiment=smoke", "logger=none", "trainer.progress=false", "trainer.epochs=1"]
TWO_TASKS = ["hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.gpus_per_node=null", "hydra.launcher.timeout_min=10"]


def ddp_jobs(sweep: Path, jobs: int = 1) -> list[dict]:
    """The sweep's job summaries, after checking that each job's two tasks were its two ranks:
    one job directory per job, rank 0's files, rank 1's log."""
    dirs = [p for p in sweep.iterdir() if (p / "summary.json").exists()]
    assert len(dirs) == jobs, dirs  # one job directory for each job's two tasks
    results = []
    for job in dirs:
        result = json.loads((job / "summary.json").read_text())
        assert result["status"] == "completed" and result["world_size"] == 2, result
        assert (job / "train.rank1.log").exists()
        assert len((job / "metrics.csv").read_text().splitlines()) == 2  # rank 0's one epoch
        results.append(result)
    return results


def test_a_submitit_sweep_of_jobs_of_two_tasks(tmp_path):
    # two jobs at once, each of two tasks: four processes of one thread on 2 cores
    sweep = tmp_path / "sweep"
    done = run_train("-m", "hydra/launcher=submitit_local", *SMOKE, *TWO_TASKS, "model=resnet18,preact",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = ddp_jobs(sweep, jobs=2)
    assert sorted(r["choices"]["model"] for r in results) == ["preact", "resnet18"]
    assert len(list(csv.DictReader(open(sweep / "summary.csv")))) == 2  # rank 0's report, once


@pytest.fixture(scope="module")
def slurm():
    started = subprocess.run(["bash", str(ROOT / "tests" / "support" / "slurm.sh"), "start"],
                             capture_output=True, text=True, timeout=180)
    if started.returncode:
        pytest.skip(f"no Slurm here: {(started.stdout + started.stderr).strip()}")


def test_two_slurm_tasks_are_the_ranks_of_one_job(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    done = run_train("-m", "hydra/launcher=slurm", *SMOKE, *TWO_TASKS, "hydra.launcher.mem_gb=null",
                     "hydra.launcher.partition=null", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = ddp_jobs(sweep)
    assert result["device"] == "cpu"
