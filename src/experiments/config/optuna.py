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
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


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
