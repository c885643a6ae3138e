"""Synthetic CIFAR-shaped data with a learnable class signal, for smoke runs and tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from experiments.data.base import ImageData, Source, Split


@dataclass(kw_only=True)
class Synthetic(Source):
    """data=synthetic: generated in memory from `seed` (never cached, nothing downloaded)."""

    names: ClassVar[tuple[str, ...]] = ("synthetic",)

    train_size: int
    test_size: int
    seed: int  # the data's own seed: every job sees the same images
    noise: float  # weight of per-pixel noise against the class template

    def load(self) -> ImageData:
        """Learnable noise: each class has a blocky colour template; images mix it with pixel noise.

        Templates are mirror-symmetric (a 4x2 grid of colour blocks and its mirror image), so a
        flipped image is still its class, as `hflip_ok: true` promises to the flip augmentation."""
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.channels, self.image_size, self.image_size)
        half = torch.randint(0, 256, (self.num_classes, self.channels, 4, 2), generator=gen)
        templates = torch.cat([half, half.flip(3)], dim=3).float()
        templates = F.interpolate(templates, size=shape[1:], mode="nearest")

        def draw(n: int) -> Split:
            labels = torch.randint(0, self.num_classes, (n,), generator=gen)
            noise = torch.randint(0, 256, (n, *shape), generator=gen).float()
            images = (1 - self.noise) * templates[labels] + self.noise * noise
            return Split(images.round().to(torch.uint8), labels)

        return ImageData(draw(self.train_size), draw(self.test_size),
                         [f"class_{i}" for i in range(self.num_classes)])
