"""SVHN (Street View House Numbers, cropped digits) from the official train_32x32.mat and
test_32x32.mat (MATLAB files read with scipy.io.loadmat), decoded once into the uint8 cache.

In the files X is (32, 32, 3, N) and y is (N, 1) with the digit 0 labelled 10: here label 0.
`data.extra=true` adds extra_32x32.mat (531k easier images) to the training set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from experiments.data.base import ImageData, Split, check_native_size
from experiments.data.fetch import DownloadedSource
from experiments.errors import DataError


def read_svhn_mat(path: Path) -> Split:
    from scipy.io import loadmat  # here: scipy only when SVHN or Flowers-102 is read

    try:
        mat = loadmat(path)
        images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as err:
        raise DataError(f"{path} is not a readable SVHN .mat file ({err}). Delete it so it is "
                        "downloaded again, or replace it with the official file.") from None
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise DataError(f"{path} holds X of shape {images.shape} and {len(labels)} labels, not "
                        "(32, 32, 3, N) and N: it is not the official SVHN file.")
    if len(labels) and not (1 <= labels.min() and labels.max() <= 10):
        raise DataError(f"{path} has labels outside 1..10: it is not the official SVHN file.")
    labels = labels.astype(np.int64) % 10  # the digit 0 is labelled 10
    return Split(torch.from_numpy(np.ascontiguousarray(images.astype(np.uint8).transpose(3, 2, 0, 1))),
                 torch.from_numpy(labels))


@dataclass(kw_only=True)
class Svhn(DownloadedSource):
    """data=svhn: `files` maps train, test and extra to {name, md5}, fetched from `url` + name."""

    names: ClassVar[tuple[str, ...]] = ("svhn",)

    files: dict[str, dict[str, str | None]]
    extra: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_native_size(self, 32)

    @property
    def cache_name(self) -> str:
        return f"svhn{'-extra' if self.extra else ''}.uint8.pt"

    def load(self) -> ImageData:
        wanted = ("train", "test", "extra") if self.extra else ("train", "test")

        def build() -> ImageData:
            paths = self.fetch_files({k: self.files[k] for k in wanted})
            train = [read_svhn_mat(paths[k]) for k in wanted if k != "test"]
            train = Split(torch.cat([s.images for s in train]), torch.cat([s.labels for s in train]))
            return ImageData(train, read_svhn_mat(paths["test"]), [str(d) for d in range(10)])

        return self.cached(build)
