"""Batches for the trainer: the dataset kept on the device and augmented there in batched ops
(`loader=device`, device.py), or torchvision transforms in DataLoader workers (`loader=dataloader`,
workers.py). Each `loader` config names its factory as `_target_`; both take a `Batching`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from experiments.batches.augment import BatchAugment
from experiments.data import Splits
from experiments.errors import UserError
from experiments.models.pretrained import ModelInput


@dataclass
class Batching:
    """What every kind of loader is told, whatever the kind."""

    augment: BatchAugment | None  # the training split's augmentation
    input: ModelInput  # what batches are turned into: the model's size, channels, normalization
    batch_size: int
    eval_batch_size: int
    seed: int  # the shuffling and augmentation generator's seed
    device: torch.device
    channels_last: bool = False


def repeats_grey(stored_channels: int, model_input: ModelInput) -> bool:
    """Whether 1-channel images are repeated to a model's 3 (a pretrained RGB model on MNIST or
    grey photos); any other mismatch is refused."""
    if stored_channels == model_input.channels:
        return False
    if stored_channels == 1:
        return True
    raise UserError(f"the images have {stored_channels} channels but the model takes "
                    f"{model_input.channels}: set data.channels={model_input.channels}")


class Loaders(NamedTuple):
    train: Loader
    val: Loader | None  # None without a validation split
    test: Loader


class Loader:
    """What both kinds of loader share: a split of `split_size` images served in batches of
    `batch_size` (the training split's changes between epochs under trainer.batch_schedule), a
    ragged last batch dropped (`drop_last`) only where a full batch exists, so tiny datasets
    still train."""

    def __init__(self, split_size: int, batch_size: int, drop_last: bool):
        self.split_size, self.want_drop_last = split_size, drop_last
        self.set_batch_size(batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.drop_last = self.want_drop_last and self.split_size >= batch_size

    def __len__(self) -> int:
        n, b = self.split_size, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def num_images(self) -> int:
        """Images served per pass (fewer than the split when the last batch is dropped)."""
        return min(len(self) * self.batch_size, self.split_size)


def make_loaders(splits: Splits, batching: Batching, make: Callable[..., Loader]) -> Loaders:
    """Train (shuffled, augmented, a ragged last batch dropped), val and test, each made by
    `make(split, batch_size, augment, train)`."""
    b = batching
    return Loaders(make(splits.train, b.batch_size, b.augment, True),
                   None if splits.val is None else make(splits.val, b.eval_batch_size, None, False),
                   make(splits.test, b.eval_batch_size, None, False))
