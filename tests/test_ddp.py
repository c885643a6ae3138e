"""DDP, direct: on 2 gloo ranks (forked, one thread each) a step is the step on the whole batch,
evaluation counts every image once, and each rank is served its share of every batch."""

import functools
import multiprocessing
import os

import pytest
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from experiments.batches.device import DeviceLoader, Normalize
from experiments.batches.workers import WorkerLoader, torchvision_transform
from experiments.data import Split
from experiments.ranks import SINGLE, Ranks
from experiments.spawn import RankJob, RankProcesses
from experiments.training.muon import Muon
from experiments.training.options import TrainerOptions
from experiments.training.sam import SAM
from experiments.training.schedules import constant
from experiments.training.trainer import Trainer
from support.ranks import on_ranks, write_start_method

NORMALIZE = ([0.5] * 3, [0.25] * 3)


def images(n: int, seed: int = 0) -> Split:
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8),
                 torch.randint(0, 4, (n,), generator=gen))


def no_batchnorm_net() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01),
    "sam": lambda params: SAM(params, functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), rho=0.05),
    "muon": lambda params: Muon(params, lr=0.02, momentum=0.9, nesterov=True, ns_steps=5, weight_decay=0.0,
                                adamw_lr=1e-3, adamw_betas=(0.9, 0.95), adamw_eps=1e-10,
                                adamw_weight_decay=0.0, aux="adamw", edge_matrices="aux", sgd_lr=0.02,
                                sgd_momentum=0.9, sgd_nesterov=True, sgd_weight_decay=0.0),
}


def trainer_on(ranks: Ranks, optimizer: str, **options) -> Trainer:
    model = no_batchnorm_net()
    opt = OPTIMIZERS[optimizer](model.parameters())
    if ranks.distributed:
        model = DistributedDataParallel(model)
    return Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: e),
                   TrainerOptions(progress=False, **options), device=torch.device("cpu"), ranks=ranks)


def micro_batches(split: Split, rank: int, world: int, accum: int, step: int):
    """Step `step`'s micro-batches of rank `rank` of `world` (world=1: the whole global batch):
    a global batch of 16 in `accum` micro-batches, each rank's part of each one."""
    x = (split.images.float() - 128) / 64
    per_micro = 16 // accum
    out = []
    for i in range(accum):
        start = step * 16 + i * per_micro
        part = per_micro // world
        index = slice(start + rank * part, start + (rank + 1) * part)
        out.append((x[index], split.labels[index]))
    return out


@pytest.mark.parametrize(("optimizer", "accum"), [("sgd", 1), ("sgd", 2), ("adamw", 2), ("sam", 2),
                                                      ("muon", 2)])
def test_a_ddp_step_is_the_step_on_the_whole_global_batch(optimizer, accum):
    # two steps (momentum and Adam's moments carry over), micro-batches accumulated under no_sync
    # but the last; SAM's two passes are each all-reduced
    split = images(32)

    def steps(ranks: Ranks):
        trainer = trainer_on(ranks, optimizer, grad_accum_steps=accum)
        for step in range(2):
            trainer.optimizer_step(micro_batches(split, ranks.rank, ranks.world_size, accum, step))
        return [p.detach().clone() for p in trainer.eval_model.parameters()]

    alone = on_ranks(steps, world_size=1)[0]
    both = on_ranks(steps)
    for rank_params in both:
        for p, q in zip(rank_params, alone, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert any((p != q).any() for p, q in zip(alone, [p.clone() for p in no_batchnorm_net().parameters()],
                                               strict=True))  # the steps moved the weights


def test_a_nonfinite_loss_on_one_rank_stops_every_rank_after_that_step():
    """Only rank 1's loss goes NaN, in step 2: both ranks stop after step 2, together (a rank that
    stopped alone would leave the other waiting in the next step's all-reduce)."""
    from experiments.training.divergence import DivergedError
    from support.batches import PreMadeBatches

    split = images(64)

    def epoch(ranks: Ranks):
        trainer = trainer_on(ranks, "sgd")
        batches = PreMadeBatches(micro_batches(split, ranks.rank, ranks.world_size, 1, step)[0]
                                 for step in range(4))
        if ranks.rank == 1:
            batches[1][0][0, 0, 0, 0] = float("nan")
        try:
            trainer.train_epoch(batches)
        except DivergedError as err:
            return trainer.steps_taken, str(err)
        return trainer.steps_taken, None

    (steps0, error0), (steps1, error1) = on_ranks(epoch)
    assert steps0 == steps1 == 2 and error0 == error1 and "NaN/inf by step 2 in fp32" in error0


def device_loader(split: Split, ranks: Ranks, batch: int, shuffle: bool = False) -> DeviceLoader:
    return DeviceLoader(split, batch, Normalize(*NORMALIZE, "cpu"), device="cpu", shuffle=shuffle,
                        drop_last=shuffle, seed=3, ranks=ranks)


def worker_loader(split: Split, ranks: Ranks, batch: int, shuffle: bool = False) -> WorkerLoader:
    transform = torchvision_transform(None, *NORMALIZE, size=8)
    return WorkerLoader(split, batch, transform, device="cpu", workers=0, shuffle=shuffle,
                        drop_last=shuffle, seed=3, ranks=ranks)


LOADERS = {"device": device_loader, "dataloader": worker_loader}


@pytest.mark.parametrize("loader", LOADERS)
def test_sharded_evaluation_equals_one_process_exactly(loader):
    split = images(37, seed=1)  # 37 = 4 batches of 8 and one of 5: 3 on rank 0, 2 on rank 1

    def evaluate(ranks: Ranks):
        sharded = trainer_on(ranks, "sgd").evaluate(LOADERS[loader](split, ranks, batch=8))
        # the same weights in one process: every batch, one after another
        alone = trainer_on(SINGLE, "sgd").evaluate(LOADERS[loader](split, SINGLE, batch=8))
        return sharded, alone

    (rank0, alone), (rank1, _) = on_ranks(evaluate)  # (the single run on a rank: one thread)
    assert rank0 == rank1 == alone  # exactly: float64 sums of the same float32 batch sums
    assert 0 < alone["loss"]


@pytest.mark.parametrize("loader", LOADERS)
def test_eval_shards_cover_every_image_once(loader):
    split = images(37)
    split = Split(split.images, torch.arange(37))  # each image's label is its index
    served = [labels for r in range(2)
              for _, labels in LOADERS[loader](split, Ranks(r, 2, r, 2), batch=8)]
    assert sorted(len(b) for b in served) == [5, 8, 8, 8, 8]  # the batches one process serves
    assert torch.equal(torch.cat(served).sort().values, torch.arange(37))  # none twice, none left


def test_each_rank_trains_on_its_part_of_every_global_batch():
    # with one shared order generator, rank r's batch is the r-th half of one process's batch
    split = images(40)
    alone = [labels for _, labels in device_loader(split, SINGLE, 16, shuffle=True)]
    halves = [[labels for _, labels in device_loader(split, Ranks(r, 2, r, 2), 16, shuffle=True)]
              for r in range(2)]
    assert len(alone) == len(halves[0]) == len(halves[1]) == 2  # 40 // 16, the rest dropped
    for k, batch in enumerate(alone):
        assert torch.equal(torch.cat([halves[0][k], halves[1][k]]), batch)


def test_the_dataloader_path_shards_the_same_way():
    split = images(40)
    alone = [labels for _, labels in worker_loader(split, SINGLE, 16, shuffle=True)]
    halves = [[labels for _, labels in worker_loader(split, Ranks(r, 2, r, 2), 16, shuffle=True)]
              for r in range(2)]
    for k, batch in enumerate(alone):
        assert torch.equal(torch.cat([halves[0][k], halves[1][k]]), batch)
    assert [len(b) for b in halves[0]] == [8, 8]


def test_each_rank_augments_with_its_own_generator():
    from experiments.batches.augment import BatchAugment

    split = images(32)
    augmented = []
    for r in range(2):
        loader = DeviceLoader(split, 16, Normalize(*NORMALIZE, "cpu"), device="cpu", shuffle=False,
                              augment=BatchAugment(crop_padding=2, flip=True), drop_last=True,
                              seed=3, ranks=Ranks(r, 2, r, 2))
        augmented.append(loader.augment_generator.initial_seed())
        assert loader.order_generator.initial_seed() == 3
    assert augmented[0] == 3 and augmented[1] != 3


def test_the_ranks_must_divide_every_training_batch():
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.batch_size=30 is the global batch of 4 ranks"):
        TrainerOptions(batch_size=30, devices=4)


def test_resuming_with_more_ranks_continues_the_shared_order_and_says_it_is_not_bit_identical(tmp_path):
    from experiments.training.checkpoint import restore, save_checkpoint
    from experiments.training.trainer import FitState

    def trainer_of(ranks: Ranks) -> Trainer:  # (no process group is needed to save or load)
        model = no_batchnorm_net()
        opt = OPTIMIZERS["sgd"](model.parameters())
        return Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: e),
                       TrainerOptions(progress=False), device=torch.device("cpu"), ranks=ranks)

    split = images(32)
    alone = device_loader(split, SINGLE, 16, shuffle=True)
    list(alone)  # one pass: the generators moved on
    save_checkpoint(tmp_path / "c.pt", trainer_of(SINGLE), FitState(epoch=1), alone.generators, {}, {})
    payload = torch.load(tmp_path / "c.pt", weights_only=True)

    new_rank = device_loader(split, Ranks(1, 2, 1, 2), 16, shuffle=True)
    _, note = restore(payload, trainer_of(Ranks(1, 2, 1, 2)), new_rank.generators)
    assert torch.equal(new_rank.order_generator.get_state(), alone.order_generator.get_state())
    fresh = device_loader(split, Ranks(1, 2, 1, 2), 16, shuffle=True).augment_generator
    assert torch.equal(new_rank.augment_generator.get_state(), fresh.get_state())  # its own seed
    assert "2 ranks" in note and "rank 1's data generators" in note and "not bit-identical" in note

    _, same = restore(payload, trainer_of(SINGLE), device_loader(split, SINGLE, 16, True).generators)
    assert same is None  # the same setup: nothing to say


def test_sync_batchnorm_on_a_cpu_says_it_runs_on_gpus_only(compose_cfg):
    from experiments.errors import ConfigError
    from experiments.job import build_model

    cfg = compose_cfg(["experiment=smoke"])
    with pytest.raises(ConfigError, match="sync_batchnorm=true runs on GPUs only"):
        build_model(cfg, torch.device("cpu"), False, Ranks(0, 2, 0, 2), sync_batchnorm=True)


def test_gpu_slots_of_spawned_and_launched_ranks():
    # job k of a parallel sweep, N ranks each: GPUs kN..kN+N-1 (mod the visible ones); a
    # launcher's ranks: their local rank
    assert [Ranks(r, 2, r, 2).gpu_slot(job_num=3) for r in range(2)] == [6, 7]
    assert Ranks(5, 8, 1, 4, launched=True).gpu_slot(job_num=3) == 1


def test_cores_allotted_follow_slurm_then_the_affinity_mask_split_among_ranks_and_jobs(monkeypatch):
    from experiments.ranks import cores_allotted

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert cores_allotted() == 16
    assert cores_allotted(Ranks(0, 4, 0, 4)) == 4  # a node's 4 ranks
    assert cores_allotted(Ranks(0, 2, 0, 2), side_by_side=3) == 2  # and 3 joblib jobs: 16 // 6
    assert cores_allotted(Ranks(0, 8, 0, 8), side_by_side=4) == 1  # never 0
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cores_allotted(Ranks(0, 4, 0, 4)) == 3  # Slurm's allotment is already this task's


def test_a_spawned_rank_starts_its_own_processes_as_rank_0_does(tmp_path):
    # a spawned process inherits "spawn": its DataLoader workers were new interpreters
    out = tmp_path / "start_method"
    with RankProcesses(2, RankJob({}, {}, None, None, {"out": str(out)}), 60, write_start_method):
        pass
    assert out.read_text() == multiprocessing.get_start_method()


class EndedRank:
    """A rank that has ended (its sentinel fired) and was reaped by another thread: its exit
    code reads None once, then 0."""

    name = "rank 1"

    def __init__(self):
        self.sentinel, write_end = os.pipe()
        os.close(write_end)  # the sentinel fires
        self.codes = [None, 0]

    @property
    def exitcode(self):
        return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]

    def join(self, timeout=None):
        pass


def test_a_rank_reaped_by_rank_0s_join_is_not_taken_for_a_failed_one():
    processes = RankProcesses.__new__(RankProcesses)
    processes.processes, processes.failed = [EndedRank()], None
    processes.watch()
    assert processes.failed is None
