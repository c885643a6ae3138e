"""Per-job checkpoints, so a killed job or sweep resumes where it stopped.

Written atomically after every epoch; loaded with `torch.load(weights_only=True)`, so a checkpoint
holds only tensors and plain containers (RNG states included), never pickled code.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.atomic import atomic_write
from experiments.errors import UserError
from experiments.trainer import FitState, Trainer

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1

# keys that do not change what a job computes: they may differ between a run and its resume
NOT_IN_FINGERPRINT = ("logger", "paths", "data.root", "data.download", "data.download_timeout_s",
                      "trainer.progress", "trainer.resume", "trainer.keep_checkpoint")


class CheckpointError(UserError):
    pass


def semantic_config(config: dict) -> dict:
    """The resolved config without the keys in NOT_IN_FINGERPRINT."""
    config = json.loads(json.dumps(config, default=str))
    for key in NOT_IN_FINGERPRINT:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return config


def fingerprint(config: dict) -> str:
    text = json.dumps(semantic_config(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def rng_state(generators: list[torch.Generator]) -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [g.get_state() for g in generators],
    }


def set_rng_state(state: dict, generators: list[torch.Generator]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for gen, gen_state in zip(generators, state["generators"]):
        gen.set_state(gen_state)


def _tuples(value):
    """random.setstate wants tuples where torch.load may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: Path, trainer: Trainer, state: FitState, generators: list[torch.Generator],
                    config: dict, extra: dict[str, Any]) -> None:
    """Atomic: written to a temporary file, then renamed over the previous checkpoint."""
    payload = {"format": FORMAT, "fingerprint": fingerprint(config), "config": semantic_config(config),
               "trainer": trainer.state_dict(), "fit": dict(vars(state)), "rng": rng_state(generators),
               **extra}
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
    if version != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {version!r}, this code reads format {FORMAT}: resume it "
            "with the code that wrote it, or delete it to start this job over.")
    if payload["fingerprint"] != fingerprint(config):
        changed = "; ".join(differences(payload["config"], semantic_config(config))[:8])
        raise CheckpointError(
            f"checkpoint {path} was written by a different config ({changed}); refusing to load "
            "it. Use a new output directory (hydra.run.dir=... or hydra.sweep.dir=...), or "
            "delete the checkpoint to start this job over.")
    return payload


def restore(payload: dict, trainer: Trainer, generators: list[torch.Generator]) -> FitState:
    try:
        trainer.load_state_dict(payload["trainer"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint does not fit this model: {str(err)[:300]}") from None
    set_rng_state(payload["rng"], generators)
    return FitState(**payload["fit"])
