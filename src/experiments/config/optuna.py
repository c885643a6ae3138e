"""A search's trials, as the config sees them: the directory name of each (conf/hparams_search/
optuna.yaml's hydra.sweep.subdir resolves `trial_name`), and the keys the search's sweeper
(experiments/search/sweeper.py) gives each trial's job in `hydra.job.env_set`.

A trial's directory is named by its number in the study and its sampled values
(`3-lr=0.0123-wd=3e-4-bs=64`): the config groups' options, the same in every trial of a study,
would name every trial alike. The number is the study's, so directories are unique across the
workers of a study and its reruns.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from decimal import Decimal

from hydra.core.override_parser.overrides_parser import OverridesParser

from experiments.command_line import command_line

# what the sweeper tells each trial's job (as hydra.job.env_set keys: the job's own config, and
# with it its fingerprint, stays the same in a retry)
TRIAL = "EXPERIMENTS_TRIAL"  # its trial's number in the study (a retry's own, not its directory's)
STUDY = "EXPERIMENTS_STUDY"  # the study's name (a study without a name gets one from Optuna)
POSITION = "EXPERIMENTS_TRIAL_POSITION"  # `5/20`: its place among the study's n_trials



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
    return trial_name(task_overrides, searched_keys(params, command_line()[1:]))
