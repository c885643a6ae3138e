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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


class DeviceLoader:
    """Iterates (images, labels) batches; reshuffles and re-augments on every pass."""

    def __init__(self, split: Split, batch_size: int, normalize: Normalize, *, device,
                 augment: BatchAugment | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False):
        self.images = split.images.to(device)
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
            yield self.prepare(self.images[index]), self.labels[index]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            images = self.augment.geometric(images, self.generator)
        images = self.normalize(images)
        if self.augment is not None:
            images = self.augment.erase(images, self.generator)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images
