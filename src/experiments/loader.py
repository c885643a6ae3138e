"""Batches served from a dataset that lives on the training device (the airbench approach).

The uint8 images are copied to the device once. Each batch is an index into them, augmented there
with per-image randomness (experiments.augment), then normalized: no worker processes and no
per-image Python in the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from experiments.augment import BatchAugment
from experiments.data import Split


class Normalize:
    """uint8 -> float32 (x/255 - mean) / std, as one multiply-add."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return torch.addcmul(self.shift, images.float(), self.scale).contiguous(memory_format=layout)


class DeviceLoader:
    """Iterates (images, labels) batches; reshuffles and re-augments on every pass."""

    def __init__(self, split: Split, batch_size: int, normalize: Normalize, *, device,
                 augment: BatchAugment | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False):
        # kept as uint8 on the device (zero-padded when the augmentation crops): the one copy
        self.images = (augment.store if augment else lambda x: x)(split.images.to(device))
        self.labels = split.labels.to(device)
        self.batch_size, self.normalize, self.augment = batch_size, normalize, augment
        self.shuffle, self.channels_last = shuffle, channels_last
        # drop a ragged last batch only when there is a full one: tiny datasets still train
        self.drop_last = drop_last and len(self.labels) >= batch_size
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

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
            yield self.prepare(index), self.labels[index]

    def prepare(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 crop+flip -> float rotation (black fill) -> normalize -> erase (mean fill)."""
        aug, gen = self.augment, self.generator
        if aug is None:
            return self.normalize(self.images[index], self.channels_last)
        images = aug.rotate(aug.select(self.images, index, gen).float(), gen)
        return aug.erase(self.normalize(images, self.channels_last), gen)
