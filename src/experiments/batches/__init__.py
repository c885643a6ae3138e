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
from experiments.ranks import SINGLE, Ranks


@dataclass
class Batching:
    """What every kind of loader is told, whatever the kind."""

    augment: BatchAugment | None  # the training split's augmentation
    input: ModelInput  # what batches are turned into: the model's size, channels, normalization
    batch_size: int
    eval_batch_size: int
    seed: int  # the shuffling and augmentation generators' seed
    device: torch.device
    channels_last: bool = False
    ranks: Ranks = SINGLE  # under DDP, this process's share of every batch (see Loader)
    cores: int = 1  # this process's share of the machine's cores (loader.workers=auto)
    stop_signals: tuple[str, ...] = ()  # the job's (trainer.stop_signals): its workers ignore them


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

    def close(self) -> None:
        """The job is done with its batches: every loader ends what serves them."""
        for loader in self:
            if loader is not None:
                loader.close()


class Loader:
    """What both kinds of loader share: a split of `split_size` images served in batches of
    `batch_size` (the training split's changes between epochs under trainer.batch_schedule), a
    ragged last batch dropped (`drop_last`) only where a full batch exists, so tiny datasets
    still train.

    Under DDP `batch_size` stays the global batch, and each rank serves its share (`shards`):
    in training (`drop_last`), the rank-th of `world_size` equal parts of every global batch, so
    that the ranks step together; in evaluation, whole batches, batch k on rank k mod
    world_size, so that every image is evaluated once, none repeated (DistributedSampler pads
    with repeats), in the very batches one process would evaluate it in."""

    def __init__(self, split_size: int, batch_size: int, drop_last: bool, ranks: Ranks = SINGLE):
        self.split_size, self.want_drop_last, self.ranks = split_size, drop_last, ranks
        self.set_batch_size(batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.drop_last = self.want_drop_last and self.split_size >= batch_size

    def close(self) -> None:
        """End what serves the batches (a DataLoader's worker processes); the device loader
        has nothing to end."""

    def __len__(self) -> int:
        n, b = self.split_size, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def num_images(self) -> int:
        """Images served per pass by every rank together (fewer than the split when the last
        batch is dropped)."""
        return min(len(self) * self.batch_size, self.split_size)

    @property
    def local_batch_size(self) -> int:
        """This rank's part of a training batch (the job checks that the ranks divide it)."""
        return self.batch_size // self.ranks.world_size

    def shards(self, order: torch.Tensor) -> list[torch.Tensor]:
        """This rank's batches of a pass, as indices into the split: `order` is the pass's order
        of the split's images (the same on every rank)."""
        r, n, b = self.ranks.rank, self.ranks.world_size, self.batch_size
        starts = range(0, len(self) * b, b)
        if self.drop_last:  # training: every rank its part of every batch
            part = self.local_batch_size
            return [order[start + r * part:start + (r + 1) * part] for start in starts]
        return [order[start:start + b] for k, start in enumerate(starts) if k % n == r]


def make_loaders(splits: Splits, batching: Batching, make: Callable[..., Loader]) -> Loaders:
    """Train (shuffled, augmented, a ragged last batch dropped), val and test, each made by
    `make(split, batch_size, augment, train)`."""
    b = batching
    return Loaders(make(splits.train, b.batch_size, b.augment, True),
                   None if splits.val is None else make(splits.val, b.eval_batch_size, None, False),
                   make(splits.test, b.eval_batch_size, None, False))
