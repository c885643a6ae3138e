"""A search's trial, seen from its job: after every validation the job reports its monitored
metric (`trainer.monitor`) to the study, and stops when the study's pruner says so; the sweeper
then tells the study PRUNED (experiments/search/sweeper.py).

The job finds its trial from what the sweeper put in its `hydra.job.env_set`: the trial's number
and the study's name (config/optuna.py). A job that runs in the sweep's own process (the basic
launcher) reaches the sweeper's study itself (`IN_PROCESS`: an in-memory study has no other
way); a job in another process (joblib, submitit, Slurm) opens the study in its storage, with the
pruner of `hydra.sweeper.pruner`.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.config.optuna import STUDY, TRIAL
from experiments.errors import ConfigError
from experiments.training.metrics import METRIC_MODES

NO_PRUNER = "optuna.pruners.NopPruner"  # hydra/sweeper/pruner=none
# study name -> (its storage, its pruner), while a sweep of this process runs it
IN_PROCESS: dict[str, tuple[Any, Any]] = {}


class Pruned(Exception):
    """The study's pruner stopped this trial after `epoch`, at the monitored metric's `value`:
    neither a failure nor a result (the study is told PRUNED). Raised by the job's task function
    so that the sweeper, in whichever process, sees it in the job's return."""

    def __init__(self, epoch: int, value: float, monitor: str):
        super().__init__(epoch, value, monitor)  # (the arguments a pickled copy is rebuilt from)
        self.epoch, self.value, self.monitor = epoch, value, monitor

    def __str__(self) -> str:
        return f"pruned after epoch {self.epoch} ({self.monitor} {self.value:.4g})"


def search_trial() -> int | None:
    """This job's trial number when a search's sweeper launched it, else None."""
    if not HydraConfig.initialized():
        return None
    number = HydraConfig.get().job.env_set.get(TRIAL)
    return None if number is None else int(number)


def prunes(pruner: DictConfig | None) -> bool:
    return pruner is not None and pruner.get("_target_") not in (None, NO_PRUNER)


def direction_of(monitor: str) -> str:
    return "maximize" if METRIC_MODES[monitor] == "max" else "minimize"


def direction_names(direction) -> list[str]:
    """hydra.sweeper.direction as the plugin reads it: `maximize`, or a list of them."""
    directions = [direction] if isinstance(direction, (str, Enum)) else list(direction)
    return [d.name if isinstance(d, Enum) else str(d) for d in directions]


def check_prunable(val_size, monitor: str, processes: int, directions: list[str]) -> None:
    """What a pruner needs of the trials' config, checked by the sweeper before any trial and by
    each job before it trains (a searched key may change it): a ConfigError otherwise."""
    if len(directions) > 1:
        raise ConfigError(f"Optuna's pruners judge one objective; this study has {len(directions)} "
                          "(hydra.sweeper.direction): use hydra/sweeper/pruner=none")
    if val_size == 0:
        raise ConfigError("a pruner stops trials on their validation metric (trainer.monitor), and "
                          "data.val_size=0 leaves no validation split: set data.val_size > 0, or "
                          "hydra/sweeper/pruner=none")
    if direction_of(monitor) != directions[0]:
        better = "higher" if METRIC_MODES[monitor] == "max" else "lower"
        raise ConfigError(f"a pruner judges trainer.monitor={monitor} ({better} is better) in the "
                          f"study's direction, hydra.sweeper.direction={directions[0]}: make them "
                          "agree, e.g. trainer.monitor=val/loss optimized_metric=best_val_loss "
                          "hydra.sweeper.direction=minimize")
    if processes > 1:
        raise ConfigError(f"a DDP trial ({processes} processes): pruning runs on one-process "
                          "trials; run DDP trials with hydra/sweeper/pruner=none")


class TrialReport:
    """The job's trial under a pruner: `should_stop` after every epoch."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor = trial, monitor
        self.reported = set(trial.storage.get_trial(trial._trial_id).intermediate_values)
        self.last: tuple[int, float] | None = None

    @classmethod
    def for_job(cls, cfg: DictConfig, options, processes: int) -> TrialReport | None:
        """The trial this job (of `processes` ranks) is, when a search with a pruner launched it
        (else None); refused (ConfigError) when its config leaves the pruner nothing to judge."""
        number = search_trial()
        sweeper = HydraConfig.get().sweeper if number is not None else None
        if sweeper is None or not prunes(sweeper.get("pruner")):
            return None
        check_prunable(cfg.data.val_size, options.monitor, processes, direction_names(sweeper.direction))
        return cls(open_trial(sweeper, HydraConfig.get().job.env_set[STUDY], number), options.monitor)

    def should_stop(self, history: list[dict[str, float]], last: bool = False) -> bool:
        """Report each validated epoch of `history` not reported yet (a resumed trial's earlier
        ones too, for a retry is a new trial of the study), then ask the pruner; not after the
        fit's `last` epoch: its training is done, pruning would save nothing and drop its test,
        so it completes (the pruner still has the value for the trials after it)."""
        new = [(int(row["epoch"]), float(row[self.monitor])) for row in history
               if self.monitor in row and int(row["epoch"]) not in self.reported]
        for epoch, value in new:
            self.trial.report(value, epoch)
            self.reported.add(epoch)
            self.last = (epoch, value)
        return bool(new) and not last and self.trial.should_prune()

    def pruned(self) -> Pruned:
        epoch, value = self.last
        return Pruned(epoch, value, self.monitor)


def open_trial(sweeper: DictConfig, study_name: str, number: int):
    """Trial `number` of the study: through the sweeper's own storage when this job runs in its
    process, else opened in `hydra.sweeper.storage` with the pruner `hydra.sweeper.pruner`."""
    import optuna  # (here: only the jobs of a pruned search import it)
    from hydra.utils import instantiate

    if study_name in IN_PROCESS:
        storage, pruner = IN_PROCESS[study_name]
    elif sweeper.storage is None:
        raise ConfigError("this trial runs in another process than its sweeper, and the study is "
                          "in the sweeper's memory: give it a storage, e.g. "
                          "hydra.sweeper.storage=postgresql://user@host/db (docs/search.md)")
    else:  # a URL, or a storage's own config (`_target_: optuna.storages.RDBStorage`, ...)
        storage = instantiate(sweeper.storage) if OmegaConf.is_dict(sweeper.storage) else str(sweeper.storage)
        pruner = instantiate(sweeper.pruner)
    # a random sampler: the job samples nothing (the sweeper's sampler would infer a relative
    # search space on opening the trial, for nothing)
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    # (Optuna 2.10 has no public way from a trial's number to its Trial)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)

