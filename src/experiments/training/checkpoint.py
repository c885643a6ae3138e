"""Per-job checkpoints, so a killed job or sweep resumes where it stopped. `Checkpoint` owns
resuming: the file is read (and refused, when it is unreadable or from another config) before the
job writes anything, restored into the trainer once it is built, and saved after every epoch.

Written atomically after every epoch; loaded with `torch.load(weights_only=True)`, so a checkpoint
holds only tensors and plain containers (RNG states included), never pickled code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.atomic import atomic_write
from experiments.errors import Refusal, UserError
from experiments.identity import fingerprint, semantic_config
from experiments.ranks import Ranks
from experiments.training.backends import precision_name
from experiments.training.distributed import all_gather
from experiments.training.trainer import EpochTotals, FitState, Trainer

CHECKPOINT_FILE = "checkpoint.pt"
# 2: one RNG state per rank (DDP), the loader's order and augmentation generators; 3: inside an
# epoch, every rank's place in it (format 2 held rank 0's, which every rank then took as its own)
FORMAT = 3
# 1 (before DDP): resumed, with a note (one generator drew order and augmentation); 2: exact at
# an epoch's end and on one process, inside an epoch under DDP resumed with a note
READS = (1, 2, 3)
# (the keys a checkpoint resumes across, and the fingerprint it is matched on: experiments/identity.py)


class CheckpointError(Refusal):
    """The checkpoint cannot be resumed (unreadable, another format, another config): raised
    before the job writes anything, so the directory stays as it was."""


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_setup(trainer: Trainer) -> dict:
    """Where a checkpoint was written. The config cannot tell (trainer.device=auto reads the
    same on a laptop and a GPU server), yet CUDA RNG states only fit as many GPUs, a generator's
    state only a generator of its own device type, each rank's RNGs only that rank, and
    precision=auto follows the device."""
    return {"type": trainer.device.type, "gpus": visible_gpus(),
            "precision": precision_name(trainer.amp_dtype), "ranks": trainer.ranks.world_size}


def rng_state(generators: list[torch.Generator]) -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [g.get_state() for g in generators],
        "generator_devices": [g.device.type for g in generators],
    }


def set_rng_state(state: dict, generators: list[torch.Generator]) -> list[str]:
    """Restore every RNG whose saved state fits this machine (the CPU ones always fit). Returns
    the ones left as seeded for this run, which then draw other numbers than an uninterrupted
    run would have."""
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    fresh, saved_gpus = [], len(state["cuda"])
    if saved_gpus == visible_gpus():
        if saved_gpus:
            torch.cuda.set_rng_state_all(state["cuda"])
    else:
        fresh.append(f"the CUDA RNGs (saved for {saved_gpus} GPUs, {visible_gpus()} visible)")
    saved_devices = state.get("generator_devices") or [g.device.type for g in generators]
    for gen, gen_state, saved_device in zip(generators, state["generators"], saved_devices):
        if gen.device.type == saved_device:
            gen.set_state(gen_state)
        else:
            fresh.append(f"the loader's {saved_device} generator (now on {gen.device.type})")
    return fresh


def _tuples(value):
    """random.setstate wants tuples where torch.load may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: Path, trainer: Trainer, state: FitState, generators: list[torch.Generator],
                    config: dict, extra: dict[str, Any]) -> None:
    """Called on every rank; rank 0 writes, atomically: to a temporary file, then renamed over
    the previous checkpoint. Each rank hands rank 0 what is its own: its RNG states and, inside
    an epoch, its place there (`state.progress`: its loader's generators at the epoch's start, its
    augmentation's among them, and the running sums of its share of the images); the rest (the
    weights, the optimizer, the fit so far) is the same on every rank and saved once."""
    own = all_gather({"rng": rng_state(generators), "progress": state.progress}, trainer.ranks)
    if not trainer.ranks.main:
        return
    places = [rank["progress"] for rank in own] if state.progress is not None else None
    payload = {"format": FORMAT, "fingerprint": fingerprint(config), "config": semantic_config(config),
               "trainer": trainer.state_dict(), "fit": {**vars(state), "progress": places},
               "rng": [rank["rng"] for rank in own],  # one per rank, in rank order
               "device": device_setup(trainer), **extra}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, config: dict) -> dict:
    """The checkpoint at `path`, refused with a clear message when unreadable or from another config."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        version = payload["format"]
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:200]}): it is "
            "truncated or corrupt. Delete it to start this job over.") from None
    if version not in READS:
        raise CheckpointError(
            f"checkpoint {path} has format {version!r}, this code reads formats {READS}: resume it "
            "with the code that wrote it, or delete it to start this job over.")
    if payload["fingerprint"] != fingerprint(config):
        changed = "; ".join(differences(payload["config"], semantic_config(config))[:8])
        raise CheckpointError(
            f"checkpoint {path} was written by a different config ({changed}); refusing to load "
            "it. Use a new output directory (hydra.run.dir=... or hydra.sweep.dir=...), or "
            "delete the checkpoint to start this job over.")
    return payload


# how an optimizer step runs on a device, not what it computes: kept as this run chose them
OPTIMIZER_IMPLEMENTATION = ("fused", "foreach", "capturable")


def for_this_device(saved: dict, trainer: Trainer) -> dict:
    """The trainer state of a checkpoint, adjusted to run where this job runs: the optimizer
    keeps this run's implementation flags (fused CUDA kernels or not), and a loss scaler that
    the checkpoint lacks (written in bf16/fp32, resumed in fp16) starts fresh."""
    optimizer = dict(saved["optimizer"])
    optimizer["param_groups"] = [
        {**group, **{k: now[k] for k in OPTIMIZER_IMPLEMENTATION if k in now}}
        for group, now in zip(optimizer["param_groups"], trainer.optimizer.param_groups)]
    scaler = saved["scaler"] or trainer.scaler.state_dict()
    return {**saved, "optimizer": optimizer, "scaler": scaler}


def describe(setup: dict) -> str:
    ranks = setup.get("ranks", 1)
    return (f"{setup['type']} ({setup['gpus']} GPUs visible, {setup['precision']}"
            + (f", {ranks} ranks)" if ranks > 1 else ")"))


def restore(payload: dict, trainer: Trainer,
            generators: list[torch.Generator]) -> tuple[FitState, str | None]:
    """The fit state to continue from (inside an epoch, with this rank's place there:
    `place_in_epoch`), and a note when the checkpoint was written on another device setup or
    number of ranks: then the RNGs that do not fit this machine start from this run's seed (the
    run goes on, but is no longer bit-identical to an uninterrupted one)."""
    try:
        trainer.load_state_dict(for_this_device(payload["trainer"], trainer))
    except (RuntimeError, KeyError, ValueError) as err:
        raise UserError(f"checkpoint does not fit this model: {str(err)[:300]}") from None
    rngs, rank = payload["rng"], trainer.ranks.rank
    if payload["format"] == 1:  # one process's states, and one generator for the loader
        rngs = [rngs]
    own_seeds = [g.initial_seed() for g in generators]
    saved_rng = rngs[rank] if rank < len(rngs) else rngs[0]
    fresh = set_rng_state(saved_rng, generators)
    if rank >= len(rngs):  # more ranks now: a new rank continues rank 0's shared generators
        fresh.append(f"rank {rank}'s data generators (the checkpoint has {len(rngs)} ranks)")
        for gen, seed in zip(generators, own_seeds, strict=True):
            if gen.initial_seed() != seed:  # (the order's), and starts its own (augmentation's)
                gen.manual_seed(seed)  # afresh: seeded for this rank, unlike rank 0's
    if payload["format"] == 1 and len(generators) > 1:
        fresh.append("the loader's augmentation generator (a format-1 checkpoint has one "
                     "generator for the order and the augmentation)")
    fit = dict(payload["fit"])
    if fit["progress"] is not None:  # written inside an epoch
        places = fit["progress"] if payload["format"] >= 3 else [fit["progress"]]  # (rank 0's)
        fit["progress"] = place_in_epoch(places, trainer.ranks, generators, own_seeds,
                                         saved_rng.get("generator_devices"), fresh)
    saved, here = payload.get("device"), device_setup(trainer)
    if saved is not None:
        saved = {"ranks": 1, **saved}  # (format 1: one process)
    note = None
    if fresh or (saved is not None and saved != here):
        note = (f"resumed on {describe(here)} from a checkpoint written on "
                f"{describe(saved) if saved else 'another device setup'}: weights, optimizer, "
                "schedule and the CPU RNGs were restored"
                + (f"; {' and '.join(fresh)} start again from the seed" if fresh else "")
                + ". The run continues, but is not bit-identical to an uninterrupted one.")
    return FitState(**fit), note


def place_in_epoch(places: list[dict], ranks: Ranks, generators: list[torch.Generator],
                   own_seeds: list[int], saved_devices: list[str] | None, fresh: list[str]) -> dict:
    """This rank's place in the epoch a checkpoint was written inside (EpochProgress's state),
    from `places`, the saved ranks' own, in rank order. With as many ranks as saved, each takes
    its own: exact. Otherwise (another number of ranks, or a format-2 checkpoint, which holds
    rank 0's only) the epoch goes on as closely as it can, and `fresh` says what starts again
    from the seed: rank 0 carries every saved rank's running sums (each image counted once) and
    the others start theirs from zero; a rank the checkpoint lacks takes rank 0's epoch-start
    state of the generators every rank shares (the order) and draws its own (augmentation) from
    its seed. A generator state saved on another device type (a GPU's, resumed on a CPU) does
    not fit: that generator redraws the epoch from where this run seeded it."""
    rank, saved = ranks.rank, len(places)
    place = dict(places[rank] if rank < saved else places[0])
    states = []
    for i, (gen, seed) in enumerate(zip(generators, own_seeds, strict=True)):
        state = place["generators"][i]
        if saved_devices is not None and saved_devices[i] != gen.device.type:
            state = gen.get_state()  # (set_rng_state left it seeded, and said so)
        elif rank >= saved:  # rank 0's: kept for a generator every rank shares
            probe = torch.Generator(gen.device)
            probe.set_state(state)
            if probe.initial_seed() != seed:  # rank 0's own (augmentation): this rank draws its own
                state = probe.manual_seed(seed).get_state()
        states.append(state)
    place["generators"] = states
    if saved != ranks.world_size:
        place["totals"] = EpochTotals.merged([p["totals"] for p in places]) if ranks.main else None
        if saved < ranks.world_size:
            lacking = (f"rank {saved}" if saved == ranks.world_size - 1
                       else f"ranks {saved}-{ranks.world_size - 1}")
            fresh.append(f"{lacking}'s augmentation inside epoch {place['epoch']} (the checkpoint holds "
                         f"the place there of {saved} rank{'s' if saved > 1 else ''}, whose sums "
                         "alone count the epoch's first steps in its train/loss and train/acc)")
    return place


@dataclass
class Resumed:
    """What `Checkpoint.resume_or_start` found: nothing (a fresh start), or a fit to continue."""

    state: FitState | None = None  # continued (and so changed) by the fit
    note: str | None = None  # resumed on another device setup: what started again from the seed
    saved: dict[str, Any] = field(default_factory=dict)  # the job's own entries (`save(extra=)`)
    epoch: int | None = field(init=False)  # the epochs the checkpoint had completed (None: fresh)

    def __post_init__(self) -> None:
        # taken now: `state` is the fit's own object, and its epoch moves on as it trains
        self.epoch = self.state.epoch if self.state is not None else None


class Checkpoint:
    """One job's checkpoint file: the trainer, the fit so far, every RNG (the training loader's
    shuffling generator included) and what the job adds (its W&B run id, its code version).

    Read when made (when `resume` and the file exists): a checkpoint this job must not resume
    raises CheckpointError here, before the job has written anything."""

    def __init__(self, job_dir: Path, config: dict, resume: bool = True):
        self.path, self.config = Path(job_dir) / CHECKPOINT_FILE, config
        self.payload = load_checkpoint(self.path, config) if resume and self.path.exists() else None
        self.generators: list[torch.Generator] = []

    @property
    def fit(self) -> FitState | None:
        """The fit the checkpoint holds (what is done), before it is restored; None without one."""
        return FitState(**self.payload["fit"]) if self.payload is not None else None

    def resume(self, trainer: Trainer, generators: list[torch.Generator]) -> Resumed:
        """Load the checkpoint read at the start into `trainer` and `generators` (the training
        loader's), or a fresh start without one. `save` checkpoints the same generators."""
        self.generators = generators
        if self.payload is None:
            return Resumed()
        payload, self.payload = self.payload, None  # restored once; its memory is not kept
        state, note = restore(payload, trainer, generators)
        known = {"format", "fingerprint", "config", "trainer", "rng", "device"}
        return Resumed(state, note, {k: v for k, v in payload.items() if k not in known})

    def save(self, trainer: Trainer, state: FitState, extra: dict[str, Any]) -> None:
        save_checkpoint(self.path, trainer, state, self.generators, self.config, extra)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
