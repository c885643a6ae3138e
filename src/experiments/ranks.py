"""Which of a job's processes this one is (DDP: experiments/training/distributed.py holds the
process group and its collectives). Here, below every layer that shards work by rank: the data
path takes its share of each batch by it."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    """This process's place among the job's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank among this node's processes: which of its GPUs
    local_world_size: int = 1  # this node's processes: its cores are shared among them
    launched: bool = False  # started by torchrun or as Slurm tasks (else: spawned by rank 0)

    def gpu_slot(self, job_num: int) -> int:
        """Which of the visible GPUs this rank takes: a launcher's ranks, their local rank; ranks
        the job spawned, job k's kN..kN+N-1 (so parallel jobs of a sweep take different ones)."""
        return self.local_rank if self.launched else job_num * self.world_size + self.rank

    @property
    def main(self) -> bool:
        """Rank 0: the one that owns the job directory (summary, metrics, runs, checkpoint)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def launched_ranks() -> Ranks | None:
    """This process's place when a launcher started the job's ranks (torchrun, or several tasks of
    one Slurm step through submitit); None when it did not. Under submitit the variables
    torch.distributed's env:// reads are exported first."""
    env = os.environ
    if env.get("SUBMITIT_EXECUTOR") and "WORLD_SIZE" not in env:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        if JobEnvironment().num_tasks > 1:
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
        return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")),
                     int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])), launched=True)
    return None


def rank_seed(seed: int, rank: int) -> int:
    """Each rank's seed for its own random draws (augmentation): distinct for every rank of any
    seed below 10^7; rank 0's is `seed` itself."""
    return seed + 10_000_019 * rank


def cores_allotted(ranks: Ranks = SINGLE, side_by_side: int = 1) -> int:
    """The cores this process may use: Slurm's allotment (SLURM_CPUS_PER_TASK), else the cores
    of its affinity mask split among this node's ranks and the jobs running side by side
    (joblib's n_jobs). torch's threads and the DataLoader's workers follow it."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // (ranks.local_world_size * side_by_side))
