"""Shared helpers: composing the real config tree, running train.py as a user does."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

# The suite runs on two pytest workers (pyproject.toml: -n 2), each test on one thread, and so do
# the jobs it starts: two workers of two spinning OpenMP threads would oversubscribe 2 cores
# (a 16 s test took minutes). Measured on 2 cores, 2026-12-01: 525 s on two workers, 769 s on one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from hydra import compose, initialize_config_dir

import experiments.config  # noqa: F401  (registers the schemas and resolvers with Hydra)
from support import preloaded

torch.set_num_threads(1)  # (in case torch was loaded before the variable was set)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def start_service(script: str, name: str, timeout: int) -> str:
    """`bash tests/support/SCRIPT start` (a one-node Slurm, a PostgreSQL server: they need root
    and Debian's packages): the last line it prints; the test is skipped, with the script's
    reason, where it cannot start."""
    started = subprocess.run(["bash", str(ROOT / "tests" / "support" / script), "start"],
                             capture_output=True, text=True, timeout=timeout)
    if started.returncode:
        pytest.skip(f"no {name} here: {(started.stdout + started.stderr).strip()}")
    return (started.stdout.strip().splitlines() or [""])[-1]


@pytest.fixture(scope="module")
def slurm():
    """A one-node Slurm (tests/test_cluster.py, tests/test_search.py's Slurm workers)."""
    start_service("slurm.sh", "Slurm", timeout=180)


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> the DictConfig that `python train.py <overrides>` would get."""

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))

    return _compose


def train_env(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment, no network for W&B, and `env` added."""
    return {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **(env or {})}


def run_train(*args: str, cwd: Path, timeout: int = 300, env: dict[str, str] | None = None,
              fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` the way a user does (with `train_env(env)`): its exit code,
    stdout and stderr. The process is forked from one that has imported torch, timm, Hydra and
    W&B (support/preloaded.py: 7-9 s less per job); `fresh`: a new interpreter, for what only its
    start shows (the imports in time_s.startup)."""
    command = [sys.executable, str(ROOT / "train.py"), *args]
    if fresh:
        return subprocess.run(command, cwd=cwd, env=train_env(env), capture_output=True, text=True,
                              timeout=timeout)
    return preloaded.run(command, Path(cwd), train_env(env), timeout)


def start_train(*args: str, cwd: Path, env: dict[str, str] | None = None,
                new_session: bool = False) -> preloaded.Started:
    """`python train.py ARGS` started in the background as `run_train` runs it: `poll`, `wait`,
    `send_signal`, `kill` and `pid` as on a Popen (`new_session`: its own process group, to kill a
    DDP job's every rank at once with os.killpg), and `output()` once it has ended."""
    return preloaded.start([sys.executable, str(ROOT / "train.py"), *args], Path(cwd), train_env(env),
                           new_session)


# The modules that take longest, longest first (seconds of test time each, summed over its tests,
# in a suite run on 2026-12-07: 880 tests, 906 s of test time in 469 s on two workers). Two
# workers take whole modules (`--dist loadscope`) in the order they are collected
# (`--no-loadscope-reorder`); xdist's own order, most tests first, left the heaviest modules
# (Slurm, DDP) for the end, where one worker ran them while the other had finished: 614 s.
# Heaviest first, the last modules to start are short ones (a simulation of that run's module
# times: 588 s, half the total; the workers now end within 2 s of each other). The rest follow
# in their usual order.
HEAVIEST = ("test_search", "test_cluster", "test_ddp_jobs", "test_resume_options", "test_interrupts",  # 135-85
            "test_multirun", "test_resume", "test_speed_presets", "test_bad_input", "test_job_dir",  # 65-24
            "test_reports", "test_grid", "test_catalogue", "test_smoke_learns", "test_compose",  # 24-15
            "test_speed", "test_data", "test_ddp", "test_jobs", "test_identity")  # 15-9


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.stem
        return HEAVIEST.index(name) if name in HEAVIEST else len(HEAVIEST)

    items.sort(key=rank)  # (stable: each module's tests keep their order)


def pytest_collection_finish(session):
    """Exempt what every test module imported (torch, timm, Hydra, ...: most of a worker's
    objects) from the garbage collector's full passes, which otherwise walked all of them, again
    and again: the five modules test_grid, test_catalogue, test_compose, test_reports and
    test_jobs took 36.6 s with 7.2 s in collections, 30.4 s with 4.0 s this way; the suite,
    209 s, 197 s (2026-12-02)."""
    gc.collect()
    gc.freeze()
