"""The 2x2x2 grid as a Hydra multirun (smoke sized): 8 jobs, 8 directories, 8 separate runs."""

import json
import re
import time

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_train

GRID = ["model=resnet18,preact", "optim=sgd,adamw", "aug=basic,advanced"]
NAMES = [f"{i}-{m}-{o}-{a}" for i, (m, o, a) in enumerate(
    (m, o, a) for m in ("resnet18", "preact") for o in ("sgd", "adamw") for a in ("basic", "advanced"))]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("grid") / "sweep"
    start = time.perf_counter()
    proc = run_train("-m", "experiment=smoke", *GRID, f"hydra.sweep.dir={sweep_dir}",
                     cwd=sweep_dir.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir.parent / "console.txt").write_text(proc.stdout + proc.stderr)
    return sweep_dir, time.perf_counter() - start


def test_grid_writes_eight_named_job_directories(sweep):
    sweep_dir, seconds = sweep
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert jobs == sorted(NAMES)
    assert seconds < 180  # the issue asks under 2 minutes on 2 cores; CI machines vary
    for name in NAMES:
        summary = json.loads((sweep_dir / name / "summary.json").read_text())
        model, optim, aug = name.split("-")[1:]
        assert summary["status"] == "completed"
        assert tuple(summary["choices"][g] for g in ("model", "optim", "aug")) == (model, optim, aug)


def test_the_console_says_which_job_of_how_many_runs_and_the_sweeps_eta(sweep):
    """`job 3/8 2-resnet18-adamw-basic`, then `... done: test 61.2% (4.1 s; sweep ETA 21.0 s)`;
    the last job has no ETA left to give."""
    sweep_dir, _ = sweep
    console = (sweep_dir.parent / "console.txt").read_text()
    for k, name in enumerate(NAMES, 1):
        assert f"job {k}/8 {name}\n" in console
        assert re.search(rf"job {k}/8 {name} done: test \d+\.\d% \([^)]*" + ("\\)" if k == 8 else "; sweep ETA"),
                         console), name


def test_every_smoke_job_learns(sweep):
    """The demo must show learning, not noise: every job at least 3x chance, the mean 5x."""
    sweep_dir, _ = sweep
    chance = 1 / yaml.safe_load((sweep_dir / NAMES[0] / "config.yaml").read_text())["data"]["num_classes"]
    accs = {name: json.loads((sweep_dir / name / "summary.json").read_text())["test_acc"] for name in NAMES}
    assert min(accs.values()) >= 3 * chance, accs
    assert sum(accs.values()) / len(accs) >= 5 * chance, accs


def test_every_job_has_its_own_wandb_run_in_one_group(sweep):
    sweep_dir, _ = sweep
    run_ids = set()
    for name in NAMES:
        runs = list((sweep_dir / name / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{name} has {len(runs)} W&B runs"
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
        record = next(runs[0].glob("*.wandb")).read_bytes()
        assert name.encode() in record  # its own run name ...
        assert not [other for other in NAMES if other != name and other.encode() in record]  # ... only
        assert f"{sweep_dir.parent.name}/{sweep_dir.name}".encode() in record  # the sweep's group
    assert len(run_ids) == 8


def test_every_job_has_its_own_tensorboard_events(sweep):
    sweep_dir, _ = sweep
    for name in NAMES:
        acc = EventAccumulator(str(sweep_dir / name / "tb"))
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]


def test_sweep_summary_tables_and_plots(sweep):
    import csv

    from PIL import Image

    sweep_dir, _ = sweep
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert sorted(r["job"] for r in rows) == sorted(NAMES)
    assert {"model", "optim", "aug", "status", "best_val_acc", "test_acc", "epochs_completed",
            "early_stopped", "train_time_s", "images_per_s", "best"} <= set(rows[0])
    accs = [float(r["test_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    best = [r for r in rows if r["best"]]
    assert len(best) == 1 and float(best[0]["best_val_acc"]) == max(float(r["best_val_acc"]) for r in rows)
    md = (sweep_dir / "summary.md").read_text()
    assert md.count("| completed |") == 8
    for png in ("val_acc.png", "train_loss.png", "lr.png", "test_acc.png", "grid.png", "effects.png"):
        with Image.open(sweep_dir / "plots" / png) as img:
            assert img.format == "PNG" and 300 < img.size[0] <= 4000 and 150 < img.size[1] <= 4000
    # the grid drawn beside its table: rows model x optim, columns aug
    assert "| model / optim \\ aug | basic | advanced |" in md and "![grid](plots/grid.png)" in md
    assert "![effects](plots/effects.png)" in md
