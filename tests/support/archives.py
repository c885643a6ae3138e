"""Small CIFAR archives in the official python-version format, for tests and the benchmark.

The real archives cannot be downloaded everywhere; these exercise the same reading code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

LAYOUTS = {  # folder, label key, names key, meta file, train files, test file, classes
    "cifar100": ("cifar-100-python", b"fine_labels", b"fine_label_names", "meta", ["train"], "test", 100),
    "cifar10": ("cifar-10-batches-py", b"labels", b"label_names", "batches.meta",
                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", 10),
}


def photo_like(rng: np.random.Generator, n: int, noise: int) -> np.ndarray:
    """(n, 3072) uint8: blocky colour layouts plus pixel noise. noise=None gives uniform bytes.

    Uniform random bytes do not compress, so gzip stores them and "decompressing" is a copy;
    with noise=48 the archive compresses about as much as the real CIFAR-100 one (~0.9), so
    parsing it costs about what parsing the real one does.
    """
    if noise is None:
        return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    layout = rng.integers(0, 256, size=(n, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    pixels = layout + rng.integers(-noise, noise + 1, size=(n, 3, 32, 32))
    return pixels.clip(0, 255).astype(np.uint8).reshape(n, 3072)


def write_cifar_archive(path: Path, dataset: str = "cifar100", n_train: int = 60, n_test: int = 20,
                        seed: int = 0, compresslevel: int = 9, noise: int | None = None) -> dict:
    """Write random images as an official-format .tar.gz; returns the arrays written."""
    folder, label_key, names_key, meta, train_files, test_file, classes = LAYOUTS[dataset]
    rng = np.random.default_rng(seed)

    def batch(n: int) -> dict:
        return {b"data": photo_like(rng, n, noise),
                label_key: rng.integers(0, classes, size=n).tolist(),
                b"filenames": [b"x.png"] * n}

    members = {name: batch(n_train // len(train_files)) for name in train_files}
    members[test_file] = batch(n_test)
    members[meta] = {names_key: [f"c{i}".encode() for i in range(classes)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, obj in members.items():
            payload = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return {"train_data": np.concatenate([members[n][b"data"] for n in train_files]),
            "train_labels": sum((members[n][label_key] for n in train_files), []),
            "test_data": members[test_file][b"data"],
            "test_labels": members[test_file][label_key]}


def write_idx(path: Path, array: np.ndarray) -> None:
    """One gzipped IDX file of uint8 values (MNIST's format)."""
    import gzip
    import struct

    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
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
