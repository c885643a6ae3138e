"""Optuna searches written without training: each trial's directory as train.py leaves it under
`hparams_search=optuna` (named `<trial number>-<sampled values>`; .hydra/hydra.yaml naming the
sweeper, its direction and its search space; .hydra/overrides.yaml with the sampled values;
config.yaml; summary.json; metrics.csv), with the status and numbers each test chooses.

Used by tests/test_search_report.py and bench/search_importance.py.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import yaml

from experiments.config.optuna import trial_name
from experiments.report.job_summary import COMPLETED, FAILED, PRUNED, JobSummary
from experiments.training.metrics import EPOCH, VAL_ACC

# conf/hparams_search/optuna.yaml's search space
SPACE = {"optim.lr": "tag(log, interval(0.01, 0.5))", "optim.weight_decay": "tag(log, interval(1e-5, 1e-2))",
         "trainer.batch_size": "choice(64, 128, 256)"}
SWEEPER = "hydra_plugins.experiments_sweeper.StudySweeper"


def write_trial(sweep: Path, number: int, params: dict, status: str = COMPLETED, value: float | None = None,
                epochs: int = 10, trained: int | None = None, pruned_value: float | None = None,
                space: dict | None = None, direction: str = "maximize", metric: str = "best_val_acc",
                command: str | None = None, sweeper: str = SWEEPER) -> Path:
    """One trial: `value` its optimized_metric (best_val_acc: a fraction) when completed, its best
    validation accuracy so far otherwise; `trained` the epochs it trained (default: all of
    `epochs` when completed, half otherwise)."""
    space = SPACE if space is None else space
    overrides = [f"{k}={v}" for k, v in params.items()] + ["hparams_search=optuna", "experiment=smoke"]
    job = sweep / f"{number}-{trial_name(overrides, list(space))}"
    (job / ".hydra").mkdir(parents=True)
    hydra = {"hydra": {"sweeper": {"_target_": sweeper, "direction": direction, "n_trials": 20, "params": space,
                                   "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 1234}}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"optimized_metric": metric, "seed": 0, "trainer": {"epochs": epochs, "monitor": VAL_ACC}}
    for key, sampled in params.items():  # the sampled values, as the job's resolved config has them
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = sampled
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    trained = (epochs if status == COMPLETED else epochs // 2) if trained is None else trained
    best = 0.1 if value is None else value
    rows = [{EPOCH: e, VAL_ACC: best * (1 - 0.5 ** e) / (1 - 0.5 ** trained)} for e in range(1, trained + 1)]
    with open(job / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[EPOCH, VAL_ACC])
        writer.writeheader()
        writer.writerows(rows)
    provenance = {"command": command or "python train.py hparams_search=optuna experiment=smoke"}
    done = {"test_acc": best - 0.01, "test_acc_final": best - 0.02, "test_loss": 1.0, "seed": 0,
            "device": "cpu", "world_size": 1} if status == COMPLETED else {}
    summary = JobSummary(status, name=job.name, choices={"model": "resnet18", "optim": "sgd",
                                                         "hparams_search": "optuna"},
                         overrides=overrides, best_val_acc=value if trained else None,
                         best_epoch=trained or None, epochs_completed=trained, provenance=provenance,
                         output_dir=str(job), error="CUDA out of memory" if status == FAILED else None,
                         pruned_value=pruned_value if status == PRUNED else None, **done).to_json()
    if status == COMPLETED and value is not None:
        summary[metric] = value  # (best_val_acc already; another optimized_metric too)
    (job / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return job


def sample(rng: random.Random) -> dict:
    """A random draw from SPACE (Optuna's random start-up trials)."""
    return {"optim.lr": math.exp(rng.uniform(math.log(0.01), math.log(0.5))),
            "optim.weight_decay": math.exp(rng.uniform(math.log(1e-5), math.log(1e-2))),
            "trainer.batch_size": rng.choice([64, 128, 256])}


def lr_decides(params: dict, rng: random.Random, noise: float = 0.005) -> float:
    """A validation accuracy that only the learning rate moves (best at 0.1, 15 points lower at
    the range's ends), plus a little noise."""
    return 0.8 - 0.15 * abs(math.log10(params["optim.lr"]) + 1) + rng.gauss(0, noise)


def lr_search(sweep: Path, trials: int, seed: int = 0) -> list[Path]:
    """`trials` completed trials of SPACE, each drawn at random, whose value only optim.lr decides."""
    rng = random.Random(seed)
    jobs = []
    for n in range(trials):
        params = sample(rng)
        jobs.append(write_trial(sweep, n, params, value=round(lr_decides(params, rng), 6)))
    return jobs
