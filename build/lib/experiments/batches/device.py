"""Batches served from a dataset that lives on the training device (the airbench approach).

The uint8 images are copied to the device once. Each batch is an index into them, augmented there
with per-image randomness (experiments.batches.augment), then normalized: no worker processes and no
per-image Python in the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from experiments.batches import Batching, Loaders
from experiments.batches.augment import BatchAugment
from experiments.data import Split, Splits
from experiments.errors import UserError


class Normalize:
    """uint8 -> float32 (x/255 - mean) / std, as one multiply and one add in place."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        # .float() copies uint8 input; float input is this batch's own temporary, safe to reuse
        out = images.float().mul_(self.scale).add_(self.shift)  # addcmul is slower on CPU
        return out.contiguous(memory_format=layout)


class DeviceLoader:
    """Iterates (images, labels) batches; reshuffles and re-augments on every pass."""

    def __init__(self, split: Split, batch_size: int, normalize: Normalize, *, device,
                 augment: BatchAugment | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False):
        # kept as uint8 on the device (zero-padded when the augmentation crops): the one copy
        try:
            self.images = (augment.store if augment else lambda x: x)(split.images.to(device))
        except torch.OutOfMemoryError:  # the dataset, not the batch, is too big: say so
            raise UserError(
                f"{len(split)} images ({split.images.nbytes / 2**30:.2f} GiB as uint8) do not "
                f"fit in the memory of {device} (loader=device keeps the whole dataset there). "
                "Use loader=dataloader: it keeps the dataset in host memory and copies each "
                "batch to the device.") from None
        self.labels = split.labels.to(device)
        self.normalize, self.augment = normalize, augment
        self.shuffle, self.channels_last, self.want_drop_last = shuffle, channels_last, drop_last
        self.set_batch_size(batch_size)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size
        # drop a ragged last batch only when there is a full one: tiny datasets still train
        self.drop_last = self.want_drop_last and len(self.labels) >= batch_size

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def split_size(self) -> int:
        return len(self.labels)

    @property
    def num_images(self) -> int:
        """Images served per pass (fewer than the split when the last batch is dropped)."""
        return min(len(self) * self.batch_size, len(self.labels))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.labels), self.labels.device
        order = (torch.randperm(n, device=device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=device))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.prepare(index), self.labels.index_select(0, index)

    def prepare(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 crop+flip -> float rotation (black fill) -> normalize -> erase (mean fill)."""
        aug, gen = self.augment, self.generator
        if aug is None:
            return self.normalize(self.images.index_select(0, index), self.channels_last)
        images = aug.rotate(aug.select(self.images, index, gen).float(), gen)
        return aug.erase(self.normalize(images, self.channels_last), gen)


def device_loaders(splits: Splits, batching: Batching) -> Loaders:
    """`loader=device`: train (shuffled, augmented, a ragged last batch dropped), val and test."""
    b = batching
    normalize = Normalize(b.mean, b.std, b.device)

    def make(split: Split, batch_size: int, augment: BatchAugment | None = None,
             train: bool = False) -> DeviceLoader:
        return DeviceLoader(split, batch_size, normalize, augment=augment, shuffle=train,
                            drop_last=train, seed=b.seed, device=b.device,
                            channels_last=b.channels_last)

    return Loaders(make(splits.train, b.batch_size, b.augment, train=True),
                   None if splits.val is None else make(splits.val, b.eval_batch_size),
                   make(splits.test, b.eval_batch_size))
