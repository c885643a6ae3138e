"""A job's other ranks, started by the job itself (`trainer.devices=N`, not under torchrun or Slurm
tasks): the task function's process is rank 0 and starts ranks 1..N-1 as fresh processes
(multiprocessing's spawn: CUDA cannot be forked), handing each the resolved config. Nothing
re-parses the command line, so this works alike in `python train.py`, in a multirun of the
basic launcher (every job spawns its own ranks and ends them), and under joblib or submitit.

The ranks meet at a TCPStore that rank 0 serves on a free port of this machine (port 0: the
kernel picks one, so parallel jobs never collide), and torch.distributed's process group runs
over it. When a rank fails, it sends rank 0 its message and exits; rank 0's next collective then
fails (gloo notices a closed connection; for NCCL a watcher aborts the group), and rank 0 ends
the job with that rank's message: the root cause, not the broken connection. When rank 0 fails,
it kills the others. Either way no process and no port is left behind.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from experiments.ranks import Ranks

log = logging.getLogger(__name__)

STOP_GRACE_S = 10  # how long a rank has to end by itself after rank 0, before it is killed
FAILED_WITHIN_S = 3  # a rank that broke rank 0's collective has failed by then (it ends at once)


@dataclass
class RankJob:
    """What a spawned rank is given: everything the job decided before it spawned."""

    config: dict  # the resolved config (secrets as they are: it is handed over, never written)
    record: dict  # the same, secrets masked: what the checkpoint's fingerprint is computed from
    options: Any  # TrainerOptions, checked
    job: Any  # JobInfo
    extra: dict = field(default_factory=dict)


class RankProcesses:
    """`with RankProcesses(n, rank_job) as ranks:` starts ranks 1..n-1 and serves their
    rendezvous (`ranks.store`); leaving the block ends every one still running."""

    def __init__(self, world_size: int, rank_job: RankJob, timeout_s: float, target: Callable):
        """`target(rank_job, ranks, store, failures)` is a rank's whole life (a module-level
        function: the spawned process imports it); `failures` takes its (rank, message)."""
        self.world_size, self.rank_job, self.timeout_s = world_size, rank_job, timeout_s
        self.target = target
        self.context = mp.get_context("spawn")
        self.failures = self.context.SimpleQueue()  # (rank, message) of a rank that failed
        self.processes: list = []
        self.store = None
        self.failed: tuple[int, str] | None = None

    def __enter__(self) -> RankProcesses:
        self.store = dist.TCPStore("127.0.0.1", 0, self.world_size, is_master=True,
                                   timeout=timedelta(seconds=self.timeout_s),
                                   wait_for_workers=False)
        if mp.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
            # a joblib (loky) worker: spawn hands its children the process's start method,
            # "loky", which a plain child cannot find ("cannot find context for 'loky'")
            mp.set_start_method("spawn", force=True)
        for rank in range(1, self.world_size):
            process = self.context.Process(
                target=rank_main, name=f"rank {rank}", daemon=False,
                args=(self.target, self.rank_job, Ranks(rank, self.world_size, rank, self.world_size),
                      self.store.port, self.timeout_s, self.failures))
            process.start()
            self.processes.append(process)
        threading.Thread(target=self.watch, daemon=True).start()
        self.wait_started()
        return self

    def wait_started(self) -> None:
        """Return once every rank has reached the store; a rank that ends before that (it
        could not start) fails the job now: rank 0 would otherwise wait for it in the process
        group's rendezvous, which nothing interrupts, for the whole collective timeout."""
        keys = [started_key(rank) for rank in range(1, self.world_size)]
        deadline = time.monotonic() + self.timeout_s
        while not self.store.check(keys):
            ended = [p for p in self.processes if p.exitcode is not None]
            if ended or time.monotonic() > deadline:
                self.__exit__(RuntimeError, None, None)
                which = ended[0].name if ended else "a rank"
                raise RuntimeError(f"{which} ended before it started training "
                                   f"({describe_exit(ended[0].exitcode) if ended else 'timed out'}); "
                                   "its traceback is on the job's standard error")
            time.sleep(0.05)

    def watch(self) -> None:
        """Abort the process group as soon as a rank ends badly, so that rank 0 does not wait
        in a collective for a rank that is gone (gloo notices by itself; NCCL would wait out
        its timeout)."""
        from multiprocessing.connection import wait

        pending = {p.sentinel: p for p in self.processes}
        while pending:
            for sentinel in wait(list(pending)):
                process = pending.pop(sentinel)
                # ended: its sentinel fires before it is reaped, here or by __exit__'s join, whose
                # waitpid can beat this thread's (which then reads None: a join here could return
                # with it, "TypeError" in describe_exit, seen under loader=dataloader)
                while process.exitcode is None:
                    time.sleep(0.01)
                if process.exitcode != 0:
                    self.failed = self.failed or (int(process.name.split()[-1]),
                                                  describe_exit(process.exitcode))
                    abort_group()
                    return

    def failure(self, wait_s: float = FAILED_WITHIN_S) -> str | None:
        """The first failed rank's message ("rank 1: ..."), if one failed. Rank 0's collective
        can fail before the watcher has seen the rank that broke it end: the ranks get
        `wait_s` to end (a failed one ends at once, a healthy one sits in its collective)."""
        deadline = time.monotonic() + wait_s
        while self.failures.empty() and self.failed is None and time.monotonic() < deadline:
            for process in self.processes:
                if process.exitcode not in (None, 0):
                    self.failed = (int(process.name.split()[-1]), describe_exit(process.exitcode))
            time.sleep(0.05)
        if not self.failures.empty():
            rank, message = self.failures.get()
            return f"rank {rank}: {message}"
        if self.failed is not None:
            return f"rank {self.failed[0]}: {self.failed[1]}"
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        for process in self.processes:  # rank 0 is done: the others end with it or are ended
            process.join(timeout=STOP_GRACE_S if exc_type is None else 0.5)
        for process in self.processes:
            if process.is_alive():  # (the ranks ignore the stop signals: rank 0 decides)
                process.kill()
                process.join()
        self.store = None  # the port is closed with the store


def describe_exit(code: int) -> str:
    return f"it ended with exit code {code}" if code > 0 else f"it was killed (signal {-code})"


def abort_group() -> None:
    try:
        from torch.distributed.distributed_c10d import _abort_process_group

        _abort_process_group()
    except Exception:  # noqa: BLE001 (gone already, or this torch has no abort: gloo fails alone)
        pass


def rank_main(target: Callable, rank_job: RankJob, ranks: Ranks, port: int, timeout_s: float,
              failures) -> None:
    """A spawned rank: it connects to rank 0's store, then runs `target`."""
    # the platform's start method, as rank 0 has it: a spawned process inherits "spawn", and
    # its DataLoader workers were new interpreters then: under trainer.devices=2 loader=dataloader
    # rank 1's each took seconds to start and 0.9 s to end (a smoke job: 16.6 s, 2026-12-02)
    mp.set_start_method(None, force=True)
    store = dist.TCPStore("127.0.0.1", port, ranks.world_size, is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    store.set(started_key(ranks.rank), "1")
    target(rank_job, ranks, store, failures)
    # done (its process group left, its log written): it ends here, not through the interpreter's
    # teardown of torch's and timm's modules, which rank 0 (and a sweep's next job) waited for:
    # 1.5-3.5 s a smoke job under trainer.devices=2, 0.08 s this way (this CPU, 2026-12-02)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def started_key(rank: int) -> str:
    return f"experiments/rank{rank}/started"
