"""Batches served from a dataset that lives on the training device (the airbench approach).

The uint8 images are copied to the device once. Each batch is an index into them, augmented there
with per-image randomness (experiments.batches.augment), then normalized: no worker processes and no
per-image Python in the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from experiments.batches import Batching, Loader, Loaders, make_loaders, repeats_grey
from experiments.batches.augment import BatchAugment
from experiments.data import Split, Splits
from experiments.errors import UserError
from experiments.ranks import SINGLE, Ranks, rank_seed


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


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square images to size x size, bilinear with antialiasing (torchvision's Resize), as
    float; unchanged when they already are. Upsampling CIFAR to a pretrained model's 224 px
    happens here, per batch, so the dataset stays 32 px (49x smaller) on the device."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


class DeviceLoader(Loader):
    """Iterates (images, labels) batches; reshuffles and re-augments on every pass. The order
    comes from a generator seeded alike on every rank (one permutation of the split, shared out
    by `shards`), the augmentation from one of this rank's own."""

    def __init__(self, split: Split, batch_size: int, normalize: Normalize, *, device,
                 augment: BatchAugment | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False,
                 size: int | None = None, channels: int | None = None, ranks: Ranks = SINGLE):
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
        self.size = size or split.images.shape[-1]  # served batches' side
        self.channels = channels or split.images.shape[1]  # served batches' channels
        self.shuffle, self.channels_last = shuffle, channels_last
        super().__init__(len(split), batch_size, drop_last, ranks)
        self.order_generator = torch.Generator(device=device).manual_seed(seed)
        self.augment_generator = torch.Generator(device=device).manual_seed(
            rank_seed(seed, ranks.rank))

    @property
    def generators(self) -> list[torch.Generator]:
        """What a checkpoint saves to resume a pass exactly."""
        return [self.order_generator, self.augment_generator]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.labels), self.labels.device
        order = (torch.randperm(n, device=device, generator=self.order_generator) if self.shuffle
                 else torch.arange(n, device=device))
        for index in self.shards(order):
            yield self.prepare(index), self.labels.index_select(0, index)

    def prepare(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 crop+flip -> float rotation (black fill) -> resize to the served size ->
        normalize -> erase (mean fill). A resized crop (aug=rrc) crops and resizes in one go."""
        aug, gen = self.augment, self.augment_generator
        if aug is None:
            images = self.images.index_select(0, index)
        elif aug.resizes:
            images = aug.select(self.images, index, gen, size=self.size)
        else:
            images = aug.rotate(aug.select(self.images, index, gen).float(), gen)
        images = resize_to(images, self.size)
        if images.shape[1] != self.channels:  # grey to a pretrained RGB model: the same plane 3x
            images = images.expand(-1, self.channels, -1, -1)
        images = self.normalize(images, self.channels_last)
        return images if aug is None else aug.erase(images, gen)


def free_device_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device; None elsewhere (on the CPU the dataset is already in memory)."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


# the dataset may take this share of the free device memory; the rest is for the model, its
# optimizer state and activations (a ResNet-50 at batch 128 and 224 px needs ~10-20 GiB)
DATASET_SHARE = 0.6


def check_fits_device(splits: Splits, device: torch.device, free: int | None) -> None:
    """Refuse up front a dataset that will not fit next to the training on the device."""
    nbytes = sum(s.images.nbytes for s in (splits.train, splits.val, splits.test) if s is not None)
    if free is not None and nbytes > DATASET_SHARE * free:
        raise UserError(
            f"the dataset takes {nbytes / 2**30:.1f} GiB as uint8, and {device} has "
            f"{free / 2**30:.1f} GiB free: loader=device keeps it all there, next to the training. "
            "Use loader=dataloader (the dataset stays in host memory, each batch is copied), or a "
            "smaller data.image_size (batches are resized to the model's input size anyway).")


def device_loaders(splits: Splits, batching: Batching) -> Loaders:
    """`loader=device`: train, val and test, each a DeviceLoader."""
    b = batching
    check_fits_device(splits, b.device, free_device_memory(b.device))
    normalize = Normalize(b.input.mean, b.input.std, b.device)
    repeats_grey(splits.train.images.shape[1], b.input)  # refuses what cannot be served

    def make(split: Split, batch_size: int, augment: BatchAugment | None, train: bool) -> DeviceLoader:
        return DeviceLoader(split, batch_size, normalize, augment=augment, shuffle=train,
                            drop_last=train, seed=b.seed, device=b.device,
                            channels_last=b.channels_last, size=b.input.size,
                            channels=b.input.channels, ranks=b.ranks)

    return make_loaders(splits, b, make)
