"""DDP jobs as users start them, on 2 gloo ranks of this CPU (one thread each): `trainer.devices=2`
alone and in a multirun, under torchrun, killed and resumed, and with a rank that fails. Each is
a real subprocess (the ranks are real processes too), at smoke size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_train, start_train
from experiments.timing import SECTIONS

SMOKE = ["experiment=smoke", "logger=none", "trainer.progress=false"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # per rank: two ranks of two threads oversubscribe 2 cores


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def no_rank_left(cwd: Path) -> bool:
    """No rank spawned by a job started in `cwd` is still running: multiprocessing's spawn names
    itself in the command line, and a spawned rank keeps its parent's working directory (other
    tests' ranks, on the other worker, run in their own)."""
    out = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True)
    for pid in out.stdout.split():
        try:
            where = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # ended meanwhile
            continue
        if Path(where).is_relative_to(cwd):
            return False
    return True


# what else runs under DDP, together: SAM (both passes all-reduced), EMA, mixing, gradient
# accumulation (no_sync but the last micro-batch) and a batch schedule (the global batch doubles)
COMBINED = ["optim=sam", "trainer.ema_decay=0.9", "mix=mixup", "trainer.grad_accum_steps=2",
            "trainer.batch_schedule={epochs:[2],sizes:[64]}", "trainer.epochs=2"]


def test_torchrun_ranks_agree_on_one_run_directory(tmp_path):
    # no hydra.run.dir: each rank resolves outputs/<date>/<time> itself, from the agreed start
    env = {**os.environ, **ONE_THREAD, "WANDB_SILENT": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(ROOT / "train.py"), *SMOKE, *COMBINED],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs
    result = summary(runs[0])
    assert result["status"] == "completed" and result["world_size"] == 2
    assert result["best_val_acc"] > 0.2  # it learns under all of them (chance: 0.1)
    sizes = [row.split(",") for row in (runs[0] / "metrics.csv").read_text().splitlines()]
    assert [r[sizes[0].index("train/batch_size")] for r in sizes[1:]] == ["32", "64"]
    assert (runs[0] / "train.rank1.log").exists()


def test_a_killed_ddp_job_resumes_into_one_job_directory_owned_by_rank_0(tmp_path):
    # `python train.py experiment=smoke trainer.devices=2`, kill -9 (every rank) after its first
    # checkpoint, the same command again
    run = tmp_path / "run"
    command = [*SMOKE, "trainer.devices=2", "trainer.epochs=3", f"hydra.run.dir={run}"]
    job = start_train(*command, cwd=tmp_path, env=ONE_THREAD, new_session=True)
    deadline = time.monotonic() + 240
    while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)  # the whole process group: rank 0 and the rank it spawned
    job.wait()
    assert summary(run)["status"] == "running"  # as a killed job leaves it

    done = run_train(*command, cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    result = summary(run)
    assert result["status"] == "completed" and result["world_size"] == 2
    assert result["resumed_from_epoch"] >= 1 and result["resume_note"] is None  # the same ranks
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert 2 * result["device_batch_size"] == config["trainer"]["batch_size"]
    assert result["best_val_acc"] > 0.5  # it learns (smoke data: chance is 0.1)
    epochs = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]  # one row per epoch: rank 0's only, none twice
    assert sorted(p.name for p in run.iterdir()) == [  # rank 1 wrote its log only
        ".hydra", "config.yaml", "metrics.csv", "model.pt", "summary.json", "train.log",
        "train.rank1.log"]
    assert (run / "train.rank1.log").read_text().count("(rank 1 of 2)") == 2  # its two runs
    # every second of the resumed run is in a section, waiting for rank 1 to exit in `shutdown`
    t = result["time_s"]
    assert sum(t[k] for k in (*SECTIONS, "rest")) == pytest.approx(t["wall"], abs=0.01)
    assert t["shutdown"] < 1.0 and t["rest"] < 0.03 * t["wall"], t  # (the ranks end at once: spawn.py)
    assert no_rank_left(tmp_path)


def test_in_a_sweep_of_ddp_jobs_a_failing_rank_fails_its_job_fast_and_the_others_run(tmp_path):
    # three jobs of two ranks, two at a time under joblib (each job's rank 1 spawned from a
    # loky worker): rank 1 raises, rank 1 is killed, none fails
    sweep, started = tmp_path / "sweep", time.monotonic()
    done = run_train("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMOKE, "model=lenet",
                     "model._target_=support.faulty.FailingLeNet",
                     "+model.fault=raise,kill,none", "trainer.devices=2", "trainer.epochs=1",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     env={**ONE_THREAD, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), *sys.path])})
    took = time.monotonic() - started
    assert done.returncode != 0  # a sweep with a failed job says so
    jobs = sorted((p for p in sweep.iterdir() if (p / "summary.json").exists()), key=lambda p: p.name)
    raised, killed, fine = (summary(j) for j in jobs)
    assert raised["status"] == killed["status"] == "failed"
    assert raised["error"].startswith("rank 1: ") and "injected failure on rank 1" in raised["error"]
    assert killed["error"] == "rank 1: it was killed (signal 9)"
    assert fine["status"] == "completed" and fine["world_size"] == 2
    assert took < 180, took  # the three in minutes: no failure waited out a collective's timeout (30 min)
    assert no_rank_left(tmp_path)

