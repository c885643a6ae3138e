"""STL-10's labelled images (96 px, 10 classes) from the official binary files, decoded once.

data.root holds stl10_binary.tar.gz (downloaded and checksummed when missing; read without
unpacking, its 100k unlabelled images skipped) or its extracted folder ROOT/stl10_binary/ with
train_X.bin, train_y.bin, test_X.bin, test_y.bin (and class_names.txt). X files are uint8 images
of 3 x 96 x 96 stored column-major; y files are uint8 labels 1..10 (here 0..9). The unlabelled
split is not used.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from experiments.data.base import ImageData, Split, check_native_size
from experiments.data.fetch import DownloadedSource
from experiments.errors import DataError

FOLDER = "stl10_binary"
SIZE = 96
MEMBERS = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def to_split(images: bytes, labels: bytes, where: str) -> Split:
    row = 3 * SIZE * SIZE
    if len(images) % row or len(images) // row != len(labels):
        raise DataError(f"{where} holds {len(images)} image bytes and {len(labels)} labels, not "
                        f"{row} bytes per label: it is not the official STL-10 binary data.")
    y = np.frombuffer(labels, dtype=np.uint8).astype(np.int64)
    if len(y) and not (1 <= y.min() and y.max() <= 10):
        raise DataError(f"{where} has labels outside 1..10: it is not the official STL-10 data.")
    x = np.frombuffer(images, dtype=np.uint8).reshape(-1, 3, SIZE, SIZE).transpose(0, 1, 3, 2)
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y - 1))


def class_names(text: str | None) -> list[str]:
    names = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return names if len(names) == len(CLASSES) else CLASSES


def read_stl10_archive(path: Path) -> ImageData:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one sequential pass; unlabeled_X.bin is skipped, not read
                name = member.name.removeprefix(f"{FOLDER}/")
                if member.isfile() and name in (*MEMBERS, "class_names.txt"):
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path} is not a readable STL-10 archive ({err}). Delete it so it is "
                        "downloaded again, or replace it with the official file.") from None
    if missing := [m for m in MEMBERS if m not in found]:
        raise DataError(f"{path} lacks {FOLDER}/{missing[0]}: it is not the official STL-10 "
                        "binary archive. Delete it or replace it.")
    names = found.get("class_names.txt", b"").decode(errors="replace")
    return ImageData(to_split(found["train_X.bin"], found["train_y.bin"], str(path)),
                     to_split(found["test_X.bin"], found["test_y.bin"], str(path)), class_names(names))


def read_stl10_folder(folder: Path) -> ImageData:
    if missing := [m for m in MEMBERS if not (folder / m).is_file()]:
        raise DataError(f"{folder / missing[0]} is missing: {folder} is not the official STL-10 "
                        "binary folder.")
    names = folder / "class_names.txt"
    read = {m: (folder / m).read_bytes() for m in MEMBERS}
    return ImageData(to_split(read["train_X.bin"], read["train_y.bin"], str(folder)),
                     to_split(read["test_X.bin"], read["test_y.bin"], str(folder)),
                     class_names(names.read_text() if names.is_file() else None))


@dataclass(kw_only=True)
class Stl10(DownloadedSource):
    """data=stl10: `files` maps archive to {name, md5}, fetched from `url` + name."""

    names: ClassVar[tuple[str, ...]] = ("stl10",)

    files: dict[str, dict[str, str | None]]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_native_size(self, SIZE)

    def load(self) -> ImageData:
        folder = Path(self.root) / FOLDER
        if folder.is_dir():
            return self.cached(lambda: read_stl10_folder(folder))
        return self.cached(lambda: read_stl10_archive(self.fetch_files(
            self.files, f"its extracted folder {folder}/ ({', '.join(MEMBERS)})")["archive"]))
