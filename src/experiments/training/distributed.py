"""Several processes training one job (DDP): which rank this process is, torch.distributed's
process group, and the few collectives the trainer needs.

A job of `trainer.devices=N` runs as N processes (ranks), one per GPU (NCCL), or on a CPU one per
share of its cores (gloo). They come from one of two places:
- the job itself (`python train.py trainer.devices=N`, in any launcher): the task function's
  process is rank 0 and spawns the others, handing them the resolved config (experiments/spawn.py);
- a launcher that starts every rank, each running the task function: torchrun (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or the N tasks of a Slurm job under
  hydra-submitit-launcher (`tasks_per_node`, `nodes`), whose environment submitit's
  TorchDistributedEnvironment turns into the same variables.
With one rank there is no process group, and every collective here is the identity.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from experiments.ranks import Ranks

RUN_TIME = "EXPERIMENTS_RUN_TIME"  # the run's start, agreed by every rank (config/resolvers.py)
RENDEZVOUS: list = []  # the store of agree_on_run_time, which the process group then reuses


def agree_on_run_time() -> None:
    """Under torchrun every rank runs Hydra, and its ${now:...} read each rank's clock, up to a
    second apart: two run directories. Before Hydra starts, rank 0 publishes its time in a store
    at MASTER_ADDR:MASTER_PORT, every rank takes it (RUN_TIME, which the run directory's
    resolver reads), and the process group later meets at the same store (`join`)."""
    env = os.environ
    if not ("TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1) or RUN_TIME in env:
        return
    from datetime import datetime

    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=rank == 0,
                          timeout=timedelta(minutes=5))
    if rank == 0:
        store.set(RUN_TIME, datetime.now().isoformat())
    env[RUN_TIME] = store.get(RUN_TIME).decode()
    RENDEZVOUS.append(store)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def join(ranks: Ranks, device: torch.device, timeout_s: float, store=None) -> None:
    """Join the job's process group (rendezvous at `store`, or from the environment: env://)."""
    if dist.is_initialized():  # a launched process running a sweep's next job: already joined
        return
    options = dict(backend=backend_for(device), rank=ranks.rank, world_size=ranks.world_size,
                   timeout=timedelta(seconds=timeout_s))
    if device.type == "cuda":
        options["device_id"] = device  # NCCL binds to it at once (no guessing at the first call)
    store = store or (RENDEZVOUS[0] if RENDEZVOUS else None)
    if store is None:
        dist.init_process_group(init_method="env://", **options)
    else:
        dist.init_process_group(store=store, **options)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


MAX = dist.ReduceOp.MAX


def all_reduce(tensor: torch.Tensor, ranks: Ranks, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In place, over every rank (the identity for one)."""
    if ranks.distributed:
        dist.all_reduce(tensor, op=op)
    return tensor


def all_gather(obj, ranks: Ranks) -> list:
    """Every rank's `obj`, in rank order (picklable objects: generator states, error texts)."""
    if not ranks.distributed:
        return [obj]
    out = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, ranks: Ranks):
    """Rank 0's `obj` on every rank."""
    if not ranks.distributed:
        return obj
    box = [obj if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
