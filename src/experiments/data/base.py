"""The data types every source returns, the base of every source, and the validation split.

Sources return *un-augmented* images, (N, C, H, W) uint8, with int64 labels. Augmentation
happens later, per batch, so every epoch draws fresh random views: a cache of augmented images
would freeze them after the first epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from experiments.errors import ConfigError


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
    source: Source | None = None  # where they were read from (its cache, for provenance)


@dataclass(kw_only=True)
class Source:
    """One dataset, built by Hydra from conf/data/NAME.yaml (its `_target_` names the subclass).

    The fields every data config has. mean, std and hflip_ok are read by the batch pipeline
    from the config; they are fields here so that a config and its source hold the same keys.
    """

    names: ClassVar[tuple[str, ...]]  # the data.name values this source reads

    name: str
    num_classes: int
    channels: int
    image_size: int
    val_size: int | float  # a count, or a fraction of train in [0, 1)
    split_seed: int
    mean: list[float]
    std: list[float]
    hflip_ok: bool

    def __post_init__(self) -> None:
        # data.name labels every summary and table row: a name this source does not read
        # (data.name=imagenet on top of data=synthetic) would label one dataset's results
        # with another's name.
        if self.name not in self.names:
            raise ConfigError(
                f"data.name={self.name!r} is not a dataset here; known: {list(self.names)} "
                f"(for {type(self).__module__}.{type(self).__qualname__}). Choose the dataset "
                "with data=NAME (a file conf/data/NAME.yaml), not data.name=NAME.")

    @property
    def cache_path(self) -> Path | None:
        """Where the dataset is decoded to once; None: never cached (e.g. generated data)."""
        return None

    def load(self) -> ImageData:
        raise NotImplementedError


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


def check_native_size(source: Source, size: int) -> None:
    """A dataset stored at its own resolution (SVHN's 32 px, STL-10's 96): data.image_size must
    say so (the batches are resized to a model's input size on the device anyway)."""
    if source.image_size != size:
        raise ConfigError(f"data={source.name} is stored at its native {size} px, not "
                          f"data.image_size={source.image_size}: leave data.image_size={size} (a "
                          "pretrained model resizes the batches to its input size itself).")
