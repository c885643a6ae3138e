"""Shared helpers: composing the real config tree, running train.py, writing tiny CIFAR archives."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> the DictConfig that `python train.py <overrides>` would get."""

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))

    return _compose


def run_train(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` the way a user does, with no network for W&B."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_cifar_archive(path: Path, dataset: str = "cifar100", n_train: int = 60, n_test: int = 20,
                        seed: int = 0) -> dict:
    """A small .tar.gz in the official python-version layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    if dataset == "cifar100":
        folder, label_key, names_key, meta = "cifar-100-python", b"fine_labels", b"fine_label_names", "meta"
        train_files, test_file, classes = ["train"], "test", 100
    else:
        folder, label_key, names_key, meta = "cifar-10-batches-py", b"labels", b"label_names", "batches.meta"
        train_files, test_file, classes = [f"data_batch_{i}" for i in range(1, 6)], "test_batch", 10
    arrays = {}

    def batch(n):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        return {b"data": data, label_key: labels, b"filenames": [b"x.png"] * n}

    members = {}
    per_file = n_train // len(train_files)
    for name in train_files:
        members[name] = batch(per_file)
    members[test_file] = batch(n_test)
    members[meta] = {names_key: [f"c{i}".encode() for i in range(classes)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            payload = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    arrays["train_data"] = np.concatenate([members[n][b"data"] for n in train_files])
    arrays["train_labels"] = sum((members[n][label_key] for n in train_files), [])
    arrays["test_data"] = members[test_file][b"data"]
    arrays["test_labels"] = members[test_file][label_key]
    return arrays
