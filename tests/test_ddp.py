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
from support.ranks import on_ranks, train_on_ranks, write_start_method

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


def trainer_of(ranks: Ranks) -> Trainer:
    """A trainer as rank `ranks.rank` has it, unwrapped: no process group is needed to save a
    checkpoint of one rank, or to restore one."""
    model = no_batchnorm_net()
    opt = OPTIMIZERS["sgd"](model.parameters())
    return Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: e),
                   TrainerOptions(progress=False), device=torch.device("cpu"), ranks=ranks)


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


def test_ddp_steps_with_the_lookahead_are_one_process_steps():
    # the lookahead averages each rank's own copy; the ranks' weights stay one process's
    from experiments.training.lookahead import Lookahead
    from experiments.training.options import LookaheadOptions

    split = images(16 * 6)

    def steps(ranks: Ranks):
        model = no_batchnorm_net()
        opt = OPTIMIZERS["sgd"](model.parameters())
        lookahead = Lookahead(model, LookaheadOptions(every=2, decay=0.7, warmup_power=1.0), total_steps=6)
        trainer = Trainer(DistributedDataParallel(model) if ranks.distributed else model, opt,
                          constant(opt, epochs=1, steps=lambda e: e), TrainerOptions(progress=False),
                          device=torch.device("cpu"), ranks=ranks, lookahead=lookahead)
        for step in range(6):  # the weights set to the average at steps 2, 4 and 6 (the last)
            trainer.optimizer_step(micro_batches(split, ranks.rank, ranks.world_size, 1, step))
        return [p.detach().clone() for p in trainer.eval_model.parameters()]

    alone = on_ranks(steps, world_size=1)[0]
    for rank_params in on_ranks(steps):
        for p, q in zip(rank_params, alone, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


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


def batchnorm_net(running_mean: float) -> nn.Module:
    """A net with BatchNorm whose running mean is `running_mean`: DDP leaves each rank its own."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    net[1].running_mean.fill_(running_mean)
    return net


@pytest.mark.parametrize("tta", ["flip", "flip_translate"])
@pytest.mark.parametrize("loader", LOADERS)
def test_tta_under_ddp_equals_one_process_tta_of_rank_0s_weights(loader, tta):
    from experiments.training.trainer import evaluate

    split = images(37, seed=1)  # 5 batches of 8 or fewer: 3 on rank 0, 2 on rank 1

    def both(ranks: Ranks):
        model = batchnorm_net(running_mean=ranks.rank)  # rank 0's statistics rule (broadcast)
        sharded = {mode: evaluate(model, LOADERS[loader](split, ranks, batch=8), device=torch.device("cpu"),
                                  tta=mode, ranks=ranks) for mode in ("none", tta)}
        alone = {mode: evaluate(batchnorm_net(running_mean=0), LOADERS[loader](split, SINGLE, batch=8),
                                device=torch.device("cpu"), tta=mode) for mode in ("none", tta)}
        return sharded, alone

    (rank0, alone), (rank1, _) = on_ranks(both)
    assert rank0 == rank1 == alone  # exactly, TTA and plain
    assert alone[tta] != alone["none"]  # (TTA changed the predictions)


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


def mid_epoch_checkpoint(path, split: Split) -> None:
    """A checkpoint written inside epoch 2 by 2 ranks (each with its own augmentation generator
    and running sums: rank r has seen 16 images, 10 + r of them right, loss sum 5 + r)."""
    from experiments.training.checkpoint import save_checkpoint
    from experiments.training.trainer import EpochProgress, EpochTotals, FitState

    def save(ranks: Ranks):
        loader = device_loader(split, ranks, 16, shuffle=True)
        list(loader)  # epoch 1
        place = EpochProgress.start(2, loader, lr=0.1)
        next(iter(loader))  # epoch 2's first step
        totals = EpochTotals(torch.device("cpu"), torch.zeros((), dtype=torch.long))
        totals.loss_sum += 5.0 + ranks.rank
        totals.correct += 10 + ranks.rank
        totals.finite_seen += 16
        totals.seen = 16
        place.steps, place.totals = 1, totals.state_dict()
        save_checkpoint(path, trainer_on(ranks, "sgd"), FitState(epoch=1, progress=place.state_dict()),
                        loader.generators, {}, {})
        return place.state_dict()

    return on_ranks(save)


def resumed_place(payload, ranks: Ranks, split: Split):
    """(this rank's place in the epoch, the note) as `restore` gives them, and its loader."""
    from experiments.training.checkpoint import restore

    loader = device_loader(split, ranks, 16, shuffle=True)
    state, note = restore(payload, trainer_of(ranks), loader.generators)
    return state.progress, note, loader


def test_each_rank_resumes_its_own_place_inside_an_epoch_and_another_number_counts_each_image_once(tmp_path):
    from experiments.training.checkpoint import FORMAT

    split = images(64)
    places = mid_epoch_checkpoint(tmp_path / "c.pt", split)
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    assert payload["format"] == FORMAT == 3
    for rank in range(2):  # the same ranks: each its own, exactly
        place, note, _ = resumed_place(payload, Ranks(rank, 2, rank, 2), split)
        assert note is None
        assert all(torch.equal(a, b) for a, b in zip(place["generators"], places[rank]["generators"]))
        assert place["totals"]["correct"] == 10 + rank and place["totals"]["seen"] == 16

    alone, note, _ = resumed_place(payload, SINGLE, split)  # one rank: the two ranks' sums, once
    assert (alone["totals"]["correct"], alone["totals"]["seen"], float(alone["totals"]["loss_sum"])) == (21, 32, 11.0)
    assert "2 ranks" in note and "not bit-identical" in note

    third, note, loader = resumed_place(payload, Ranks(2, 3, 2, 3), split)  # a rank it lacks
    assert torch.equal(third["generators"][0], places[0]["generators"][0])  # the shared order
    own = device_loader(split, Ranks(2, 3, 2, 3), 16, shuffle=True).augment_generator.get_state()
    assert torch.equal(third["generators"][1], own)  # its augmentation from its seed, not rank 0's
    assert third["totals"] is None and third["steps"] == 1
    assert "rank 2's augmentation inside epoch 2" in note


def test_a_format_2_checkpoint_inside_an_epoch_under_ddp_resumes_with_a_note(tmp_path):
    # format 2 saved rank 0's place alone, which every rank took as its own: rank 1 augmented as
    # rank 0, and rank 0's sums were counted twice
    split = images(64)
    places = mid_epoch_checkpoint(tmp_path / "c.pt", split)
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    payload["format"], payload["fit"]["progress"] = 2, payload["fit"]["progress"][0]
    first, note0, _ = resumed_place(payload, Ranks(0, 2, 0, 2), split)
    second, note1, _ = resumed_place(payload, Ranks(1, 2, 1, 2), split)
    assert first["totals"]["correct"] == 10 and second["totals"] is None  # rank 0's counted once
    own = device_loader(split, Ranks(1, 2, 1, 2), 16, shuffle=True).augment_generator.get_state()
    assert torch.equal(second["generators"][1], own)
    assert torch.equal(second["generators"][0], places[0]["generators"][0])
    assert note0 == note1
    assert "rank 1's augmentation inside epoch 2 (the checkpoint holds the place there of 1 rank" in note0


def test_a_gpu_checkpoint_inside_an_epoch_resumes_on_the_cpu(tmp_path):
    # a CUDA generator's 16-byte state does not fit a CPU generator: the epoch is redrawn from
    # this run's seed (before, restoring the epoch's generators raised)
    from experiments.training.trainer import EpochProgress

    split = images(64)
    mid_epoch_checkpoint(tmp_path / "c.pt", split)
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    for rng, place in zip(payload["rng"], payload["fit"]["progress"], strict=True):
        rng["generators"] = place["generators"] = [torch.zeros(16, dtype=torch.uint8)] * 2
        rng["generator_devices"] = ["cuda", "cuda"]
    place, note, loader = resumed_place(payload, Ranks(1, 2, 1, 2), split)
    EpochProgress(**place).restore_generators(loader)
    seeded = device_loader(split, Ranks(1, 2, 1, 2), 16, shuffle=True)
    for restored, fresh in zip(loader.generators, seeded.generators, strict=True):
        assert torch.equal(restored.get_state(), fresh.get_state())
    assert "the loader's cuda generator (now on cpu)" in note


def test_mixing_on_a_launchers_ranks_refuses_an_odd_batch_per_rank_before_it_trains(tmp_path):
    # torchrun or Slurm tasks: trainer.devices stays 1, and the job learns its 2 ranks as it starts
    # (timm's Mixup asserted at step 1, before)
    out = tmp_path / "job"
    result = train_on_ranks(["experiment=smoke", "logger=none", "trainer.progress=false", "mix=mixup",
                             "trainer.batch_size=34"], out)
    assert result.startswith("refused: mixing") and "trainer.batch_size=34 is 17 images per rank" in result
    assert list(out.iterdir()) == []  # nothing trained, nothing written


def test_the_lookahead_copies_the_weights_ddp_gives_every_rank(compose_cfg):
    # DDP broadcasts rank 0's weights when it wraps the model; a rank whose own start differed
    # (forced here) kept it in the lookahead's copy when that was taken before, and the lookahead
    # wrote it back into that rank's weights: the frozen whitening filters too, which no gradient
    # all-reduce brings back, so the ranks trained apart for the rest of the run
    from experiments.config.checks import check_config
    from experiments.job import build_model, build_trainer
    from experiments.training.batch_schedule import BatchSchedule

    cfg = compose_cfg(["experiment=airbench", "size=smoke"])
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32 * 6, 3, 32, 32, generator=gen), torch.randint(0, 10, (32 * 6,), generator=gen)

    def train(ranks: Ranks):
        options = check_config(cfg)
        model, _ = build_model(cfg, torch.device("cpu"), False, ranks)
        if ranks.rank == 1:
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    tensor.add_(0.5) if tensor.is_floating_point() else None
        trainer = build_trainer(cfg, options, model, torch.device("cpu"), 64, BatchSchedule(options), ranks)
        for step in range(6):  # 64 images: 2 steps an epoch, 6 in the run; the lookahead at step 5
            part = slice(32 * step + 16 * ranks.rank, 32 * step + 16 * (ranks.rank + 1))
            trainer.optimizer_step([(x[part], y[part])])
        return dict(trainer.eval_model.named_parameters())

    first, second = on_ranks(train)
    for name, weights in first.items():
        assert torch.equal(weights, second[name]), name


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
