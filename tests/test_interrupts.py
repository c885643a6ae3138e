"""A signal is a checkpoint: SIGTERM, SIGUSR2 or Ctrl-C in the middle of an epoch stops the job
after the step in progress, with a checkpoint of its place in the epoch and an `interrupted`
summary; the same command then continues from that step to exactly the numbers of an
uninterrupted run. Also: a second signal while it saves, a signal during validation, and the
checkpoints of trainer.checkpoint_every_min after a kill -9; after the last epoch, a signal
during the test (its rerun tests again, to the same numbers), while the job writes its result,
and between the jobs of a sweep, each of which still ends the process; Ctrl-C to every process
of the terminal with DataLoader workers. Jobs run in forked copies of this process
(support/forked.py); the DDP tests run on 2 ranks (forked gloo ranks, or `python train.py`)."""

import csv
import json
import logging
import os
import signal
import sys
import time

import pytest
import torch

import experiments.job as job_module
from conftest import ROOT, run_train, start_train
from experiments.report.job_summary import SummaryFile
from experiments.report.tracking import Tracker
from experiments.training.interrupts import SAVE, Interrupted, Interrupts
from experiments.training.options import TrainerOptions
from experiments.training.schedules import constant
from experiments.training.trainer import FitState, Trainer
from support.forked import (
    fork,
    kill_after_checkpoint,
    signal_at_step,
    signal_during_the_test,
    signal_during_validation,
    signal_on_call,
    stand_in_handler,
    wait,
)
from support.jobs import run_here, task_config
from support.ranks import on_ranks, train_on_ranks

# 12 optimizer steps per epoch (384 training images in batches of 32), about 1 s a job
TINY = ["experiment=smoke", "logger=none", "trainer.progress=false", "model=preact",
        "model.width=4", "data.train_size=448", "data.val_size=64", "data.test_size=64",
        "trainer.epochs=3", "trainer.ema_decay=0.9"]
TOGETHER = ["optim=sam", "mix=mixup", "trainer.grad_accum_steps=2",
            "trainer.batch_schedule={epochs:[2],sizes:[64],scale_lr:true}"]
# case: (overrides, signal, the optimizer step it arrives in, the steps of epoch 2 done by then)
CASES = {
    "SIGTERM": ([], signal.SIGTERM, 12 + 5, 5),
    "SIGUSR2, dataloader": (["loader=dataloader", "loader.workers=1", "aug=advanced"],
                            signal.SIGUSR2, 12 + 7, 7),
    # 6 accumulated steps in epoch 1, 3 at the doubled batch in epoch 2
    "SIGINT, SAM, mixup, accumulation, batch schedule": (TOGETHER, signal.SIGINT, 6 + 2, 2),
    # 12 micro-batches in groups of 5, 5, 2: the signal in the epoch's short last group, so the
    # resumed epoch has every step done and only validates
    "SIGTERM after a short last group": (["trainer.grad_accum_steps=5"], signal.SIGTERM, 3 + 3, 3),
}
NOT_COMPARED = ("time/epoch_s", "time/images_per_s")  # wall-clock, not results
RESULTS = ("test_acc", "test_loss", "test_acc_final", "best_val_acc", "best_val_loss",
           "best_epoch", "epochs_completed")


def metrics(out):
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in rows]


def summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def assert_same_numbers(resumed, clean) -> None:
    for key in RESULTS:
        assert summary(resumed)[key] == summary(clean)[key], key
    assert metrics(resumed) == metrics(clean)


def interrupt_and_rerun(args, out, interrupt, signum) -> dict:
    """Run the job with `interrupt` installed: it must exit 128 + signum with an interrupted
    summary; then the same command completes. Returns the first run's summary."""

    def interrupted():
        interrupt()
        run_here(args, out)

    assert wait(fork(interrupted)) == 128 + signum
    stopped = summary(out)
    assert stopped["status"] == "interrupted" and signal.Signals(signum).name in stopped["error"]
    assert wait(fork(lambda: run_here(args, out))) == 0
    return stopped


@pytest.mark.parametrize("case", CASES)
def test_a_signal_inside_an_epoch_resumes_from_its_step_to_the_uninterrupted_numbers(tmp_path, case):
    overrides, signum, step, steps_in_epoch = CASES[case]
    args = [*TINY, *overrides]
    clean, out = tmp_path / "clean", tmp_path / "signalled"
    reference = fork(lambda: run_here(args, clean))
    stopped = interrupt_and_rerun(args, out, lambda: signal_at_step(signum, step), signum)
    assert stopped["epochs_completed"] == 1  # what was done and checkpointed, not 0
    assert f"in epoch 2 after step {steps_in_epoch}" in stopped["error"]
    assert wait(reference) == 0
    resumed = summary(out)
    assert resumed["status"] == "completed"
    assert (resumed["resumed_from_epoch"], resumed["resumed_from_step"]) == (1, steps_in_epoch)
    assert_same_numbers(out, clean)


def test_a_resumed_jobs_train_time_is_its_checkpoints_and_this_processs(tmp_path):
    """train_time_s counts the training passes of every epoch the job completed, by whichever
    process; time_s.train this process's only. Resumed inside epoch 2, the difference is what
    the checkpoint holds: epoch 1's passes and epoch 2's steps before the signal (a kill's lost
    steps are in neither: redone, they count once)."""
    import torch

    out = tmp_path / "job"

    def interrupted():
        signal_at_step(signal.SIGTERM, 12 + 5)
        run_here(TINY, out)

    assert wait(fork(interrupted)) == 128 + signal.SIGTERM
    fit = torch.load(out / "checkpoint.pt", weights_only=True)["fit"]
    (place,) = fit["progress"]  # (one rank's place in epoch 2)
    before = fit["train_time_s"] + place["seconds"]  # (epoch 1; epoch 2's 5 steps)
    assert fit["train_time_s"] > 0 and place["seconds"] > 0
    assert wait(fork(lambda: run_here(TINY, out))) == 0
    done = summary(out)
    assert done["resumed_from_step"] == 5 and done["time_s"]["train"] < done["train_time_s"]
    assert done["train_time_s"] == pytest.approx(before + done["time_s"]["train"], abs=0.02)


def test_a_second_signal_while_it_saves_changes_nothing(tmp_path):
    clean, out = tmp_path / "clean", tmp_path / "signalled"
    reference = fork(lambda: run_here(TINY, clean))
    interrupt_and_rerun(TINY, out, lambda: signal_at_step(signal.SIGTERM, 12 + 4, again_while_saving=True),
                        signal.SIGTERM)
    assert wait(reference) == 0
    assert summary(out)["resumed_from_step"] == 4
    assert_same_numbers(out, clean)


def test_a_signal_during_validation_stops_at_the_end_of_that_epoch(tmp_path):
    clean, out = tmp_path / "clean", tmp_path / "signalled"
    reference = fork(lambda: run_here(TINY, clean))
    stopped = interrupt_and_rerun(TINY, out, lambda: signal_during_validation(signal.SIGTERM),
                                  signal.SIGTERM)
    assert stopped["epochs_completed"] == 1 and "after epoch 1" in stopped["error"]
    assert wait(reference) == 0
    assert (summary(out)["resumed_from_epoch"], summary(out)["resumed_from_step"]) == (1, 0)
    assert_same_numbers(out, clean)


def test_checkpoints_on_the_clock_lose_at_most_their_interval_to_a_kill(tmp_path):
    # every step is past a 1e-9-minute interval: a checkpoint after each one; SIGKILL 2 steps
    # after the first, inside epoch 1
    args = [*TINY, "trainer.checkpoint_every_min=1e-9"]
    clean, out = tmp_path / "clean", tmp_path / "killed"
    reference = fork(lambda: run_here(TINY, clean))  # (the interval changes no number)

    def crash():
        kill_after_checkpoint()
        run_here(args, out)

    assert wait(fork(crash)) == -9
    assert wait(fork(lambda: run_here(args, out))) == 0
    assert wait(reference) == 0
    resumed = summary(out)
    assert resumed["resumed_from_epoch"] == 0 and resumed["resumed_from_step"] >= 2
    assert_same_numbers(out, clean)


# DDP on 2 ranks, each 16 images of every global batch of 32: the trainer polls after each of an
# epoch's 12 steps and at its end, so poll 13 ends epoch 1 and poll 13 + s is step s of epoch 2.
# case: (overrides, rank 0's answers by poll, the poll every rank crashes at, where it resumes)
DDP_CASES = {
    "device loader, mixup, SIGTERM": (["mix=mixup"], {13 + 5: signal.SIGTERM}, None, (1, 5)),
    "dataloader, CutMix/MixUp, on the clock, then kill -9": (
        ["loader=dataloader", "loader.workers=1", "aug=advanced", "mix=cutmix_mixup"],
        {13 + 5: SAVE}, 13 + 7, (1, 5)),
    "device loader, mixup, SIGTERM at an epoch's end": (["mix=mixup"], {13: signal.SIGTERM}, None, (1, 0)),
}


@pytest.fixture(scope="module")
def uninterrupted_ddp(tmp_path_factory):
    """uninterrupted_ddp(args) -> (rank 0's result, the job's directory): run once per args."""
    runs = {}

    def run(args):
        if tuple(args) not in runs:
            out = tmp_path_factory.mktemp("uninterrupted") / "job"
            runs[tuple(args)] = train_on_ranks(args, out), out
        return runs[tuple(args)]

    return run


@pytest.mark.parametrize("case", DDP_CASES)
def test_a_ddp_job_stopped_inside_an_epoch_resumes_to_the_uninterrupted_numbers(tmp_path, case,
                                                                               uninterrupted_ddp):
    # every rank draws its own augmentation and sums its own images: each must continue its own
    overrides, answers, killed, resumed_at = DDP_CASES[case]
    args = [*TINY, "trainer.epochs=2", *overrides]  # (epoch 2 is where it stops and resumes)
    out = tmp_path / "stopped"
    uninterrupted, clean = uninterrupted_ddp(args)
    assert train_on_ranks(args, out, answers, killed) == ("killed" if killed else "interrupted")
    resumed = train_on_ranks(args, out)
    assert (resumed["resumed_from_epoch"], resumed["resumed_from_step"]) == resumed_at
    assert resumed["resume_note"] is None and resumed["world_size"] == 2
    for key in RESULTS:
        assert resumed[key] == uninterrupted[key], key
    assert metrics(out) == metrics(clean)


def test_sigterm_stops_every_rank_of_a_ddp_job_at_one_step_and_its_rerun_completes(tmp_path):
    run = tmp_path / "run"
    command = ["experiment=smoke", "logger=none", "trainer.progress=false", "trainer.devices=2",
               "trainer.epochs=2", "trainer.keep_checkpoint=true", f"hydra.run.dir={run}"]
    job = start_train(*command, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # inside epoch 2
    job.send_signal(signal.SIGTERM)  # to rank 0 only: it decides for both
    started = time.monotonic()
    assert job.wait(timeout=60) == 128 + signal.SIGTERM, job.output()[1][-3000:]
    assert time.monotonic() - started < 20  # within seconds
    stopped = summary(run)
    assert stopped["status"] == "interrupted" and stopped["epochs_completed"] == 1
    done = run_train(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = summary(run)
    assert resumed["status"] == "completed" and resumed["world_size"] == 2
    assert resumed["resumed_from_epoch"] == 1 and resumed["resumed_from_step"] > 0
    assert [r["epoch"] for r in csv.DictReader(open(run / "metrics.csv"))] == ["1", "2"]


# --- after the last epoch ---------------------------------------------------------------------

# case: (overrides, signal, the pass of the test it comes in)
IN_THE_TEST = {
    "SIGTERM in the test's first pass": ([], signal.SIGTERM, 1),
    "SIGUSR2 before its TTA pass": (["trainer.tta=flip"], signal.SIGUSR2, 2),
}


def no_training(*args, **kwargs):
    raise AssertionError("the rerun of a job stopped in its test trained")


@pytest.mark.parametrize("case", IN_THE_TEST)
def test_a_signal_during_the_test_stops_it_and_the_rerun_only_tests_to_the_same_numbers(tmp_path, case):
    overrides, signum, test_pass = IN_THE_TEST[case]
    args, chained = [*TINY, "trainer.epochs=2", *overrides], tmp_path / "chained"
    clean, out = tmp_path / "clean", tmp_path / "signalled"
    reference = fork(lambda: run_here(args, clean))

    def interrupted():
        stand_in_handler(signum, chained)  # (submitit's would requeue the job)
        signal_during_the_test(signum, test_pass)
        run_here(args, out)

    assert wait(fork(interrupted)) == 128 + signum
    stopped = summary(out)
    assert stopped["status"] == "interrupted", stopped
    assert "during the test after the last epoch (2)" in stopped["error"]
    assert stopped["epochs_completed"] == 2 and stopped["test_acc"] is None
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()
    assert chained.read_text() == str(int(signum))  # handed on, after the summary was written

    def rerun():
        Trainer.train_epoch = no_training
        run_here(args, out)

    assert wait(fork(rerun)) == 0
    assert wait(reference) == 0
    resumed = summary(out)
    assert resumed["status"] == "completed"
    assert (resumed["resumed_from_epoch"], resumed["resumed_from_step"]) == (2, 0)
    assert_same_numbers(out, clean)
    assert resumed["test_tta_acc"] == summary(clean)["test_tta_acc"]
    assert (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()


def is_model_file(obj, path, *args, **kwargs) -> bool:
    return str(path).endswith("model.pt")


# window: (overrides, what sends the signal there)
AFTER_THE_TEST = {
    "the test's last pass": ([], lambda signum: signal_during_the_test(signum, 2)),
    "TensorBoard's close": (["logger=tensorboard"], lambda signum: signal_on_call(Tracker, "__exit__", signum)),
    "model.pt's write": ([], lambda signum: signal_on_call(torch, "save", signum, when=is_model_file)),
    "summary.json's write": ([], lambda signum: signal_on_call(SummaryFile, "completed", signum)),
}


@pytest.mark.parametrize("window", AFTER_THE_TEST)
def test_a_signal_after_the_test_lets_the_result_be_saved_then_ends_the_process(tmp_path, window):
    overrides, send_there = AFTER_THE_TEST[window]
    args, out, chained = [*TINY, "trainer.epochs=1", *overrides], tmp_path / "run", tmp_path / "chained"

    def signalled():
        stand_in_handler(signal.SIGTERM, chained)
        send_there(signal.SIGTERM)
        run_here(args, out)

    assert wait(fork(signalled)) == 128 + signal.SIGTERM
    done = summary(out)
    assert done["status"] == "completed" and done["test_acc"] is not None
    assert (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()
    assert chained.read_text() == str(int(signal.SIGTERM))
    stored = (out / "summary.json").read_bytes()
    assert run_here(args, out) == done["best_val_acc"]  # the rerun returns the stored result
    assert (out / "summary.json").read_bytes() == stored


def test_a_job_that_fails_after_a_signal_still_ends_the_process_a_sweeps_too(tmp_path):
    """The signal, then a failure before the job reached a place to stop at (writing the epoch's
    metrics): the job is marked failed, and the sweep stops instead of running its next job."""
    out = tmp_path / "sweep" / "0-job"

    def failing():
        def log_epoch(self, epoch, metrics):
            os.kill(os.getpid(), signal.SIGTERM)
            raise OSError("the disk went away")

        Tracker.log_epoch = log_epoch
        run_here([*TINY, "trainer.epochs=1"], out, multirun=True)

    assert wait(fork(failing)) == 128 + signal.SIGTERM
    assert summary(out)["status"] == "failed" and "the disk went away" in summary(out)["error"]


# `python DRIVER ARGS`: train.py's Hydra app, which sends itself SIGTERM when its first job has
# returned (the window between a job and the next, or before the process's end), or when the
# sweep's final report starts
DRIVER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train
from experiments.report.callbacks import SweepSummary
sent = []
def send():
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
def after(function):
    return lambda *args, **kwargs: (function(*args, **kwargs), send())[0]
def before(function):
    return lambda *args, **kwargs: (send(), function(*args, **kwargs))[1]
if {after_a_job!r}:
    train.run = after(train.run)
else:
    SweepSummary.final_report = before(SweepSummary.final_report)
sys.argv[1:1] = ["--config-path", {conf!r}]  # (imported, not run as __main__: Hydra asks)
train.main()
"""
# where: (a sweep, or one run; after the first job, or at the sweep's report; the message)
NO_JOB_RUNNING = {
    "between two jobs of a sweep": (True, True, "SIGTERM while no job was running: stopping"),
    "after a single run's job": (False, True, "SIGTERM while no job was running: stopping"),
    "during the sweep's report": (True, False, "SIGTERM at the end: stopping"),
}


@pytest.mark.parametrize("where", NO_JOB_RUNNING)
def test_a_signal_while_no_job_runs_ends_the_process_at_once(tmp_path, where):
    sweeps, after_a_job, message = NO_JOB_RUNNING[where]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), conf=str(ROOT / "conf"), after_a_job=after_a_job))
    sweep, single, first = tmp_path / "sweep", tmp_path / "run", "0-preact-sgd-basic-seed=0"
    args = (["-m", *TINY, "trainer.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}",
             "hydra.callbacks.sweep_summary.plots=false"] if sweeps
            else [*TINY, "trainer.epochs=1", f"hydra.run.dir={single}"])
    from support import preloaded

    proc = preloaded.run([sys.executable, str(driver), *args], tmp_path, os.environ.copy(), 300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert message in proc.stdout + proc.stderr
    if not sweeps:
        assert summary(single)["status"] == "completed"
    elif after_a_job:  # the next job never started; the report was written at the exit
        assert [d.name for d in sweep.iterdir() if d.is_dir()] == [first]
        assert summary(sweep / first)["status"] == "completed"
        assert first in (sweep / "summary.md").read_text()
    else:  # every job ran; the sweep's tables were written after each
        assert [summary(d)["status"] for d in sorted(sweep.iterdir()) if d.is_dir()] == ["completed"] * 2


# --- the processes around the job -------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_every_process_of_the_job_is_the_jobs_alone_not_its_dataloader_workers(tmp_path, signum):
    """Ctrl-C signals every process of the terminal's foreground group, Slurm every process of
    the job: the DataLoader workers (2 for training, 2 for validation by epoch 2) leave it to the
    job, which logs one warning and checkpoints (no worker died of it, no batch was lost)."""
    args, out, log_file = [*TINY, "loader=dataloader", "loader.workers=2"], tmp_path / "run", tmp_path / "log"

    def signalled():
        os.setpgid(0, 0)  # a process group of its own, as a terminal's foreground job has
        handler = logging.FileHandler(log_file)  # (the workers inherit it)
        handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
        logging.getLogger().addHandler(handler)
        signal_on_call(Trainer, "ask_interrupts", signum, when=lambda self, *_: self.steps_taken == 12 + 5,
                       group=True)
        run_here(args, out)

    assert wait(fork(signalled)) == 128 + signum, log_file.read_text()[-3000:]
    warnings = [line for line in log_file.read_text().splitlines() if "checkpointing and stopping" in line]
    assert len(warnings) == 1, warnings
    stopped = summary(out)
    assert stopped["status"] == "interrupted" and "in epoch 2 after step 5" in stopped["error"]


def test_a_dataloader_worker_ignores_the_stop_signals_but_the_jobs_own_sigterm(tmp_path):
    """`leave_signals_to_the_job` in a stand-in worker (whatever start method made it: a new
    interpreter inherits no handler): Ctrl-C, USR2 and another process's SIGTERM leave it
    running; the job's SIGTERM (multiprocessing's terminate() at exit) ends it, with 0, as
    torch's own handler does."""
    from experiments.batches.workers import leave_signals_to_the_job

    job = os.getpid()

    def worker():
        leave_signals_to_the_job(("SIGTERM", "SIGUSR2", "SIGINT"), job, 0)
        (tmp_path / "ready").touch()
        time.sleep(60)
        os._exit(3)  # (not ended)

    pid = fork(worker)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for signum in (signal.SIGINT, signal.SIGUSR2):
        os.kill(pid, signum)
    assert wait(fork(lambda: os.kill(pid, signal.SIGTERM))) == 0  # from another process
    time.sleep(0.3)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still running
    os.kill(pid, signal.SIGTERM)  # from the job
    assert wait(pid) == 0


def test_a_signal_to_rank_0_during_the_test_stops_every_rank_after_the_same_pass():
    """Under DDP the test's passes are collectives: the ranks ask together (the ranks a job
    spawns ignore the signals; rank 0's answer is every rank's), or one would wait forever."""
    def test(ranks):
        interrupts = Interrupts(())
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = Trainer(model, optimizer, constant(optimizer, epochs=1, steps=lambda e: e),
                          TrainerOptions(progress=False), device=torch.device("cpu"), ranks=ranks,
                          interrupts=interrupts)
        if ranks.main:
            interrupts.signum = signal.SIGTERM  # it came during the first pass, to rank 0 alone
        batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(2)]
        try:
            job_module.test_once(trainer, FitState(epoch=3), batches, "none")
        except Interrupted as stopped:
            return stopped.signum
        return None

    assert on_ranks(test, timeout_s=60) == [signal.SIGTERM] * 2


def test_a_launcher_rank_ends_as_rank_0_does_at_a_signal_after_the_test(tmp_path):
    """torchrun's or Slurm's ranks each get the signal: one that came after the ranks' last
    collective still ends the rank with 128 + its number, as rank 0 does."""
    import experiments.task as task
    from experiments.job import JobInfo
    from experiments.training.distributed import broadcast

    cfg = task_config(TINY, tmp_path)

    def rank(ranks):
        if ranks.main:
            broadcast("train", ranks)  # (what rank 0 tells the others)
            return None

        def training(*args, interrupts, **kwargs):
            interrupts.signum = signal.SIGTERM

        task.train, task.leave = training, lambda: None
        try:
            task.follow_rank_0(cfg, JobInfo(tmp_path, "job", None, {}, [], False, 0), ranks)
        except SystemExit as exited:
            return exited.code
        return "returned"

    assert on_ranks(rank, timeout_s=60) == [None, 128 + signal.SIGTERM]
