"""Sweep directories of any size, written without training: each job directory as train.py
leaves it (its name `<num>-<model>-<optim>-<aug>-<other swept values>`, .hydra/overrides.yaml,
.hydra/config.yaml, config.yaml, a completed summary.json with every key, metrics.csv with every
epoch metric), with made-up but plausible numbers.

Used by the report's scale test (tests/test_report_pictures.py) and by the benchmark of a big
sweep's report (bench/report_scale.py).
"""

from __future__ import annotations

import csv
import itertools
import json
import random
from pathlib import Path

import yaml

from experiments.groups import NAMED_GROUPS
from experiments.report.job_summary import COMPLETED, JobSummary
from experiments.training.metrics import (
    BATCH_SIZE,
    EPOCH,
    EPOCH_METRICS,
    EPOCH_S,
    IMAGES_PER_S,
    LR,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_LOSS,
)

# four two-level factors: 16 configurations
FACTORS = {"model": ["resnet18", "preact"], "optim": ["sgd", "adamw"], "aug": ["basic", "advanced"],
           "sched": ["cosine", "onecycle"]}
PROVENANCE = {"code": {"commit": "c0ffee", "dirty": False, "diff_sha256": None},
              "versions": {"torch": "2.4.0", "python": "3.11.9"}, "device_name": "cpu",
              "data": {"source": "generated"}, "command": "train.py -m ..."}


def job_name(num: int, choices: dict[str, str], seed: int) -> str:
    """conf/hydra/default.yaml's sweep.subdir: the number, the named groups, then the other swept
    values as `key=value` (seed included)."""
    named = [choices.get(group, default) for group, default in
             zip(NAMED_GROUPS, ("resnet18", "sgd", "basic"))]
    others = [f"{k}={v}" for k, v in choices.items() if k not in NAMED_GROUPS] + [f"seed={seed}"]
    return f"{num}-" + "-".join(named) + "-" + ",".join(others)


def write_job(sweep: Path, num: int, choices: dict[str, str], seed: int, test_acc: float,
              epochs: int = 20, rng: random.Random | None = None) -> Path:
    """One completed job: `test_acc` a fraction; its validation accuracy climbs to about it."""
    rng = rng or random.Random(num)
    name = job_name(num, choices, seed)
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"{k}={v}" for k, v in choices.items()] + [f"seed={seed}"]
    config = {"seed": seed, "trainer": {"epochs": epochs, "monitor": VAL_ACC, "batch_size": 128},
              **{k: {"name": v} for k, v in choices.items()}}
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    for epoch in range(1, epochs + 1):
        progress = 1 - 0.8 ** epoch
        rows.append({EPOCH: epoch, TRAIN_LOSS: 2.3 * (1 - progress) + 0.1 + rng.random() * 0.05,
                     TRAIN_ACC: min(1.0, test_acc * progress * 1.05), LR: 0.1 * (1 - (epoch - 1) / epochs),
                     BATCH_SIZE: 128, EPOCH_S: 10 + rng.random(), IMAGES_PER_S: 4000 + 100 * rng.random(),
                     VAL_LOSS: 2.3 * (1 - progress) + 0.3 + rng.random() * 0.05,
                     VAL_ACC: min(1.0, (test_acc + 0.01) * progress + rng.gauss(0, 0.005))})
    with open(job / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[EPOCH, *EPOCH_METRICS])
        writer.writeheader()
        writer.writerows(rows)
    best = max(rows, key=lambda r: r[VAL_ACC])
    summary = JobSummary(
        COMPLETED, name=name, choices={"model": "resnet18", "optim": "sgd", "aug": "basic", "mix": "none",
                                       "sched": "cosine", "data": "cifar10", **choices},
        overrides=overrides, test_acc=test_acc, test_acc_final=test_acc - 0.002, test_loss=0.9,
        best_val_acc=best[VAL_ACC], best_val_loss=best[VAL_LOSS], best_epoch=int(best[EPOCH]),
        epochs_completed=epochs, train_time_s=10.0 * epochs, images_per_s=4000.0,
        provenance=PROVENANCE, output_dir=str(job), device="cpu", world_size=1, device_batch_size=128,
        threads=1, precision="fp32", seed=seed, fingerprint=f"{num:08x}").to_json()
    (job / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return job


def grid_sweep(sweep: Path, seeds: int, factors: dict[str, list[str]] | None = None,
               epochs: int = 20) -> list[Path]:
    """Every combination of `factors` (default: FACTORS, 16 configurations) times `seeds` seeds,
    numbered in Hydra's order (the last override varies fastest: seed)."""
    factors = FACTORS if factors is None else factors
    rng, jobs = random.Random(0), []
    combos = list(itertools.product(*factors.values()))
    for num, (combo, seed) in enumerate(itertools.product(combos, range(seeds))):
        choices = dict(zip(factors, combo))
        acc = 0.6 + 0.03 * combos.index(combo) / len(combos) + rng.gauss(0, 0.01)
        jobs.append(write_job(sweep, num, choices, seed, round(acc, 4), epochs, rng))
    return jobs
