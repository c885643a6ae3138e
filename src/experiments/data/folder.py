"""Any image dataset laid out as ROOT/train/<class>/*.png|jpg and ROOT/test/<class>/*.

Images are decoded once into the same uint8 cache as CIFAR, as data.image_size squares: the
shorter side resized to it, then the centre crop (`data.fit=center_crop`, torchvision's
Resize + CenterCrop, so variable-size photos such as Oxford-IIIT Pet keep their aspect), or the
whole image stretched (`data.fit=stretch`). The cache is rebuilt when files are added, removed,
changed or moved between class folders, or when the classes change.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from experiments.data.base import ImageData, Split
from experiments.data.cache import CachedSource
from experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)
FITS = ("center_crop", "stretch")
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def class_names(root: str | Path) -> list[str]:
    train = Path(root) / "train"
    if not train.is_dir():
        raise DataError(f"{train} does not exist: data=folder needs data.root=PATH with "
                        "PATH/train/<class>/*.png|jpg and PATH/test/<class>/*.")
    names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{train} has no class folders (expected {train}/<class>/*.png|jpg).")
    return names


def image_files(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist: data=folder needs train/ and test/ folders.")
    unknown = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise DataError(f"{split_dir} has classes that train/ lacks: {unknown}")
    return [(path, label) for label, name in enumerate(classes) if (split_dir / name).is_dir()
            for path in sorted((split_dir / name).rglob("*")) if path.suffix.lower() in SUFFIXES]


def fit_square(img: Image.Image, size: int, fit: str) -> Image.Image:
    """size x size: stretched, or the shorter side resized to size and the centre kept."""
    if fit == "stretch" or img.size == (size, size):
        return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)
    w, h = img.size  # the shorter side to size, the longer truncated as torchvision's Resize does
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize((new_w, new_h), Image.BILINEAR)  # PIL's bilinear is antialiased
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))  # CenterCrop's
    return img.crop((left, top, left + size, top + size))


def decode(path: Path | IO[bytes], size: int, channels: int, fit: str = "center_crop",
           where: str | None = None) -> np.ndarray:
    """One image file (a path, or an open file such as an archive member named by `where`) as
    (channels, size, size) uint8."""
    try:
        with Image.open(path) as img:
            img = fit_square(img.convert("L" if channels == 1 else "RGB"), size, fit)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{where or path} is not a readable image ({err}). Remove or replace it.") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_split(files: list[tuple[Path, int]], size: int, channels: int,
                 fit: str = "center_crop") -> Split:
    images = np.zeros((len(files), channels, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = decode(path, size, channels, fit)
    return Split(torch.from_numpy(images), torch.tensor([label for _, label in files], dtype=torch.int64))


def check_fit(fit: str) -> None:
    """`data.fit` of every source that resizes photos (data=folder, pets, flowers102, ...)."""
    if fit not in FITS:
        raise ConfigError(f"data.fit must be one of {list(FITS)}, got {fit!r}")


@dataclass(kw_only=True)
class Photos:
    """What every source of photos shares (data=folder, pets, flowers102, tiny_imagenet): they
    are decoded once at data.image_size with `fit` (checked when built), and a cache is named
    by dataset, size, channels and fit. Mixed in before the source's base class."""

    fit: str = "center_crop"  # or stretch

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fit(self.fit)

    @property
    def cache_name(self) -> str:
        return f"{self.names[0]}-{self.image_size}px-{self.channels}ch-{self.fit}.uint8.pt"


class ImageSlots:
    """The images of listed files, each decoded into its place in its split's array as it is
    found (in a folder, or as a member of an archive read in one pass).

    `listing` is {"train": [(stem, label)], "test": [...]}, a stem being a file name without its
    suffix; files of other names, and files that are not images, are not wanted."""

    def __init__(self, listing: dict[str, list[tuple[str, int]]], size: int, channels: int, fit: str):
        self.listing, self.size, self.channels, self.fit = listing, size, channels, fit
        self.slots = {stem: (split, i) for split, rows in listing.items()
                      for i, (stem, _) in enumerate(rows)}
        if len(self.slots) != sum(len(rows) for rows in listing.values()):
            counts = Counter(s for rows in listing.values() for s, _ in rows)
            twice = sorted(s for s, n in counts.items() if n > 1)
            raise DataError(f"the dataset's lists name {twice[0]} more than once (in one split, "
                            "or in both train and test): replace them with the official lists.")
        check_decoded_size(len(self.slots), channels, size, available_memory())
        self.images = {split: np.zeros((len(rows), channels, size, size), np.uint8)
                       for split, rows in listing.items()}
        self.filled: set[str] = set()

    def wants(self, file_name: str) -> bool:
        return Path(file_name).suffix.lower() in SUFFIXES and Path(file_name).stem in self.slots

    def put(self, file_name: str, file: Path | IO[bytes], where: str) -> None:
        split, i = self.slots[Path(file_name).stem]
        self.images[split][i] = decode(file, self.size, self.channels, self.fit, where)
        self.filled.add(Path(file_name).stem)

    def data(self, where: str, classes: list[str]) -> ImageData:
        """The train and test splits, once every listed image has been put."""
        if missing := sorted(set(self.slots) - self.filled):
            raise DataError(f"{where} lacks {len(missing)} of the images its lists name (e.g. "
                            f"{missing[0]}): replace it with the official files, or list only "
                            "the images it holds.")

        def split(name: str) -> Split:
            labels = [label for _, label in self.listing[name]]
            return Split(torch.from_numpy(self.images[name]), torch.tensor(labels, dtype=torch.int64))

        return ImageData(split("train"), split("test"), classes)


def available_memory() -> int | None:
    """Bytes of host memory free now (Linux), or None where the OS does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_decoded_size(n: int, channels: int, size: int, free: int | None) -> int:
    """The uint8 cache's size, logged before decoding; refused when host memory cannot hold it."""
    nbytes = n * channels * size * size
    log.info("decoding %d images at %dx%d px: %.1f MiB as uint8", n, size, size, nbytes / 2**20)
    if free is not None and nbytes > free:
        raise DataError(
            f"{n} images at data.image_size={size} take {nbytes / 2**30:.1f} GiB as uint8, more "
            f"than the {free / 2**30:.1f} GiB of free memory: use a smaller data.image_size (the "
            "batches are resized to the model's input size anyway)")
    return nbytes


def stamp(root: Path, files: list[tuple[Path, int]], classes: list[str]) -> str:
    """A digest of every file's path (relative to ROOT), label, size and mtime, and of the class
    names: the cache is rebuilt when any of them changes. Counts and totals are not enough: an
    image moved to another class folder keeps the file count, the total size and the newest mtime.
    """
    digest = hashlib.sha256("\0".join(classes).encode())
    for path, label in files:
        st = path.stat()
        digest.update(f"\n{path.relative_to(root).as_posix()}\0{label}\0{st.st_size}\0"
                      f"{st.st_mtime_ns}".encode())
    return digest.hexdigest()


@dataclass(kw_only=True)
class Folder(Photos, CachedSource):
    """data=folder data.root=PATH; num_classes comes from the class folders (conf/data/folder.yaml)."""

    names: ClassVar[tuple[str, ...]] = ("folder",)

    @property
    def cache_name(self) -> str:
        # hidden among ROOT's train/ and test/; one per decoded size and channel count
        return f".cache-{self.image_size}px-{self.channels}ch-{self.fit}.uint8.pt"

    def load(self) -> ImageData:
        root, classes = Path(self.root), class_names(self.root)
        train, test = (image_files(root / split, classes) for split in ("train", "test"))
        if not train or not test:
            raise DataError(f"{root} has no images in {'train' if not train else 'test'}/<class>/ "
                            f"(looked for {', '.join(sorted(SUFFIXES))}).")

        def build() -> ImageData:
            check_decoded_size(len(train) + len(test), self.channels, self.image_size,
                               available_memory())
            return ImageData(decode_split(train, self.image_size, self.channels, self.fit),
                             decode_split(test, self.image_size, self.channels, self.fit), classes)

        return self.cached(build, stamp(root, train + test, classes))
