"""Model selection and early stopping: the best value of one validation metric so far."""

from __future__ import annotations

from experiments.errors import ConfigError
from experiments.training.metrics import METRIC_MODES


class Monitor:
    """Tracks the best value of one metric (higher or lower is better as the metric says:
    METRIC_MODES); `update` says whether the newest value beats it."""

    def __init__(self, key: str, min_delta: float = 0.0, patience: int | None = None):
        if key not in METRIC_MODES:
            raise ConfigError(f"{key} cannot be monitored: one of {list(METRIC_MODES)} can")
        self.key, self.min_delta, self.patience = key, min_delta, patience
        self.mode = METRIC_MODES[key]
        self.best: float | None = None
        self.epochs_since_best = 0

    def update(self, metrics: dict[str, float]) -> bool:
        value = metrics[self.key]
        gain = (value - self.best if self.mode == "max" else self.best - value) if self.best is not None else None
        improved = gain is None or gain > self.min_delta
        if improved:
            self.best, self.epochs_since_best = value, 0
        else:
            self.epochs_since_best += 1
        return improved

    @property
    def exhausted(self) -> bool:
        """True once `patience` epochs in a row brought no improvement (early stopping)."""
        return self.patience is not None and self.epochs_since_best >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "epochs_since_best": self.epochs_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.epochs_since_best = state["best"], state["epochs_since_best"]
