"""The DataLoaders the benchmark compares the device path with, besides ours (workers.py): the
same augmentation written the usual way (torchvision's v1 transforms on PIL images, a plain
Dataset), and ours without its per-image reseeding, to say what that reseeding costs.
"""

from __future__ import annotations

import torch
from PIL import Image

from experiments.batches.augment import BatchAugment
from experiments.batches.workers import TransformedSplit, WorkerLoader, end_workers
from experiments.data import Split
from experiments.ranks import cores_allotted


class UnseededSplit(TransformedSplit):
    """TransformedSplit without its per-image reseeding (each worker's own RNG draws instead,
    so augmentations depend on the workers): timed to say what the reseeding costs."""

    def __getitem__(self, key: tuple[int, int]):
        _, i = key
        return self.transform(self.images[i]), self.labels[i]


def unseeded(loader: WorkerLoader, split: Split, transform) -> WorkerLoader:
    loader.dataset = UnseededSplit(split, transform)
    loader.set_batch_size(loader.batch_size)  # a new DataLoader, over the unseeded items
    return loader


def pil_transform(aug: BatchAugment, mean, std, size: int):
    """The same augmentation as it is usually written: torchvision's v1 transforms, on PIL images."""
    from torchvision import transforms as T

    ops = []
    if aug.resizes:
        ops.append(T.RandomResizedCrop(size, scale=aug.rrc_scale, ratio=aug.rrc_ratio))
    if aug.crop_padding:
        ops.append(T.RandomCrop(size, padding=aug.crop_padding,
                                   padding_mode="constant" if aug.crop_pad_mode == "zeros" else "reflect"))
    if aug.flip:
        ops.append(T.RandomHorizontalFlip())
    if aug.rotate_degrees:
        ops.append(T.RandomRotation(aug.rotate_degrees))
    ops += [T.ToTensor(), T.Normalize(list(mean), list(std))]
    if aug.erase_p:
        ops.append(T.RandomErasing(aug.erase_p, aug.erase_scale, aug.erase_ratio))
    return T.Compose(ops)


class PilSplit(torch.utils.data.Dataset):
    """A dataset as torchvision.datasets.CIFAR10 is one: an HWC uint8 array (a transposed view,
    as there), each item made a PIL image, transformed, with an int label."""

    def __init__(self, split: Split, transform):
        self.images, self.labels = split.images.permute(0, 2, 3, 1).numpy(), split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class PilLoader:
    """The usual DataLoader over PilSplit: shuffled, one worker per core, persistent workers,
    pinned memory on a GPU; yields batches on the device, as WorkerLoader does."""

    def __init__(self, split: Split, batch_size: int, transform, device: torch.device):
        self.device = device
        self.loader = torch.utils.data.DataLoader(
            PilSplit(split, transform), batch_size=batch_size, shuffle=True, drop_last=True,
            num_workers=cores_allotted(), persistent_workers=True,
            pin_memory=device.type == "cuda")

    def __iter__(self):
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        end_workers(self.loader)
