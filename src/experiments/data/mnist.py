"""MNIST from its four official IDX files (gzipped), decoded once into the uint8 cache."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from experiments.data import ImageData, Split, cache_path, cached, fetch
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


def load_split(cfg, images_key: str, labels_key: str) -> Split:
    images, labels = (read_idx(fetch(cfg, cfg.url + cfg.files[k].name, cfg.files[k].md5))
                      for k in (images_key, labels_key))
    if len(images) != len(labels):
        raise DataError(f"MNIST {images_key} has {len(images)} images but {len(labels)} labels.")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_mnist(cfg) -> ImageData:
    def build() -> ImageData:
        return ImageData(load_split(cfg, "train_images", "train_labels"),
                         load_split(cfg, "test_images", "test_labels"), [str(d) for d in range(10)])

    return cached(cache_path(cfg), cfg, build)
