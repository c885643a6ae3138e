"""Datasets as uint8 tensors: the official CIFAR archives, a synthetic stand-in, a decode-once cache.

Everything here returns *un-augmented* images, (N, C, H, W) uint8, with int64 labels. Augmentation
happens later, per batch, so every epoch draws fresh random views: a cache of augmented images
would freeze them after the first epoch.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from experiments.atomic import atomic_write
from experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class ImageData:
    train: Split
    test: Split
    classes: list[str]


@dataclass
class Splits:
    """What the trainer sees: validation is carved from train; test is only for the final report."""

    train: Split
    val: Split | None
    test: Split
    classes: list[str]


# --- the official CIFAR "python version" archives -------------------------------------------

@dataclass(frozen=True)
class CifarFormat:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes


CIFAR_FORMATS = {
    "cifar10": CifarFormat(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        "batches.meta", b"labels", b"label_names"),
    "cifar100": CifarFormat(
        "cifar-100-python", ("train",), "test", "meta", b"fine_labels", b"fine_label_names"),
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
        return Split(torch.from_numpy(images.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels))

    classes = [n.decode() for n in found[fmt.meta_file][fmt.names_key]]
    train = to_split([found[name] for name in fmt.train_files])
    return ImageData(train, to_split([found[fmt.test_file]]), classes)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, expected: str | None) -> None:
    if expected and (actual := md5sum(path)) != expected:
        raise DataError(f"{path} has checksum {actual}, expected {expected}: the file is corrupt "
                        "or incomplete. Delete it so it is downloaded again.")


def download(url: str, dest: Path, md5: str | None, timeout_s: float) -> None:
    """Stream `url` to `dest` through a temporary file, so a broken download never looks complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        check_md5(part, md5)
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{dest} is missing and downloading it from {url} failed ({err}). Either download "
            f"that file yourself and put it at {dest}, pass data.root=DIR for a folder that "
            "holds it, or try experiment=smoke (synthetic data, no download).") from None
    except DataError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)


def fetch(cfg, url: str, md5: str | None) -> Path:
    """The file of `url` under data.root, downloaded (and checksummed) when it is not there yet."""
    path = Path(cfg.root) / Path(urlparse(url).path).name
    if path.exists():
        check_md5(path, md5)
    elif cfg.download:
        download(url, path, md5, cfg.download_timeout_s)
    else:
        raise DataError(f"{path} is missing and data.download=false. Put the official file "
                        f"({url}) there, or pass data.root=DIR for a folder that holds it.")
    return path


# --- the decode-once cache --------------------------------------------------------------------

def save_cache(path: Path, data: ImageData, stamp: str | None = None) -> None:
    """Written atomically: a killed or concurrent writer never leaves half a cache."""
    payload = {"version": CACHE_VERSION, "classes": data.classes, "stamp": stamp,
               "train_images": data.train.images, "train_labels": data.train.labels,
               "test_images": data.test.images, "test_labels": data.test.labels}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_cache(path: Path, channels: int, size: int, num_classes: int | None,
               stamp: str | None = None) -> ImageData | None:
    """The cached dataset, or None (with a warning) when it is absent, stale or corrupt.

    Checked: format version, dtypes, image shapes, image and label counts, label range, class
    count, and the source's `stamp` (e.g. a digest of an image folder's paths, sizes and mtimes).
    A truncated file fails to load at all (the zip directory is at its end).
    """
    if not path.exists():
        return None
    try:
        raw = torch.load(path, weights_only=True, mmap=True)
        data = ImageData(Split(raw["train_images"], raw["train_labels"]),
                         Split(raw["test_images"], raw["test_labels"]), list(raw["classes"]))
        num_classes = num_classes or len(data.classes)
        ok = raw["version"] == CACHE_VERSION and len(data.classes) == num_classes and all(
            s.images.dtype == torch.uint8 and s.images.shape[1:] == (channels, size, size)
            and s.labels.dtype == torch.int64 and len(s.labels) == len(s.images)
            and (len(s.labels) == 0 or 0 <= int(s.labels.min()) <= int(s.labels.max()) < num_classes)
            for s in (data.train, data.test)) and raw.get("stamp") == stamp
    except Exception as err:  # a truncated or foreign file can fail in many ways inside torch.load
        log.warning("cache %s is unreadable (%s): rebuilding it", path, err)
        return None
    if not ok:
        log.warning("cache %s does not match this dataset's format: rebuilding it", path)
        return None
    return data


def cache_dir(cfg) -> Path:
    """Where the decode-once cache and its lock live: data.cache_dir, by default data.root.
    A folder of its own for a read-only data mount."""
    return Path(cfg.get("cache_dir") or cfg.root)


@contextmanager
def exclusive(lock_path: Path):
    """An inter-process lock (parallel jobs of a sweep share the cache): one builds, others wait."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "w")
    except OSError as err:
        raise DataError(f"cannot write the data cache in {lock_path.parent} ({err.strerror or err}). "
                        "Set data.cache_dir=DIR to a writable folder (e.g. on a read-only data "
                        "mount).") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(cache: Path, cfg, build: Callable[[], ImageData], stamp: str | None = None) -> ImageData:
    """The dataset from its uint8 cache, or built once by `build` and cached (one builder at a
    time: parallel jobs wait for it, then load what it wrote)."""
    data = load_cache(cache, cfg.channels, cfg.image_size, cfg.num_classes, stamp)
    if data is not None:
        return data
    with exclusive(cache.with_name(cache.name + ".lock")):
        data = load_cache(cache, cfg.channels, cfg.image_size, cfg.num_classes, stamp)
        if data is None:
            try:
                data = build()
            except DataError as err:
                if not cache.exists():
                    raise
                raise DataError(f"the cache {cache} is corrupt or stale, and rebuilding it failed: "
                                f"{err}") from None
            save_cache(cache, data, stamp)
            log.info("decoded %s once into %s", cfg.name, cache)
    return data


def cache_path(cfg) -> Path | None:
    """Where the dataset of `cfg` is decoded to once (None: synthetic data is never cached)."""
    if cfg.name == "synthetic":
        return None
    if cfg.name == "folder":
        return cache_dir(cfg) / f".cache-{cfg.image_size}px-{cfg.channels}ch.uint8.pt"
    return cache_dir(cfg) / f"{cfg.name}.uint8.pt"


def load_cifar(cfg) -> ImageData:
    return cached(cache_path(cfg), cfg,
                  lambda: read_cifar_archive(fetch(cfg, cfg.url, cfg.md5), CIFAR_FORMATS[cfg.name]))


# --- synthetic CIFAR-shaped data, for smoke runs and tests -----------------------------------

def make_synthetic(cfg) -> ImageData:
    """Learnable noise: each class has a blocky colour template; images mix it with pixel noise.

    Templates are mirror-symmetric (a 4x2 grid of colour blocks and its mirror image), so a
    flipped image is still its class, as `hflip_ok: true` promises to the flip augmentation."""
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    half = torch.randint(0, 256, (cfg.num_classes, cfg.channels, 4, 2), generator=gen)
    templates = torch.cat([half, half.flip(3)], dim=3).float()
    templates = F.interpolate(templates, size=shape[1:], mode="nearest")

    def draw(n: int) -> Split:
        labels = torch.randint(0, cfg.num_classes, (n,), generator=gen)
        noise = torch.randint(0, 256, (n, *shape), generator=gen).float()
        images = (1 - cfg.noise) * templates[labels] + cfg.noise * noise
        return Split(images.round().to(torch.uint8), labels)

    return ImageData(draw(cfg.train_size), draw(cfg.test_size),
                     [f"class_{i}" for i in range(cfg.num_classes)])


def loaders() -> dict[str, Callable]:
    from experiments.data.folder import load_folder
    from experiments.data.mnist import load_mnist

    return {"cifar10": load_cifar, "cifar100": load_cifar, "synthetic": make_synthetic,
            "mnist": load_mnist, "folder": load_folder}


def val_count(val_size: int | float, n_train: int) -> int:
    """`data.val_size` as a count: an int is a count, a float in [0, 1) a fraction of train."""
    count = round(val_size * n_train) if isinstance(val_size, float) else int(val_size)
    if not 0 <= count < n_train:
        raise ConfigError(f"data.val_size={val_size} leaves no training images "
                          f"(the training set has {n_train}); use a count below it or a fraction < 1")
    return count


def split_validation(train: Split, val_size: int | float, seed: int) -> tuple[Split, Split | None]:
    """A seeded random hold-out from train; its own seed, so sweeping `seed` keeps one split."""
    count = val_count(val_size, len(train))
    if count == 0:
        return train, None
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[count:]), train.subset(order[:count])


def load_splits(cfg) -> Splits:
    known = loaders()
    if cfg.name not in known:
        raise ConfigError(f"data.name={cfg.name!r} is not a dataset here; known: {sorted(known)}")
    data = known[cfg.name](cfg)
    train, val = split_validation(data.train, cfg.val_size, cfg.split_seed)
    return Splits(train, val, data.test, data.classes)
