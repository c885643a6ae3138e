"""CIFAR-10 and CIFAR-100 from the official "python version" archives, read without unpacking.

The file layout is written once, in CIFAR_FORMATS: the reader and the writer (small archives in
the same format, for the tests and the benchmark, where the real ones cannot be downloaded)
both follow it.
"""

from __future__ import annotations

import io
import pickle
import struct
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


# What the official pickles call on load: numpy's array reconstruction, and nothing else (their
# dicts, lists, bytes and ints need no globals). They were written under numpy 1, which named the
# reconstructor numpy.core.multiarray._reconstruct; numpy 2 names it numpy._core.multiarray.
RECONSTRUCT = np.empty(0).__reduce__()[0]  # that function, wherever this numpy keeps it
ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): RECONSTRUCT,
                 ("numpy._core.multiarray", "_reconstruct"): RECONSTRUCT,
                 ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
# what a malformed member can raise while unpickling (bad lengths, memo keys, numpy arguments)
UNREADABLE = (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError, ValueError,
              TypeError, KeyError, IndexError, AttributeError, OverflowError)


class BatchUnpickler(pickle.Unpickler):
    """Reads one archive member, admitting no global beyond ARRAY_GLOBALS.

    A pickle calls whatever global it names while it loads, and `data.md5=null` (or an archive
    put there by hand) means no checksum stands between a crafted file and `pickle.load`: any
    other global is refused when it is looked up, before anything can call it."""

    def __init__(self, file, where: str):
        super().__init__(file, encoding="bytes")  # written by Python 2, whose str is bytes
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) in ARRAY_GLOBALS:
            return ARRAY_GLOBALS[module, name]
        raise DataError(f"{self.where} asks to call {module}.{name} when unpickled: it is not the "
                        "official python-version CIFAR archive (whose pickles call only numpy's "
                        "array reconstruction), and nothing in it was run. Delete it, or replace "
                        "it with the official file.")


def read_cifar_archive(path: Path, fmt: CifarFormat) -> ImageData:
    """Parse a CIFAR python-format .tar.gz directly, without unpacking it to disk."""
    wanted = {f"{fmt.folder}/{name}" for name in (*fmt.train_files, fmt.test_file, fmt.meta_file)}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one sequential pass: random access into a .gz re-decompresses
                if member.name in wanted:
                    found[member.name.split("/")[-1]] = BatchUnpickler(
                        tar.extractfile(member), f"{path} ({member.name})").load()
    except UNREADABLE as err:
        raise DataError(f"{path} is not a readable CIFAR archive ({err}). Delete it so it is "
                        "downloaded again, or replace it with the official python-version file.") from None
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


class Python2Pickler(pickle._Pickler):  # the pure-Python pickler: its methods can be overridden
    """Pickles at protocol 2 as the official files were pickled, by Python 2 under numpy 1: bytes
    and str as Python 2 strings, the array reconstructor under its numpy-1 name.

    Python 3 at protocol 2 (which has no bytes opcode) would pickle every bytes object, the image
    data included, as a call of `_codecs.encode`: a global the official files never name."""

    dispatch = pickle._Pickler.dispatch.copy()
    reconstructor_module = "numpy.core.multiarray"  # numpy 1's name (the reader takes numpy 2's too)

    def save_string(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_string

    def save_global(self, obj, name=None) -> None:
        if obj is not RECONSTRUCT:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{self.reconstructor_module}\n_reconstruct\n".encode())
        self.memoize(obj)


def pickle_like_the_official_files(obj, pickler: type[Python2Pickler] = Python2Pickler) -> bytes:
    buffer = io.BytesIO()
    pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_members(dataset: str, n_train: int, n_test: int, seed: int, noise: int | None) -> dict:
    """The archive's members (file name: object), random images in the official layout.

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
    return members


def write_members(path: Path, dataset: str, payloads: dict[str, bytes],
                  compresslevel: int = 9) -> None:
    """A .tar.gz holding each payload (pickled already) as FOLDER/NAME, as the official one does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, payload in payloads.items():
            info = tarfile.TarInfo(f"{CIFAR_FORMATS[dataset].folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def write_cifar_archive(path: Path, dataset: str = "cifar100", n_train: int = 60, n_test: int = 20,
                        seed: int = 0, compresslevel: int = 9, noise: int | None = None) -> dict:
    """Write random images as an official-format .tar.gz; returns the arrays written."""
    fmt = CIFAR_FORMATS[dataset]
    members = cifar_members(dataset, n_train, n_test, seed, noise)
    write_members(path, dataset, {name: pickle_like_the_official_files(obj)
                                  for name, obj in members.items()}, compresslevel)
    return {"train_data": np.concatenate([members[n][b"data"] for n in fmt.train_files]),
            "train_labels": sum((members[n][fmt.label_key] for n in fmt.train_files), []),
            "test_data": members[fmt.test_file][b"data"],
            "test_labels": members[fmt.test_file][fmt.label_key]}
