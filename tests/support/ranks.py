"""A function run on several gloo ranks, in forked copies of the test process (no interpreter
start-up: support/forked.py), each on one thread: the direct DDP tests (a step, an evaluation)
without a job around them."""

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
from support.forked import fork, wait


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
