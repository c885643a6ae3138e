"""Hyperparameter search: one Optuna study, any number of workers, weak trials pruned, a killed
worker's trial retried where it stopped (docs/search.md).

`python train.py hparams_search=optuna` runs the sweeper of `sweeper.py` (Hydra finds it as
hydra_plugins/experiments_sweeper.py): hydra-optuna-sweeper's keys, params syntax and samplers,
with its own loop. Each worker (a process running that command; N shells or N Slurm jobs on one
storage make N workers) asks the study for a trial as soon as one of its slots is free, launches
it as a job of the sweep, and tells the study how it ended. `n_trials` counts the study's
finished trials (completed or pruned), whoever ran them. A trial's job finds its trial from what
the sweeper put in its `hydra.job.env_set` (config/optuna.py), and, under a pruner, reports the
monitored metric after every validation and stops when told (`trial.py`).

The two sides are apart because the job's side must not import Optuna (3-5 s of imports) in the
jobs of searches without a pruner, nor in any other job.
"""
