"""Small dataset files in the official formats, for tests.

The CIFAR writer lives next to its reader (experiments.data.cifar), since the benchmark needs it
from an installed package; the MNIST writer is only used by tests.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from experiments.data.cifar import write_cifar_archive
from experiments.data.mnist import IDX_UINT8

__all__ = ["write_cifar_archive", "write_idx", "write_mnist_files"]


def write_idx(path: Path, array: np.ndarray) -> None:
    """One gzipped IDX file of uint8 values (MNIST's format)."""
    header = bytes([0, 0, IDX_UINT8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_files(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    """The four official MNIST files (random digits) under root; returns the arrays written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28)),
              "train_labels": rng.integers(0, 10, n_train),
              "test_images": rng.integers(0, 256, (n_test, 28, 28)),
              "test_labels": rng.integers(0, 10, n_test)}
    names = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
             "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
    for key, array in arrays.items():
        write_idx(root / names[key], array)
    return arrays
