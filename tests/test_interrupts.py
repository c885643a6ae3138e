"""A signal is a checkpoint: SIGTERM, SIGUSR2 or Ctrl-C in the middle of an epoch stops the job
after the step in progress, with a checkpoint of its place in the epoch and an `interrupted`
summary; the same command then continues from that step to exactly the numbers of an
uninterrupted run. Also: a second signal while it saves, a signal during validation, and the
checkpoints of trainer.checkpoint_every_min after a kill -9. Jobs run in forked copies of this
process (support/forked.py); the last test signals `python train.py` on 2 DDP ranks."""

import csv
import json
import signal
import time

import pytest

from conftest import run_train, start_train
from experiments.training.interrupts import SAVE
from support.forked import fork, kill_after_checkpoint, signal_at_step, signal_during_validation, wait
from support.jobs import run_here
from support.ranks import train_on_ranks

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
    before = fit["train_time_s"] + fit["progress"]["seconds"]  # (epoch 1; epoch 2's 5 steps)
    assert fit["train_time_s"] > 0 and fit["progress"]["seconds"] > 0
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
