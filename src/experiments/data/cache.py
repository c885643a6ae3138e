"""The decode-once cache: a dataset's uint8 tensors in one file, built by one job at a time.

Parsing an archive or decoding image files costs seconds to minutes; loading the cache is
memory-mapped (see `python -m experiments.bench`, "dataset load time").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from experiments.atomic import atomic_write
from experiments.data.base import ImageData, Source, Split
from experiments.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1


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


@contextmanager
def exclusive(lock_path: Path):
    """An inter-process lock (parallel jobs of a sweep share the cache): one builds, others wait
    (filelock's FileLock: flock on Unix)."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path)
        lock.acquire()
    except OSError as err:
        raise DataError(f"cannot write the data cache in {lock_path.parent} ({err.strerror or err}). "
                        "Set data.cache_dir=DIR to a writable folder (e.g. on a read-only data "
                        "mount).") from None
    try:
        yield
    finally:
        lock.release()


def cached(cache: Path, build: Callable[[], ImageData], channels: int, size: int,
           num_classes: int | None, stamp: str | None = None) -> ImageData:
    """The dataset from its uint8 cache, or built once by `build` and cached (one builder at a
    time: parallel jobs wait for it, then load what it wrote)."""
    data = load_cache(cache, channels, size, num_classes, stamp)
    if data is not None:
        return data
    with exclusive(cache.with_name(cache.name + ".lock")):
        data = load_cache(cache, channels, size, num_classes, stamp)
        if data is None:
            try:
                data = build()
            except DataError as err:
                if not cache.exists():
                    raise
                raise DataError(f"the cache {cache} is corrupt or stale, and rebuilding it failed: "
                                f"{err}") from None
            save_cache(cache, data, stamp)
            log.info("decoded the dataset once into %s", cache)
    return data


@dataclass(kw_only=True)
class CachedSource(Source):
    """A source read from files under `root` and decoded once into CACHE_DIR/`cache_name`.

    cache_dir (default: root) holds the cache and its lock: a folder of its own for a read-only
    data mount.
    """

    root: str
    cache_dir: str | None = None

    @property
    def cache_name(self) -> str:
        return f"{self.name}.uint8.pt"

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir or self.root) / self.cache_name

    def cached(self, build: Callable[[], ImageData], stamp: str | None = None) -> ImageData:
        """`build()`'s dataset, from the cache when it holds this source's (and `stamp`'s)."""
        return cached(self.cache_path, build, self.channels, self.image_size, self.num_classes, stamp)
