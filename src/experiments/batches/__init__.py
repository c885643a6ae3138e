"""Batches for the trainer: the dataset kept on the device and augmented there in batched ops
(`loader=device`, device.py), or torchvision transforms in DataLoader workers (`loader=dataloader`,
workers.py). Each `loader` config names its factory as `_target_`; both take a `Batching`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from experiments.batches.augment import BatchAugment


@dataclass
class Batching:
    """What every kind of loader is told, whatever the kind."""

    augment: BatchAugment | None  # the training split's augmentation
    mean: Sequence[float]  # normalization, per channel
    std: Sequence[float]
    image_size: int  # the side of the square batches served: the model's input size
    batch_size: int
    eval_batch_size: int
    seed: int  # the shuffling and augmentation generator's seed
    device: torch.device
    channels_last: bool = False


class Loaders(NamedTuple):
    train: object
    val: object | None  # None without a validation split
    test: object
