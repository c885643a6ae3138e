"""Batches served from a dataset that lives on the training device (the airbench approach).

The uint8 images are copied to the device once. Each batch is an index into them, augmented there
with per-image randomness (experiments.batches.augment), then normalized: no worker processes and no
per-image Python in the hot path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments.batches.augment import BatchAugment
from experiments.config.checks import check_train_batch_sizes
from experiments.data import Split, Splits
from experiments.errors import ConfigError, UserError


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


class PreMadeBatches(list):
    """(images, labels) batches made once, served as the trainer expects a loader: for
    benchmarks and tests that must feed the same batches to several loops."""

    @property
    def num_images(self) -> int:
        return sum(len(labels) for _, labels in self)

    @property
    def batch_size(self) -> int:
        return len(self[0][1]) if self else 0


# --- the reference path: per-image torchvision transforms in DataLoader worker processes -----

def torchvision_transform(augment: BatchAugment | None, mean, std, size: int):
    """The torchvision ops that BatchAugment reproduces, applied to one uint8 CHW image."""
    from torchvision.transforms import v2

    ops = []
    if augment is not None and augment.crop_padding:
        ops.append(v2.RandomCrop(size, padding=augment.crop_padding))
    if augment is not None and augment.flip:
        ops.append(v2.RandomHorizontalFlip())
    if augment is not None and augment.rotate_degrees:
        ops.append(v2.RandomRotation(augment.rotate_degrees))  # nearest, fill 0
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if augment is not None and augment.erase_p:
        ops.append(v2.RandomErasing(augment.erase_p, augment.erase_scale, augment.erase_ratio, value=0))
    return v2.Compose(ops)


class EpochSampler(torch.utils.data.Sampler):
    """Yields (seed, index) pairs. Each pass draws, in the main process, from `generator` alone:
    its order (when shuffling) and one seed, from which every image's augmentation is seeded.

    So an epoch's batches are a function of the generator's state at its start, which the
    checkpoint saves: a resumed job sees the same images and the same augmentations as an
    uninterrupted one, although its (persistent) workers are new processes with new RNGs.
    """

    def __init__(self, n: int, shuffle: bool, generator: torch.Generator):
        self.n, self.shuffle, self.generator = n, shuffle, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = int(torch.randint(2**62, (), generator=self.generator))
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else range(self.n)
        return ((seed, int(i)) for i in order)


class TransformedSplit(torch.utils.data.Dataset):
    """Image i, transformed with torch's global RNG (what torchvision's v2 transforms draw from)
    seeded by seed + i: the same augmentation in whichever worker, or the main process, runs it."""

    def __init__(self, split: Split, transform):
        self.images, self.labels, self.transform = split.images, split.labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]):
        seed, i = key
        rng = torch.default_generator  # torch.manual_seed costs ~100 us (it seeds every device)
        outside = rng.get_state()  # with workers=0 this is the main process's RNG: left as it was
        rng.manual_seed(seed + i)
        try:
            image = self.transform(self.images[i])
        finally:
            rng.set_state(outside)
        return image, self.labels[i]


class WorkerLoader:
    """A torchvision DataLoader with the usual speed settings, yielding batches on the device.

    For data that does not fit on the device, and as the reference the benchmark compares with.
    """

    def __init__(self, split: Split, batch_size: int, transform, *, device, workers: int,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 channels_last: bool = False, pin_memory: bool = True, prefetch_factor: int = 4,
                 persistent_workers: bool = True):
        self.device, self.channels_last = torch.device(device), channels_last
        self.dataset, self.want_drop_last = TransformedSplit(split, transform), drop_last
        self.sampler = EpochSampler(len(self.dataset), shuffle, torch.Generator().manual_seed(seed))
        self.options = dict(sampler=self.sampler, num_workers=workers,
                            pin_memory=pin_memory and self.device.type == "cuda",
                            prefetch_factor=prefetch_factor if workers else None,
                            persistent_workers=persistent_workers and workers > 0,
                            # for the workers' base seed only (unused: every image is seeded),
                            # so that starting workers never draws from torch's global RNG
                            generator=torch.Generator().manual_seed(seed))
        self.set_batch_size(batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        """A new DataLoader (and workers) for the new size; the sampler's generator carries on."""
        self.batch_size = batch_size
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size,
            drop_last=self.want_drop_last and len(self.dataset) >= batch_size, **self.options)
        self.num_images = len(self.loader) * batch_size if self.loader.drop_last else len(self.dataset)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def split_size(self) -> int:
        return len(self.dataset)

    @property
    def generator(self) -> torch.Generator:
        """Draws each epoch's order and augmentation seed (saved in checkpoints)."""
        return self.sampler.generator

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in self.loader:
            # non_blocking: with pinned memory the copy overlaps with the GPU's work
            images = images.to(self.device, non_blocking=True, memory_format=layout)
            yield images, labels.to(self.device, non_blocking=True)


# --- from the config -----------------------------------------------------------------------

def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_loaders(cfg: DictConfig, splits: Splits, device: torch.device, channels_last: bool):
    """(train, val or None, test) batch iterables for `loader=device` or `loader=dataloader`."""
    augment, data = instantiate(cfg.aug), cfg.data
    if cfg.loader.name == "device":
        normalize = Normalize(data.mean, data.std, device)

        def make(split, batch_size, aug=None, train=False):
            return DeviceLoader(split, batch_size, normalize, augment=aug, shuffle=train,
                                drop_last=train, seed=cfg.seed, device=device,
                                channels_last=channels_last)
    elif cfg.loader.name == "dataloader":
        lc = cfg.loader
        workers = available_cores() if lc.workers == "auto" else int(lc.workers)

        def make(split, batch_size, aug=None, train=False):
            transform = torchvision_transform(aug, data.mean, data.std, data.image_size)
            return WorkerLoader(split, batch_size, transform, device=device, workers=workers,
                                shuffle=train, drop_last=train, seed=cfg.seed,
                                channels_last=channels_last, pin_memory=lc.pin_memory,
                                prefetch_factor=lc.prefetch_factor,
                                persistent_workers=lc.persistent_workers)
    else:
        raise ConfigError(f"loader.name must be device or dataloader, got {cfg.loader.name!r}")

    check_train_batch_sizes(cfg, len(splits.train))
    t = cfg.trainer
    return (make(splits.train, t.batch_size, augment, train=True),
            None if splits.val is None else make(splits.val, t.eval_batch_size),
            make(splits.test, t.eval_batch_size))

