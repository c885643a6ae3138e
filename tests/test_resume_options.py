"""Every option resumes: each optimizer (SAM around each base), each schedule, mixing, EMA, the
batch schedule, accumulation and the DataLoader path, killed for real (SIGKILL) inside an epoch
after a checkpoint and rerun, ends with exactly the numbers of an uninterrupted run.

The jobs run in forked copies of this process (support/forked.py), a real process killed for
real without an interpreter's start-up each; tests/test_resume.py kills `python train.py` itself.
"""

import csv
import json

import pytest

from support.forked import fork, kill_after_checkpoint, wait
from support.jobs import run_here

# small enough for ~1 s per job on one core, with 12 optimizer steps per epoch
TINY = ["experiment=smoke", "logger=none", "trainer.progress=false", "model=preact",
        "model.width=4", "data.train_size=448", "data.val_size=64", "data.test_size=64",
        "trainer.epochs=3"]
EMA = ["trainer.ema_decay=0.9"]
CASES = {
    "sgd": ["optim=sgd", *EMA],
    "adam": ["optim=adam", *EMA],
    "adamw": ["optim=adamw", *EMA],
    "rmsprop": ["optim=rmsprop", *EMA],
    "muon": ["optim=muon", *EMA],
    "sam(sgd)": ["optim=sam", *EMA],
    "sam(adam)": ["optim=sam", "optim@optim.base=adam", *EMA],
    "sam(adamw)": ["optim=sam", "optim@optim.base=adamw", *EMA],
    "sam(rmsprop)": ["optim=sam", "optim@optim.base=rmsprop", *EMA],
    "sam(muon)": ["optim=sam", "optim@optim.base=muon", *EMA],
    "plateau": ["sched=plateau", "sched.patience=0"],
    "step": ["sched=step", "sched.step_size=1"],
    "onecycle": ["sched=onecycle"],
    "mixing, accumulation": ["mix=cutmix_mixup", "trainer.grad_accum_steps=2"],
    "batch schedule": ["trainer.batch_schedule={epochs:[2],sizes:[64],scale_lr:true}",
                       "sched.warmup_epochs=2"],
    "dataloader": ["loader=dataloader", "loader.workers=1", "aug=advanced"],
}
NOT_COMPARED = ("time/epoch_s", "time/images_per_s")  # wall-clock, not results


def metrics(out):
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in rows]


@pytest.mark.parametrize("case", CASES)
def test_a_killed_job_resumes_to_the_uninterrupted_numbers(tmp_path, case):
    args = [*TINY, *CASES[case]]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    reference = fork(lambda: run_here(args, clean))  # side by side with the victim: 2 cores

    def crash():
        kill_after_checkpoint()
        run_here(args, killed)

    assert wait(fork(crash)) == -9  # SIGKILL, inside epoch 2
    assert json.loads((killed / "summary.json").read_text())["status"] == "running"
    assert wait(fork(lambda: run_here(args, killed))) == 0  # the same command again
    assert wait(reference) == 0
    resumed, uninterrupted = (json.loads((o / "summary.json").read_text()) for o in (killed, clean))
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 1
    for key in ("test_acc", "test_loss", "test_acc_final", "best_val_acc", "best_val_loss",
                "best_epoch", "epochs_completed"):
        assert resumed[key] == uninterrupted[key], key
    assert metrics(killed) == metrics(clean)
