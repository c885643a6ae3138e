"""Jobs started by submitit, and DDP started as a launcher's tasks: every task runs the task
function on the same job directory and joins the process group from submitit's environment.
First with submitit's local executor (a sweep of two jobs of 2 tasks each, no cluster), then on
a real one-node Slurm (tests/support/slurm.sh: Debian's slurm-wlm and munge), skipped with the
reason where that cannot be started."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import time
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
    """Two jobs at once, each of two tasks: four processes of one thread on 2 cores. The jobs run
    under submitit's command line: their names still show the user's swept keys (`seed`, swept
    over one value), and their provenance the user's command."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", *SMOKE, *TWO_TASKS, "model=resnet18,preact",
            "seed=range(0,1)", f"hydra.sweep.dir={sweep}"]
    done = run_train(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = ddp_jobs(sweep, jobs=2)
    assert sorted(r["choices"]["model"] for r in results) == ["preact", "resnet18"]
    assert sorted(Path(r["output_dir"]).name for r in results) == ["0-resnet18-sgd-basic-seed=0",
                                                                     "1-preact-sgd-basic-seed=0"]
    commands = [r["provenance"]["command"] for r in results]
    assert all(command.endswith(shlex.join(args)) for command in commands), commands
    assert len(list(csv.DictReader(open(sweep / "summary.csv")))) == 2  # rank 0's report, once


def test_two_slurm_tasks_are_the_ranks_of_one_job(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    done = run_train("-m", "hydra/launcher=slurm", *SMOKE, *TWO_TASKS, "hydra.launcher.mem_gb=null",
                     "hydra.launcher.partition=null", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = ddp_jobs(sweep)
    assert result["device"] == "cpu"


def slurm_jobs() -> dict[str, str]:
    """{array task id: state} of the queue's jobs."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines())


@pytest.mark.timeout(600)
def test_a_preempted_slurm_job_is_requeued_into_its_directory_and_completes(slurm, tmp_path):
    # a 2-job array with one core each (at full speed: torch's threads follow the allotment);
    # job 0 gets USR2 (what Slurm sends ahead of preemption or the time limit) inside epoch 2
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
               "hydra.launcher.partition=null", "hydra.launcher.gpus_per_node=null",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
               "hydra.launcher.timeout_min=10", "experiment=smoke", "logger=none",
               "trainer.progress=false", "trainer.epochs=2", "data.train_size=2048",
               "model=resnet18,preact",
               f"hydra.sweep.dir={sweep}"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # (Slurm's allotment rules)
    sweeping = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        requeue_after_usr2(sweep, sweeping)
    finally:  # (a failed test leaves no sweep waiting on the queue)
        if sweeping.poll() is None:
            sweeping.kill()
            subprocess.run(["scancel", "--user=root"], check=False)
    jobs = {p.name[0]: json.loads((p / "summary.json").read_text()) for p in sweep.glob("[01]-*")}
    assert jobs["0"]["status"] == jobs["1"]["status"] == "completed"
    assert jobs["0"]["resumed_from_epoch"] == 1 and jobs["0"]["resumed_from_step"] > 0
    assert jobs["1"]["resumed_from_epoch"] is None
    assert jobs["0"]["threads"] == jobs["1"]["threads"] == 1  # cpus_per_task=1
    assert min(j["images_per_s"] for j in jobs.values()) > 100  # (18.7 img/s with every core's threads)


def requeue_after_usr2(sweep: Path, sweeping: subprocess.Popen) -> None:
    """USR2 to job 0 inside its epoch 2; the requeued job released; the sweep's end."""
    deadline = time.monotonic() + 300
    while not list(sweep.glob("0-*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    [task0] = [job for job in slurm_jobs() if job.endswith("_0")]
    subprocess.run(["scancel", "--signal=USR2", task0], check=True)
    # the job checkpoints and is requeued (it leaves RUNNING), and Slurm holds it for two
    # minutes before it may start again: released at once here
    while slurm_jobs().get(task0) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    while slurm_jobs().get(task0) != "RUNNING" and sweeping.poll() is None and time.monotonic() < deadline:
        if slurm_jobs().get(task0) == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={task0}", "StartTime=now"], check=True)
        time.sleep(1)
    out, _ = sweeping.communicate(timeout=240)
    assert sweeping.returncode == 0, out[-3000:]
