"""The sweeper of conf/hparams_search/optuna.yaml (`hydra/sweeper: study`): hydra-optuna-sweeper's
keys, params syntax and samplers, with the project's own loop over a study that several workers
share, a pruner, and a killed worker's trials retried (src/experiments/search/sweeper.py). Hydra
accepts plugins only from the hydra_plugins namespace package, hence this module; it imports
nothing heavy, since Hydra imports every plugin at the start of every run."""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING

from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class StudySweeperConf(OptunaSweeperConf):
    """The plugin's keys, plus the pruner (conf/hydra/sweeper/pruner/) and Optuna's RDB heartbeat."""

    _target_: str = "hydra_plugins.experiments_sweeper.StudySweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    # trials running at once in this process, with a launcher that runs them elsewhere (joblib,
    # submitit): each slot asks the study for a new trial as soon as its last one ended
    n_jobs: int = 1
    pruner: Any = MISSING  # an optuna.pruners class: hydra/sweeper/pruner=none|median|asha|hyperband
    # Optuna's RDBStorage heartbeat (seconds): a trial whose worker stopped beating for grace_period
    # (default 2 x heartbeat_interval) is failed, and retried by the next worker to ask, with the
    # same parameters in the same directory (resuming from its checkpoint), up to max_retry times
    heartbeat_interval: Optional[int] = None
    grace_period: Optional[int] = None
    max_retry: Optional[int] = 3


ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf,
                             provider="experiments")


class StudySweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        from experiments.search.sweeper import Search  # (optuna: only when a search runs)

        self.search = Search(**options)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        return self.search.sweep(arguments)
