"""The Optuna sweeper of conf/hparams_search/optuna.yaml: hydra-optuna-sweeper's, continuing a
stored study's trial numbering and sampler state (experiments/config/optuna.py). Hydra accepts
plugins only from the hydra_plugins namespace package, hence this module."""

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class StudySweeper(OptunaSweeper):
    def sweep(self, arguments: list[str]) -> None:
        from experiments.config.optuna import continue_study

        continue_study(self.sweeper)
        return self.sweeper.sweep(arguments)
