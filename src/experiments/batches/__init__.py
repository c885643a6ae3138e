"""Batches for the trainer: the dataset kept on the device and augmented there in batched ops
(`loader=device`, device.py), or torchvision transforms in DataLoader workers (`loader=dataloader`,
workers.py). Each `loader` config names its factory as `_target_`; both take a `Batching`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from experiments.batches.augment import BatchAugment
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
    train: object
    val: object | None  # None without a validation split
    test: object
