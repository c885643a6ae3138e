"""hydra-optuna-sweeper, made safe to continue a study: what the sweeper `StudySweeper` (in
src/hydra_plugins/experiments_sweeper.py, where Hydra requires plugins to live) does, selected by
conf/hparams_search/optuna.yaml.

The plugin numbers a sweep's jobs from 0 in every run, so continuing a stored study into the
same sweep directory put the new trial 0 into the old trial 0's directory (refused there: a
completed job of another config); and its seeded sampler, re-created with the same seed, drew
the same random start-up trials again. Here a run continues the study's own numbering (the job
directory of a trial is `<trial number>-...`, unique across reruns, as long as one process at a
time adds trials to the study), and the sampler's random state moves on with the study's
length, so a continued study draws new trials (the same ones again for the same study length:
still reproducible).

A trial's directory is named by its number and its sampled values (`3-lr=0.0123-wd=3e-4-bs=64`,
conf/hparams_search/optuna.yaml's hydra.sweep.subdir): the config groups' options, the same in
every trial of a study, would name every trial alike.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections import Counter
from decimal import Decimal

import numpy as np
from hydra.core.override_parser.overrides_parser import OverridesParser

log = logging.getLogger(__name__)



def swept_keys(argv: list[str]) -> set[str]:
    """The keys the command line sweeps (`optim.lr=0.05,0.1`, `seed=range(3)`, ...): a job's
    name shows its values of them (config/resolvers.py), a trial's its searched ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # not a Hydra command line (e.g. the compose API in tests)
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}

def stored_trials(study_name: str | None, storage) -> int:
    """How many trials the stored study has (0: in memory, or not created yet)."""
    if storage is None:
        return 0
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # optuna 2.10: no such study in this storage
        return 0


def move_on(sampler, trials: int) -> None:
    """Re-seed a seeded sampler's random state from its own state and the study's length.
    TPESampler and RandomSampler draw from `_rng` (and TPE's start-up trials from its
    `_random_sampler`); other samplers are told to re-seed themselves."""
    for s in (sampler, getattr(sampler, "_random_sampler", None)):
        rng = getattr(s, "_rng", None)
        if isinstance(rng, np.random.RandomState):
            s._rng = np.random.RandomState((int(rng.randint(2**31)) + trials) % 2**31)
    if not isinstance(getattr(sampler, "_rng", None), np.random.RandomState):
        sampler.reseed_rng()


def continue_study(impl) -> None:
    """Before the plugin's `sweep`: number this run's trials after the stored ones, and move
    its sampler on."""
    done = stored_trials(impl.study_name, impl.storage)
    if done:
        log.info("continuing study %s: %d trials stored; the new ones are numbered from %d",
                 impl.study_name, done, done)
        impl.job_idx = done  # the plugin numbers each run's jobs from 0 (its setup resets it)
        move_on(impl.sampler, done)


# --- a trial's directory name ----------------------------------------------------------------

# short names of the keys Optuna usually samples (the last part of the dotted key otherwise)
SHORT_KEYS = {"weight_decay": "wd", "batch_size": "bs", "momentum": "mom", "label_smoothing": "ls",
              "dropout": "drop", "warmup_epochs": "warmup", "ema_decay": "ema", "epochs": "ep"}
MAX_NAME = 120  # characters of the sampled values in a name: far below a file system's 255
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # '=' and '-' separate the parts; '/' would nest directories


def short_number(value: str) -> str:
    """A sampled value as a name shows it: an integer as it is; a float to 3 significant digits,
    decimal or with an exponent, whichever is shorter (0.0123, 3e-4, 3.12e-4); anything else
    (a config group's option, a boolean) with the characters a file name cannot take replaced."""
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return text
    try:
        number = float(text)
    except ValueError:
        return UNSAFE.sub("_", text)
    if not math.isfinite(number):
        return UNSAFE.sub("_", text)
    rounded = f"{number:.3g}"
    decimal = format(Decimal(rounded), "f")
    mantissa, exponent = f"{float(rounded):.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    scientific = f"{mantissa}e{int(exponent)}"
    return decimal if len(decimal) <= len(scientific) else scientific


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's short name (`optim.lr`: lr, `optim.weight_decay`: wd); the whole key where two
    would share one."""
    short = {key: SHORT_KEYS.get(key.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1]) for key in keys}
    taken = Counter(short.values())
    return {key: name if taken[name] == 1 else UNSAFE.sub("_", key) for key, name in short.items()}


def searched_keys(params, argv: list[str]) -> list[str]:
    """The keys Optuna samples: those of hydra.sweeper.params whose value is a search space (not
    a fixed value), then the command line's sweeps (`optim=sgd,adamw`, `optim.lr=interval(...)`)."""

    parser = OverridesParser.create()
    keys = []
    for key, value in (params or {}).items():
        try:
            if parser.parse_override(f"{key}={value}").is_sweep_override():
                keys.append(str(key))
        except Exception:  # not an override Hydra reads: the sweeper will say so
            continue
    return keys + sorted(swept_keys(argv) - set(keys))


def trial_name(task_overrides, keys: list[str]) -> str:
    """`lr=0.0123-wd=3e-4-bs=64`: a trial's sampled values (its overrides of `keys`), in the
    order of `keys`, short and safe in a file name. The trial number before it keeps two trials
    with the same rounded values apart."""
    values = {}
    for item in task_overrides or []:
        key, sep, value = str(item).partition("=")
        if sep and key.lstrip("+~") in keys:
            values[key.lstrip("+~")] = value
    names = short_keys([k for k in keys if k in values])
    text = "-".join(f"{names[k]}={short_number(values[k])}" for k in keys if k in values)
    return text[:MAX_NAME].rstrip("-") or "trial"


def trial_subdir(task_overrides, params) -> str:
    """The resolver of conf/hparams_search/optuna.yaml's hydra.sweep.subdir (after the trial's
    number): `${trial_name:${hydra.overrides.task},${hydra.sweeper.params}}`."""
    return trial_name(task_overrides, searched_keys(params, sys.argv[1:]))
