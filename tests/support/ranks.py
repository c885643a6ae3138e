"""A function run on several gloo ranks, in forked copies of the test process (no interpreter
start-up: support/forked.py), each on one thread: the direct DDP tests (a step, an evaluation)
without a job around them, and whole DDP jobs whose every rank is such a fork (`train_on_ranks`)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from experiments.ranks import Ranks
from experiments.training.interrupts import GO_ON, Interrupts
from support.forked import fork, wait

CONF = Path(__file__).resolve().parents[2] / "conf"


def on_ranks(fn: Callable[[Ranks], object], world_size: int = 2, timeout_s: float = 120) -> list:
    """`fn(ranks)` on every rank of a gloo process group; each rank's return value, in rank order.
    A rank that fails, or a group that hangs past `timeout_s`, fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def rank_main(rank: int) -> None:
            dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}",
                                    rank=rank, world_size=world_size)
            try:
                result = fn(Ranks(rank, world_size, rank, world_size))
                torch.save(result, folder / f"{rank}.pt")
            finally:
                dist.destroy_process_group()

        pids = [fork(lambda r=rank: rank_main(r)) for rank in range(world_size)]
        deadline = time.monotonic() + timeout_s
        ended: set[int] = set()  # reaped: a rank's file tells whether it succeeded
        while len(ended) < len(pids) and time.monotonic() < deadline:
            ended.update(pid for pid in pids if pid not in ended and os.waitpid(pid, os.WNOHANG)[0])
            time.sleep(0.05)
        for pid in pids:
            if pid not in ended:
                os.kill(pid, signal.SIGKILL)
                wait(pid)
        missing = [r for r in range(world_size) if not (folder / f"{r}.pt").exists()]
        assert not missing, f"ranks {missing} failed or hung (their output is above)"
        return [torch.load(folder / f"{r}.pt", weights_only=False) for r in range(world_size)]


def write_start_method(rank_job, ranks: Ranks, store, failures) -> None:
    """A spawned rank's life (experiments.spawn.RankProcesses' target) for the start-method test:
    it writes the start method its own processes (a DataLoader's workers) would get."""
    import multiprocessing

    Path(rank_job.extra["out"]).write_text(multiprocessing.get_start_method())


class Killed(BaseException):
    """A rank's crash in the middle of a step (see `Scripted`)."""


class Scripted(Interrupts):
    """A rank's interrupts, answering as scripted: `answers` maps a poll's number (the trainer
    polls after every optimizer step and at every epoch's end) to GO_ON, SAVE or a signal's
    number; from poll `killed` on, the rank crashes (Killed), as every rank of a job killed
    with kill -9 does: nothing after its last checkpoint is saved."""

    def __init__(self, answers: dict[int, int] | None = None, killed: int | None = None):
        super().__init__(names=())
        self.answers, self.killed, self.polls = answers or {}, killed, 0

    def poll(self) -> int:
        self.polls += 1
        if self.polls == self.killed:
            raise Killed
        return self.answers.get(self.polls, GO_ON)


def train_on_ranks(overrides, out: Path, answers: dict[int, int] | None = None,
                   killed: int | None = None, world_size: int = 2):
    """The job of `python train.py OVERRIDES hydra.run.dir=OUT`, on `world_size` forked gloo ranks, each
    running `experiments.job.train` as the task function's ranks do (rank 0 writes; a checkpoint
    in `out` is resumed). Rank 0's interrupts answer `answers` (a signal reaches rank 0, which
    decides for every rank); every rank crashes at poll `killed`. Returns rank 0's result, or
    "interrupted", "killed" or "refused: <the ConfigError's message>"."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config.checks import check_config
    from experiments.errors import ConfigError
    from experiments.job import JobInfo, train
    from experiments.report.job_summary import SummaryFile
    from experiments.training.checkpoint import Checkpoint
    from experiments.training.interrupts import Interrupted

    out.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"paths.root_dir={out.parent}",
                                                      f"paths.output_dir={out}"])

    def rank_job(ranks: Ranks):
        options = check_config(cfg)
        record = OmegaConf.to_container(cfg, resolve=True)
        job = JobInfo(out, "job", None, {}, [], False, 0)
        interrupts = Scripted(answers if ranks.main else None, killed)
        try:
            return train(cfg, options, job, record, Checkpoint(out, record, options.resume),
                         SummaryFile(job) if ranks.main else None, ranks, interrupts=interrupts)
        except Interrupted:
            return "interrupted"
        except Killed:
            return "killed"
        except ConfigError as refused:
            return f"refused: {refused}"

    return on_ranks(rank_job, world_size)[0]
