"""A job directory's edges: a refused rerun leaves it as it was, one process trains it at a time,
a torn summary or a full disk is met with a message, secrets reach no file."""

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import run_train
from experiments.atomic import atomic_write
from experiments.errors import DataError, DiskFull, JobFailed, Refusal
from experiments.job_dir import JobDir
from experiments.report.job_summary import write_json
from experiments.training.checkpoint import Checkpoint
from experiments.training.trainer import Trainer
from support.forked import fork, kill_after_checkpoint, signal_at_step, wait
from support.jobs import run_here

TINY = ["experiment=smoke", "logger=none", "trainer.progress=false", "model=mlp",
        "model.width=16", "data.train_size=288", "data.val_size=32", "data.test_size=32"]


def files(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `out`: its bytes and modification time."""
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(autouse=True)
def one_thread_per_job(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # subprocesses side by side on 2 cores


# --- a refused rerun writes nothing -------------------------------------------------------------

def test_a_refused_rerun_leaves_a_completed_job_exactly_as_it_was(tmp_path):
    """`python train.py` with TensorBoard and W&B, then the same directory with another config:
    refused with exit 2, and every file (Hydra's record, train.log, the runs) is unchanged, so
    the original command still finds its completed result."""
    out, base = tmp_path / "run", ["experiment=smoke", "logger=default", "trainer.epochs=2"]
    assert run_train(*base, f"hydra.run.dir={out}", cwd=tmp_path).returncode == 0
    before = files(out)
    assert {".hydra/overrides.yaml", "train.log", "summary.json", "model.pt"} <= set(before)
    proc = run_train(*base[:-1], "trainer.epochs=3", f"hydra.run.dir={out}", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "holds a completed job with a different config" in text
    assert "Traceback" not in text
    assert files(out) == before
    assert run_here(base, out) == summary(out)["best_val_acc"]  # its stored result, as it was
    assert files(out)["summary.json"] == before["summary.json"]


def test_a_refused_job_of_a_sweep_fails_alone_and_is_left_as_it_was(tmp_path):
    out = tmp_path / "sweep" / "0-mlp-sgd-basic"
    run_here([*TINY, "trainer.epochs=1"], out, multirun=True)
    before = files(out)
    with pytest.raises(JobFailed, match="holds a completed job with a different config"):
        run_here([*TINY, "trainer.epochs=2"], out, multirun=True)
    assert files(out) == before


def test_a_checkpoint_of_another_config_is_refused_before_anything_is_written(tmp_path, caplog):
    out = tmp_path / "run"

    def crash():
        kill_after_checkpoint()
        run_here([*TINY, "trainer.epochs=3"], out)

    assert wait(fork(crash)) == -signal.SIGKILL
    before = files(out)
    with pytest.raises(SystemExit) as exited:
        run_here([*TINY, "trainer.epochs=3", "model.width=8"], out)
    assert exited.value.code == 2 and files(out) == before
    assert "was written by a different config (model.width: 16 -> 8)" in caplog.text
    assert summary(out)["status"] == "running"  # still the killed job's, to resume


def left_interrupted(out: Path) -> None:
    """A child: SIGTERM in epoch 2 (a checkpoint inside it, an interrupted summary)."""
    signal_at_step(signal.SIGTERM, 9 + 4)
    run_here([*TINY, "trainer.epochs=3"], out)


def left_running(out: Path) -> None:
    """A child: killed -9 in epoch 2 (its summary still says running, with epoch 1 done)."""
    kill_after_checkpoint()
    run_here([*TINY, "trainer.epochs=3"], out)


def left_failed(out: Path) -> None:
    """A child: an error in epoch 2 (a failed summary with epoch 1 done, and its checkpoint)."""
    save, step = Checkpoint.save, Trainer.optimizer_step
    saved = []

    def saving(self, *args, **kwargs):
        save(self, *args, **kwargs)
        saved.append(1)

    def stepping(self, *args, **kwargs):
        if saved:
            raise RuntimeError("a worker's bad day")
        return step(self, *args, **kwargs)

    Checkpoint.save, Trainer.optimizer_step = saving, stepping
    run_here([*TINY, "trainer.epochs=3"], out)


def left_completed(out: Path) -> None:
    run_here([*TINY, "trainer.epochs=3"], out)


# state: (what leaves it, the status its summary then says, what stopping with the exit code)
STATES = {"interrupted": (left_interrupted, "interrupted", 128 + signal.SIGTERM),
          "running": (left_running, "running", -signal.SIGKILL),
          "failed": (left_failed, "failed", 1),
          "completed": (left_completed, "completed", 0)}


@pytest.mark.parametrize("state", STATES)
def test_a_rerun_stopped_by_its_checks_writes_nothing_whatever_the_job_it_finds(tmp_path, state, caplog):
    """A bad value (trainer.epochs=-1) stops the rerun before it can compare configs: the job
    there, whatever its state, keeps its summary, progress, Hydra record and log as they were."""
    out = tmp_path / "run"
    leave, status, code = STATES[state]
    assert wait(fork(lambda: leave(out))) == code
    before = files(out)
    assert summary(out)["status"] == status and ".hydra/config.yaml" in before
    with pytest.raises(SystemExit) as exited:
        run_here([*TINY, "trainer.epochs=-1"], out)
    assert exited.value.code == 2
    assert files(out) == before
    assert (f"holds a{'n' if status[0] in 'aeiou' else ''} {status} job, left as it is: this run stopped "
            "before it could compare configs: trainer.epochs") in caplog.text


def test_a_new_directory_gets_the_failed_summary_of_a_run_stopped_by_its_checks(tmp_path):
    """(so that a sweep's report lists the job)"""
    out = tmp_path / "sweep" / "0-mlp-sgd-basic"
    with pytest.raises(JobFailed, match="trainer.epochs"):
        run_here([*TINY, "trainer.epochs=-1"], out, multirun=True)
    failed = summary(out)
    assert failed["status"] == "failed" and "trainer.epochs" in failed["error"]
    assert (out / ".hydra" / "overrides.yaml").exists()


def test_a_failure_before_the_fit_keeps_the_progress_the_checkpoint_holds(tmp_path):
    """The same config, but its data cannot be read this time: the failed summary says what is
    done and checkpointed (epoch 1 of 3), never 0, and the checkpoint stays to resume from."""
    out = tmp_path / "run"
    assert wait(fork(lambda: left_interrupted(out))) == 128 + signal.SIGTERM

    def unreadable():
        import experiments.job

        def load_splits(cfg):
            raise DataError("the data's disk is not mounted")

        experiments.job.load_splits = load_splits
        run_here([*TINY, "trainer.epochs=3"], out)

    assert wait(fork(unreadable)) == 2
    failed = summary(out)
    assert failed["status"] == "failed" and failed["error"] == "the data's disk is not mounted"
    assert failed["epochs_completed"] == 1 and failed["best_val_acc"] is not None
    assert (out / "checkpoint.pt").exists()


def test_a_launcher_ranks_log_is_made_at_its_first_line_not_in_a_refused_directory(tmp_path):
    """The ranks a launcher starts (torchrun, Slurm tasks) each log to train.rank<r>.log, set up
    before rank 0 has checked the directory: a refused rerun's rank 1 leaves no file there."""

    def rank_1():
        from experiments.ranks import Ranks
        from experiments.task import rank_log

        rank_log(tmp_path, Ranks(1, 2, 1, 2))
        assert not (tmp_path / "train.rank1.log").exists()
        logging.getLogger("experiments").info("training")
        assert "training" in (tmp_path / "train.rank1.log").read_text()

    assert wait(fork(rank_1)) == 0


def test_a_sweep_rerun_whose_jobs_are_all_refused_leaves_the_sweep_as_it_was(tmp_path):
    """Every job of the rerun refused (a bad trainer.checkpoint_every, a key outside the job's
    identity: the rerun finds each finished job, and stops at its checks): each job's files stay
    as they were, Hydra's record of the sweep too (multirun.yaml, which its sweeper writes before
    any job starts), and each job's line says it was refused, not the earlier run's result."""
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}",
            "hydra.callbacks.sweep_summary.plots=false"]
    assert run_train(*args, cwd=tmp_path).returncode == 0
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    record = sweep / "multirun.yaml"
    before = {d.name: files(d) for d in jobs}, record.read_bytes(), record.stat().st_mtime_ns
    proc = run_train(*args, "trainer.checkpoint_every=0", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "holds a completed job, left as it is" in text, text[-3000:]
    for k, job in enumerate(jobs, 1):
        assert f"job {k}/2 {job.name} done: refused" in text
    assert ({d.name: files(d) for d in jobs}, record.read_bytes(), record.stat().st_mtime_ns) == before


# --- one process at a time ----------------------------------------------------------------------

def test_a_second_process_is_refused_while_the_first_trains_and_takes_over_once_it_is_dead(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "trainer.epochs=40"]
    first = fork(lambda: run_here(args, out))
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists():  # training, and the owner's summary written
        assert time.time() < deadline
        time.sleep(0.05)
    owner = summary(out)
    with pytest.raises(Refusal, match=f"being trained by another process .pid {first} on "
                                      f"{owner['host']}"):
        with JobDir(out):
            pass
    second = fork(lambda: run_here(args, out))  # the same command, started twice
    assert wait(second) == 2
    assert summary(out)["pid"] == first  # untouched by the second
    os.kill(first, signal.SIGKILL)
    assert wait(first) == -signal.SIGKILL
    with JobDir(out):  # a dead owner holds nothing: the next run takes over
        pass


# --- state that cannot be read, space that runs out ---------------------------------------------

def test_a_torn_summary_is_unknown_state_and_the_job_resumes_from_its_checkpoint(tmp_path, caplog):
    out = tmp_path / "run"

    def crash():
        kill_after_checkpoint()
        run_here([*TINY, "trainer.epochs=3"], out)

    assert wait(fork(crash)) == -signal.SIGKILL
    text = (out / "summary.json").read_text()
    (out / "summary.json").write_text(text[: len(text) // 2])  # killed mid-write, or truncated
    run_here([*TINY, "trainer.epochs=3"], out)
    assert "summary.json is unreadable" in caplog.text
    assert summary(out)["status"] == "completed" and summary(out)["resumed_from_epoch"] == 1


def test_a_full_disk_gives_one_message_and_a_failed_summary(tmp_path, capsys):
    """metrics.csv on a device that is always full (/dev/full: every write fails with ENOSPC)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").symlink_to("/dev/full")
    with pytest.raises(SystemExit) as exited:
        run_here([*TINY, "trainer.epochs=2"], out)
    assert exited.value.code == 2
    failed = summary(out)
    assert failed["status"] == "failed"
    assert failed["error"].startswith(f"no space left on the device while writing {out / 'metrics.csv'}")
    assert "MiB free on /" in failed["error"] and "resumes from the last checkpoint" in failed["error"]


def test_an_atomic_write_that_runs_out_of_space_says_where(tmp_path):
    target = tmp_path / "summary.json"
    (tmp_path / f".summary.json.{os.getpid()}.tmp").symlink_to("/dev/full")  # its temporary file
    with pytest.raises(DiskFull, match=f"while writing {target} .*MiB free on /"):
        write_json(target, {"status": "running"} | {str(i): "x" * 100 for i in range(100)})
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written left
    with atomic_write(target) as tmp:  # and the next write goes through
        tmp.write_text("{}")
    assert target.read_text() == "{}"


# --- secrets ----------------------------------------------------------------------------------

def test_secrets_typed_on_the_command_line_reach_no_file(tmp_path):
    """A sweep of one job with TensorBoard and W&B: the secret is in no file of the sweep, Hydra's
    records included, while the job still got it."""
    sweep, secret, in_env = tmp_path / "sweep", "tok_9f8e7d6c5b4a39281706", "s3cr3t-value-123456"
    proc = run_train("-m", "experiment=smoke", "trainer.epochs=1", "logger=default",
                     f"+logger.wandb.api_key={secret}", "+extra.note=${oc.env:MY_SERVICE_TOKEN}",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"MY_SERVICE_TOKEN": in_env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = [p for p in sweep.rglob("*") if p.is_file()]
    assert {"multirun.yaml", "summary.md", "summary.csv", "overrides.yaml", "hydra.yaml",
            "config.yaml", "summary.json", "train.log"} <= {p.name for p in written}
    assert any(p.suffix == ".wandb" for p in written) and any("tfevents" in p.name for p in written)
    leaks = [str(p.relative_to(sweep)) for p in written
             if secret.encode() in p.read_bytes() or in_env.encode() in p.read_bytes()]
    assert not leaks
    assert secret not in proc.stdout + proc.stderr
    job = next(sweep.glob("0-*"))
    assert "+logger.wandb.api_key=***" in summary(job)["overrides"]
    config = (job / "config.yaml").read_text()
    assert "api_key: '***'" in config and "note: '***'" in config
