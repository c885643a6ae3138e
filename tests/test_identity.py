"""A sweep's job is found again by what it is (its config's fingerprint), not by its place in the
grid: a rerun into the same sweep directory, reordered, extended, narrowed or reached by other
overrides, reuses every finished job and continues every interrupted one; new jobs take numbers
no directory has, also when two processes add jobs at once (experiments/identity.py)."""

import json
import multiprocessing
import re

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus

from conftest import run_train
from experiments.identity import (
    FINGERPRINT_FILE,
    claim_job_dir,
    find_job,
    fingerprint,
    held_fingerprint,
    job_identity,
)
from experiments.report.job_summary import write_json
from experiments.report.sweep import load_sweep

# lenet: a job's training takes 0.2 s, its start-up the rest; no plots (3 s a sweep)
SMOKE = ["experiment=smoke", "logger=none", "trainer.epochs=1", "model=lenet",
         "hydra.callbacks.sweep_summary.plots=false"]


def old_job(sweep, name, status="completed", fp=None, config=None, epochs=1):
    """A job directory as an older version left it: no FINGERPRINT_FILE; the fingerprint in a
    completed summary, and its config.yaml."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("[]\n")
    if config is not None:
        (job / "config.yaml").write_text(yaml.safe_dump(config))
    write_json(job / "summary.json", {"status": status, "epochs_completed": epochs,
                                      **({"fingerprint": fp} if fp else {})})
    return job


def test_a_job_takes_its_place_number_when_free_else_one_past_the_highest(tmp_path):
    sweep = tmp_path / "s"
    assert claim_job_dir(sweep, "a" * 16, 0, "lenet-sgd-basic-seed=0") == "0-lenet-sgd-basic-seed=0"
    assert claim_job_dir(sweep, "b" * 16, 1, "lenet-sgd-basic-seed=1") == "1-lenet-sgd-basic-seed=1"
    # the same job, wherever it stands in a new grid and whatever its name would be now
    assert claim_job_dir(sweep, "a" * 16, 5, "lenet-sgd-basic") == "0-lenet-sgd-basic-seed=0"
    assert claim_job_dir(sweep, "c" * 16, 0, "lenet-sgd-basic-seed=2") == "2-lenet-sgd-basic-seed=2"
    assert claim_job_dir(sweep, "d" * 16, 7, "x") == "7-x"  # free: kept
    assert claim_job_dir(sweep, "e" * 16, 3, "y") == "3-y"  # free too, if below the highest
    assert (sweep / "2-lenet-sgd-basic-seed=2" / FINGERPRINT_FILE).read_text().strip() == "c" * 16


def test_older_directories_are_found_by_their_summary_or_config_and_the_best_copy_counts(tmp_path):
    sweep, config = tmp_path / "s", {"seed": 1, "optim": {"lr": 0.1}}
    old_job(sweep, "0-a", fp="f" * 16)
    assert held_fingerprint(sweep / "0-a") == "f" * 16
    old_job(sweep, "1-a", status="interrupted", config=config, epochs=2)  # (no fingerprint yet)
    assert held_fingerprint(sweep / "1-a") == fingerprint(config)
    assert claim_job_dir(sweep, "f" * 16, 9, "new") == "0-a"
    # a sweep of an older version that ran this job at two places: the furthest copy continues,
    # a completed one above all
    old_job(sweep, "2-a", status="interrupted", config=config, epochs=1)
    assert find_job(sweep, fingerprint(config)).name == "1-a"
    old_job(sweep, "3-a", status="completed", fp=fingerprint(config), epochs=3)
    assert find_job(sweep, fingerprint(config)).name == "3-a"


def test_a_sweep_over_the_device_count_runs_a_job_per_count_and_the_report_keeps_both(tmp_path):
    """trainer.devices is outside the fingerprint (a checkpoint resumes on another count), but a
    sweep over it compares speeds: each count is a job of its own, in the report too."""
    one = {"seed": 0, "trainer": {"devices": 1, "epochs": 1}}
    two = {"seed": 0, "trainer": {"devices": 2, "epochs": 1}}
    assert fingerprint(one) == fingerprint(two) and job_identity(one) != job_identity(two)
    assert job_identity(one) == fingerprint(one)  # (one device: as before)
    sweep = tmp_path / "s"
    names = [claim_job_dir(sweep, job_identity(c), n, f"lenet-sgd-basic-trainer.devices={d}")
             for n, (c, d) in enumerate([(one, 1), (two, 2)])]
    assert names == ["0-lenet-sgd-basic-trainer.devices=1", "1-lenet-sgd-basic-trainer.devices=2"]
    for name, config in zip(names, [one, two]):  # each completed, as the job leaves it
        (sweep / name / ".hydra").mkdir()
        (sweep / name / "config.yaml").write_text(yaml.safe_dump(config))
        write_json(sweep / name / "summary.json", {"status": "completed", "epochs_completed": 1,
                                                   "fingerprint": fingerprint(config), "seed": 0})
    assert len(load_sweep(sweep)) == 2
    (sweep / names[1] / FINGERPRINT_FILE).unlink()  # an older version's: found by its config.yaml
    assert held_fingerprint(sweep / names[1]) == job_identity(two)


def claim_at_once(sweep, fp, number, label, barrier, names):
    barrier.wait()
    names.put(claim_job_dir(sweep, fp, number, label))


def test_two_processes_adding_jobs_at_once_never_share_a_number(tmp_path):
    """Six forked processes claim at the same moment: four new jobs all at place 0, and one job
    twice (two sweeps that both hold it): five directories, the shared job in one."""
    sweep, ctx = tmp_path / "s", multiprocessing.get_context("fork")
    claims = [("1" * 16, "a"), ("2" * 16, "b"), ("3" * 16, "c"), ("4" * 16, "d"), ("5" * 16, "e"),
              ("5" * 16, "e2")]
    barrier, names = ctx.Barrier(len(claims)), ctx.Queue()
    procs = [ctx.Process(target=claim_at_once, args=(sweep, fp, 0, label, barrier, names))
             for fp, label in claims]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    got = [names.get(timeout=5) for _ in claims]
    dirs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(dirs) == 5 and sorted(int(d.split("-")[0]) for d in dirs) == [0, 1, 2, 3, 4], dirs
    shared = [name for name in got if name.split("-", 1)[1] in ("e", "e2")]
    assert len(shared) == 2 and shared[0] == shared[1]


def summaries(sweep):
    return {p.name: json.loads((p / "summary.json").read_text()) for p in sweep.iterdir()
            if (p / "summary.json").exists()}


def test_a_rerun_reordered_extended_or_with_other_overrides_reuses_every_job(tmp_path):
    """Two seeds, then the same sweep rerun with the seeds reordered and a third added, then with
    no seed override and the learning rate swept (its default and another): no job trains
    twice, the interrupted one continues from its checkpoint in its own directory, and the
    report counts each (config, seed) once. (Jobs that claim their directories in other
    processes, at once: test_two_processes_adding_jobs_at_once_never_share_a_number, and
    tests/test_cluster.py's submitit sweep, whose two tasks of a job find one directory.)"""
    sweep = tmp_path / "sweep"
    first = run_train("-m", *SMOKE, "seed=0,1", "trainer.keep_checkpoint=true",
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = summaries(sweep)
    assert sorted(before) == ["0-lenet-sgd-basic-seed=0", "1-lenet-sgd-basic-seed=1"]
    # seed 1 as if killed after its last checkpoint (kept: trainer.keep_checkpoint=true)
    interrupted = sweep / "1-lenet-sgd-basic-seed=1"
    write_json(interrupted / "summary.json", {**before[interrupted.name], "status": "interrupted"})
    second = run_train("-m", *SMOKE, "seed=1,0,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    after = summaries(sweep)
    assert sorted(after) == [*sorted(before), "2-lenet-sgd-basic-seed=2"]
    assert after["0-lenet-sgd-basic-seed=0"] == before["0-lenet-sgd-basic-seed=0"]  # returned, unchanged
    resumed = after[interrupted.name]
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 1
    # a swept key added (0.1: sgd's default), no seed override (0 by default)
    third = run_train("-m", *SMOKE, "optim.lr=0.1,0.05", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "already completed in" in third.stdout + third.stderr
    last = summaries(sweep)
    assert {k: v for k, v in last.items() if k in after} == after
    assert sorted(set(last) - set(after)) == ["3-lenet-sgd-basic-optim.lr=0.05"]  # 1 is taken
    df = load_sweep(sweep)
    assert sorted(df["seed"]) == ["0", "0", "1", "2"] and set(df["status"]) == {"completed"}
    assert sorted(df["optim.lr"]) == ["0.05", "0.1", "0.1", "0.1"]  # (the others' default)
    # this run's lines: the reused job is no evidence of how long a job takes
    progress = json.loads((sweep / ".sweep_progress.json").read_text())
    assert progress["jobs"] == 2 and progress["ended"] == {"0": False, "1": True}
    assert not re.search(r"sweep ETA", third.stdout + third.stderr)


def test_a_sweep_of_an_older_version_counts_each_config_and_seed_once(tmp_path):
    """An older version ran seed=0,1, then seed=1,0 into the same directory: each job again at
    its new place (the rerun of seed 0 was killed before it completed). The report reads each
    (config, seed) once, the completed copy, and names the copies it left out."""
    sweep = tmp_path / "s"
    for num, seed, acc, status in ((0, 0, 0.50, "completed"), (1, 1, 0.52, "completed"),
                                   (0, 1, 0.60, "completed"), (1, 0, None, "interrupted")):
        config = {"seed": seed, "optim": {"lr": 0.1}, "trainer": {"epochs": 3}}
        job = old_job(sweep, f"{num}-lenet-sgd-basic-seed={seed}", status, config=config,
                      fp=fingerprint(config) if status == "completed" else None)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
        summary = json.loads((job / "summary.json").read_text())
        write_json(job / "summary.json", {**summary, "seed": seed, "test_acc": acc,
                                          "best_val_acc": acc, "choices": {"model": "lenet"}})
    from experiments.report import sweep_report

    result = sweep_report.write_tables([sweep], sweep)
    assert sorted(result.df["job"]) == ["0-lenet-sgd-basic-seed=0", "0-lenet-sgd-basic-seed=1"]
    (config,) = result.configs.itertuples()
    assert (config.n, config.seeds, config.test_acc_mean) == (2, "0 1", pytest.approx(0.55))
    md = (sweep / "summary.md").read_text()
    assert "2 jobs: 2 completed." in md
    assert ("`1-lenet-sgd-basic-seed=0` (as `0-lenet-sgd-basic-seed=0`), `1-lenet-sgd-basic-seed=1` "
            "(as `0-lenet-sgd-basic-seed=1`)") in md


def test_a_rerun_counts_its_own_jobs_and_times_only_those_it_trained(tmp_path, caplog):
    """Six jobs into a sweep directory holding four finished ones: the four return their results
    at once (no ETA: no evidence yet), and after the fifth, trained in 100 s of this run, the
    ETA is 100 s for the one left, not the run's time spread over every finished directory."""
    from omegaconf import OmegaConf

    from experiments.report.callbacks import SweepProgress

    sweep = tmp_path / "s"
    for num in range(4):
        old_job(sweep, f"{num}-lenet-sgd-basic-seed={num}", fp=f"{num:016x}")

    def config(num):
        return OmegaConf.create({"hydra": {
            "mode": "RunMode.MULTIRUN", "sweep": {"dir": str(sweep)}, "sweeper": {"params": None},
            "overrides": {"task": ["seed=0,1,2,3,4,5"]}, "job": {"num": num},
            "runtime": {"output_dir": str(sweep / f"{num}-lenet-sgd-basic-seed={num}")}}})

    progress = SweepProgress()
    progress.on_multirun_start(config(0))
    state = json.loads((sweep / SweepProgress.FILE).read_text())
    (sweep / SweepProgress.FILE).write_text(json.dumps({**state, "started": state["started"] - 100}))
    caplog.set_level("INFO")
    for num in range(5):
        progress.on_job_start(config(num))
        if num == 4:  # trained: its summary written in this run
            old_job(sweep, f"{num}-lenet-sgd-basic-seed={num}", fp=f"{num:016x}")
        progress.on_job_end(config(num), JobReturn(status=JobStatus.COMPLETED, _return_value=0.5))
    ends = [r.getMessage() for r in caplog.records if " done: " in r.getMessage()]
    assert [line.split(" done:")[0] for line in ends] == [
        f"job {n + 1}/6 {n}-lenet-sgd-basic-seed={n}" for n in range(5)]
    assert not any("ETA" in line for line in ends[:4]), ends
    assert re.search(r"; sweep ETA 1m4[01]s\)$", ends[4]), ends[4]
