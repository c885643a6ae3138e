"""Never lose work: kill -9 and resume (one job and a sweep), failures isolated, files checked."""

import csv
import functools
import json
import signal
import time

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_train, start_train
from experiments.data import load_splits
from experiments.task import explain
from support.archives import write_cifar_archive
from support.forked import fork, wait
from support.jobs import run_here

SMOKE = ["experiment=smoke", "trainer.epochs=4", "logger=tensorboard"]


def kill_after_checkpoint(proc, checkpoint, timeout=120):
    deadline = time.time() + timeout
    while not checkpoint.exists():
        assert proc.poll() is None, "the job ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(autouse=True)
def one_thread_per_job(monkeypatch):
    """These tests run two jobs at once on a 2-core machine: one thread each. With two each,
    OpenMP's spinning threads oversubscribe the cores, which made Muon's bf16 matmuls crawl (its
    resume test took 47 s in one suite run and over 2 minutes in the next; 17 s with this). Every
    run of a test gets the same count, so the runs stay bit-comparable."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def summary(job_dir):
    return json.loads((job_dir / "summary.json").read_text())


def test_killed_job_resumes_and_matches_an_uninterrupted_run(tmp_path):
    """`python train.py` itself, killed and rerun (every option's resume, in forked copies of the
    test process: tests/test_resume_options.py)."""
    args = SMOKE
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    reference = start_train(*args, f"hydra.run.dir={clean}", cwd=tmp_path)
    victim = start_train(*args, f"hydra.run.dir={killed}", cwd=tmp_path)
    kill_after_checkpoint(victim, killed / "checkpoint.pt")
    assert summary(killed)["status"] == "running"
    proc = run_train(*args, f"hydra.run.dir={killed}", cwd=tmp_path)  # the same command again
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert reference.wait() == 0
    resumed, uninterrupted = summary(killed), summary(clean)
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 4
    assert 1 <= resumed["resumed_from_epoch"] < 4 and uninterrupted["resumed_from_epoch"] is None
    for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch"):  # deterministic on CPU
        assert resumed[key] == uninterrupted[key], key
    rows = list(csv.DictReader(open(killed / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    clean_rows = list(csv.DictReader(open(clean / "metrics.csv")))
    assert [r["val/loss"] for r in rows] == [r["val/loss"] for r in clean_rows]
    # TensorBoard continues the same run: every epoch exactly once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(killed / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/acc")] == [1, 2, 3, 4]
    assert not (killed / "checkpoint.pt").exists() and (killed / "model.pt").exists()


def test_killed_dataloader_job_with_persistent_workers_resumes_bit_identically(tmp_path):
    """Persistent workers restart with fresh RNGs after a resume, so each image's augmentation
    must come from the loader's (checkpointed) generator, not from the workers' RNGs."""
    args = ["experiment=smoke", "trainer.epochs=2", "logger=none", "model=preact", "model.width=4",
            "data.train_size=224", "data.val_size=32", "data.test_size=32", "trainer.batch_size=32",
            "loader=dataloader", "loader.workers=2", "loader.persistent_workers=true", "aug=advanced"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    reference = start_train(*args, f"hydra.run.dir={clean}", cwd=tmp_path)
    victim = start_train(*args, f"hydra.run.dir={killed}", cwd=tmp_path)
    kill_after_checkpoint(victim, killed / "checkpoint.pt")
    proc = run_train(*args, f"hydra.run.dir={killed}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert reference.wait() == 0
    assert summary(killed)["resumed_from_epoch"] == 1
    for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch"):
        assert summary(killed)[key] == summary(clean)[key], key
    losses = [[r["train/loss"] for r in csv.DictReader(open(out / "metrics.csv"))]
              for out in (killed, clean)]
    assert losses[0] == losses[1]


def test_killed_sweep_resumes_unfinished_and_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMOKE, "model=resnet18,preact", f"hydra.sweep.dir={sweep}"]
    victim = start_train(*args, cwd=tmp_path)
    kill_after_checkpoint(victim, sweep / "1-preact-sgd-basic" / "checkpoint.pt", timeout=240)
    first = summary(sweep / "0-resnet18-sgd-basic")
    assert first["status"] == "completed"
    proc = run_train(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary(sweep / "0-resnet18-sgd-basic") == first  # skipped: its result as stored
    second = summary(sweep / "1-preact-sgd-basic")
    assert second["status"] == "completed" and second["epochs_completed"] == 4
    assert second["resumed_from_epoch"] >= 1
    assert [r["status"] for r in csv.DictReader(open(sweep / "summary.csv"))] == ["completed"] * 2


def test_failed_jobs_fail_alone_and_the_sweep_still_gets_its_table(tmp_path):
    # one completes, one fails its checks before training (lr -1), one diverges while training
    sweep = tmp_path / "sweep"
    proc = run_train("-m", "experiment=smoke", "logger=default", "trainer.epochs=2",
                     "optim.lr=0.1,-1,1e30", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode != 0  # a failed job makes the sweep fail ...
    by_lr = {r["optim.lr"]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    assert by_lr["0.1"]["status"] == "completed"
    assert by_lr["-1"]["status"] == "failed" and "optim.lr must be a number > 0" in by_lr["-1"]["error"]
    assert by_lr["1e+30"]["status"] == "failed" and "diverged" in by_lr["1e+30"]["error"]
    failed_dir = next(p for p in sweep.iterdir() if p.name.startswith("2-"))
    assert list((failed_dir / "tb").glob("events.out.tfevents.*"))  # writer closed, file kept
    md = (sweep / "summary.md").read_text()
    assert "## Failed and interrupted jobs" in md and "optim.lr must be a number > 0" in md
    assert "| failed |" in proc.stdout and "| completed |" in proc.stdout  # ... and prints the table


def test_truncated_checkpoint_is_reported_with_its_path(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit) as exited:
        run_here([*SMOKE[:-1], "logger=none"], out)
    assert exited.value.code == 2
    assert f"checkpoint {out / 'checkpoint.pt'} is unreadable" in caplog.text


def test_truncated_cache_is_rebuilt(tmp_path, compose_cfg):
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz")
    cfg = compose_cfg(["data=cifar100", f"data.root={tmp_path}", "data.md5=null", "data.val_size=0"]).data
    first = load_splits(cfg)
    cache = tmp_path / "cifar100.uint8.pt"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    again = load_splits(cfg)
    assert torch.equal(first.train.images, again.train.images)
    assert load_splits(cfg).train.images.shape[0] == 60  # and the rebuilt cache loads


def test_two_processes_building_one_cache(tmp_path):
    # two forked processes (support/forked.py), started together, race to build the cache
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", n_train=2000, n_test=500)
    cfg = OmegaConf.create(dict(
        _target_="experiments.data.cifar.Cifar", name="cifar100", root=str(tmp_path),
        url="x/cifar-100-python.tar.gz", md5=None, download=False, download_timeout_s=1,
        num_classes=100, channels=3, image_size=32, val_size=0, split_seed=0, mean=[0.5] * 3,
        std=[0.25] * 3, hflip_ok=True))

    def build(k: int) -> None:
        s = load_splits(cfg)
        (tmp_path / f"{k}.out").write_text(f"{len(s.train)} {int(s.train.images.sum())}")

    pids = [fork(functools.partial(build, k)) for k in range(2)]
    assert [wait(pid) for pid in pids] == [0, 0]
    outputs = [(tmp_path / f"{k}.out").read_text() for k in range(2)]
    assert outputs[0] == outputs[1] and outputs[0].startswith("2000 ")
    assert not list(tmp_path.glob("*.tmp"))


def test_out_of_memory_says_what_to_change():
    cfg = OmegaConf.create({"trainer": {"batch_size": 256, "grad_accum_steps": 1}})
    message = explain(torch.OutOfMemoryError("CUDA out of memory"), cfg)
    assert "trainer.batch_size=128 trainer.grad_accum_steps=2" in message


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    proc = run_train("experiment=smoke", f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "cannot write" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
