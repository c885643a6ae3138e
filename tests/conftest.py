"""Shared helpers: composing the real config tree, running train.py as a user does."""

from __future__ import annotations

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

torch.set_num_threads(1)  # (in case torch was loaded before the variable was set)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> the DictConfig that `python train.py <overrides>` would get."""

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))

    return _compose


def run_train(*args: str, cwd: Path, timeout: int = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` the way a user does, with no network for W&B (and `env` added
    to this process's environment)."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
