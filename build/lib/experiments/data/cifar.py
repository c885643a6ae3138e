"""CIFAR-10 and CIFAR-100 from the official "python version" archives, read without unpacking.

The file layout is written once, in CIFAR_FORMATS: the reader and the writer (small archives in
the same format, for the tests and the benchmark, where the real ones cannot be downloaded)
both follow it.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from experiments.data.base import ImageData, Split
from experiments.data.fetch import DownloadedSource
from experiments.errors import DataError

IMAGE_SHAPE = (3, 32, 32)  # each image is one row of 3072 bytes: the red plane, green, blue


@dataclass(frozen=True)
class CifarFormat:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int


CIFAR_FORMATS = {
    "cifar10": CifarFormat(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        "batches.meta", b"labels", b"label_names", 10),
    "cifar100": CifarFormat(
        "cifar-100-python", ("train",), "test", "meta", b"fine_labels", b"fine_label_names", 100),
}


def read_cifar_archive(path: Path, fmt: CifarFormat) -> ImageData:
    """Parse a CIFAR python-format .tar.gz directly, without unpacking it to disk."""
    wanted = {f"{fmt.folder}/{name}" for name in (*fmt.train_files, fmt.test_file, fmt.meta_file)}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one sequential pass: random access into a .gz re-decompresses
                if member.name in wanted:
                    found[member.name.split("/")[-1]] = pickle.load(
                        tar.extractfile(member), encoding="bytes")
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as err:
        raise DataError(f"{path} is not a readable CIFAR archive ({err}). Delete it so it is "
                        "downloaded again, or replace it with the official python-version file.")
    missing = sorted(n.split("/")[-1] for n in wanted if n.split("/")[-1] not in found)
    if missing:
        raise DataError(f"{path} lacks {missing} under {fmt.folder}/: it is not the official "
                        "python-version CIFAR archive. Delete it or replace it.")

    def to_split(batches: list[dict]) -> Split:
        images = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[fmt.label_key], dtype=np.int64) for b in batches])
        return Split(torch.from_numpy(images.reshape(-1, *IMAGE_SHAPE).copy()), torch.from_numpy(labels))

    classes = [n.decode() for n in found[fmt.meta_file][fmt.names_key]]
    train = to_split([found[name] for name in fmt.train_files])
    return ImageData(train, to_split([found[fmt.test_file]]), classes)


@dataclass(kw_only=True)
class Cifar(DownloadedSource):
    """data=cifar10 / data=cifar100: the archive at `url`, checked against `md5` (null: unchecked)."""

    names: ClassVar[tuple[str, ...]] = tuple(CIFAR_FORMATS)

    md5: str | None

    def load(self) -> ImageData:
        return self.cached(lambda: read_cifar_archive(self.fetch(self.url, self.md5),
                                                      CIFAR_FORMATS[self.name]))


# --- the writer: small archives in the official format ---------------------------------------

def photo_like(rng: np.random.Generator, n: int, noise: int | None) -> np.ndarray:
    """(n, 3072) uint8: blocky colour layouts plus pixel noise. noise=None gives uniform bytes.

    Uniform random bytes do not compress, so gzip stores them and "decompressing" is a copy;
    with noise=48 the archive compresses about as much as the real CIFAR-100 one (~0.9), so
    parsing it costs about what parsing the real one does.
    """
    row = int(np.prod(IMAGE_SHAPE))
    if noise is None:
        return rng.integers(0, 256, size=(n, row), dtype=np.uint8)
    channels, height, width = IMAGE_SHAPE
    layout = rng.integers(0, 256, size=(n, channels, 4, 4))
    layout = layout.repeat(height // 4, axis=2).repeat(width // 4, axis=3)
    pixels = layout + rng.integers(-noise, noise + 1, size=(n, *IMAGE_SHAPE))
    return pixels.clip(0, 255).astype(np.uint8).reshape(n, row)


def write_cifar_archive(path: Path, dataset: str = "cifar100", n_train: int = 60, n_test: int = 20,
                        seed: int = 0, compresslevel: int = 9, noise: int | None = None) -> dict:
    """Write random images as an official-format .tar.gz; returns the arrays written.

    n_train is spread over the format's training files (CIFAR-10 has five)."""
    fmt = CIFAR_FORMATS[dataset]
    rng = np.random.default_rng(seed)

    def batch(n: int) -> dict:
        return {b"data": photo_like(rng, n, noise),
                fmt.label_key: rng.integers(0, fmt.num_classes, size=n).tolist(),
                b"filenames": [b"x.png"] * n}

    members = {name: batch(n_train // len(fmt.train_files)) for name in fmt.train_files}
    members[fmt.test_file] = batch(n_test)
    members[fmt.meta_file] = {fmt.names_key: [f"c{i}".encode() for i in range(fmt.num_classes)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, obj in members.items():
            payload = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"{fmt.folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return {"train_data": np.concatenate([members[n][b"data"] for n in fmt.train_files]),
            "train_labels": sum((members[n][fmt.label_key] for n in fmt.train_files), []),
            "test_data": members[fmt.test_file][b"data"],
            "test_labels": members[fmt.test_file][fmt.label_key]}
