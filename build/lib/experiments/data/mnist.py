"""MNIST from its four official IDX files (gzipped), decoded once into the uint8 cache."""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from experiments.data.base import ImageData, Split
from experiments.data.fetch import DownloadedSource
from experiments.errors import DataError

IDX_UINT8 = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An IDX file: 2 zero bytes, a dtype byte (0x08 = uint8), a rank byte, big-endian dims, data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a readable gzip file ({err}). Delete it so it is "
                        "downloaded again.") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != IDX_UINT8:
        raise DataError(f"{path} is not an IDX file of uint8 values (bad header): delete or replace it.")
    rank = raw[3]
    dims = struct.unpack(f">{rank}I", raw[4:4 + 4 * rank])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {data.size} values where its header says {dims}: truncated.")
    return data.reshape(dims)


@dataclass(kw_only=True)
class Mnist(DownloadedSource):
    """data=mnist: `files` maps train_images, train_labels, test_images, test_labels to
    {name, md5}; each is fetched from `url` + name."""

    names: ClassVar[tuple[str, ...]] = ("mnist",)

    files: dict[str, dict[str, str | None]]

    def split(self, images_key: str, labels_key: str) -> Split:
        images, labels = (read_idx(self.fetch(self.url + self.files[k]["name"], self.files[k]["md5"]))
                          for k in (images_key, labels_key))
        if len(images) != len(labels):
            raise DataError(f"MNIST {images_key} has {len(images)} images but {len(labels)} labels.")
        return Split(torch.from_numpy(images.copy()).unsqueeze(1),
                     torch.from_numpy(labels.astype(np.int64)))

    def load(self) -> ImageData:
        return self.cached(lambda: ImageData(self.split("train_images", "train_labels"),
                                             self.split("test_images", "test_labels"),
                                             [str(d) for d in range(10)]))
