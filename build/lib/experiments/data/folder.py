"""Any small image dataset laid out as ROOT/train/<class>/*.png|jpg and ROOT/test/<class>/*.

Images are decoded once (resized to data.image_size, converted to data.channels) into the same
uint8 cache as CIFAR; the cache is rebuilt when files are added, removed, changed or moved
between class folders, or when the classes change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from experiments.data.base import ImageData, Split
from experiments.data.cache import CachedSource
from experiments.errors import DataError

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


def decode(path: Path, size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable image ({err}). Remove or replace it.") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_split(files: list[tuple[Path, int]], size: int, channels: int) -> Split:
    images = np.zeros((len(files), channels, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = decode(path, size, channels)
    return Split(torch.from_numpy(images), torch.tensor([label for _, label in files], dtype=torch.int64))


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
class Folder(CachedSource):
    """data=folder data.root=PATH; num_classes comes from the class folders (conf/data/folder.yaml)."""

    names: ClassVar[tuple[str, ...]] = ("folder",)

    @property
    def cache_name(self) -> str:
        # hidden among ROOT's train/ and test/; one per decoded size and channel count
        return f".cache-{self.image_size}px-{self.channels}ch.uint8.pt"

    def load(self) -> ImageData:
        root, classes = Path(self.root), class_names(self.root)
        train, test = (image_files(root / split, classes) for split in ("train", "test"))
        if not train or not test:
            raise DataError(f"{root} has no images in {'train' if not train else 'test'}/<class>/ "
                            f"(looked for {', '.join(sorted(SUFFIXES))}).")

        def build() -> ImageData:
            return ImageData(decode_split(train, self.image_size, self.channels),
                             decode_split(test, self.image_size, self.channels), classes)

        return self.cached(build, stamp(root, train + test, classes))
