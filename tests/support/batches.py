"""Batches made once, for tests that feed the same batches to several loops."""

from __future__ import annotations


class PreMadeBatches(list):
    """(images, labels) batches made once, served as the trainer expects a loader: for
    benchmarks and tests that must feed the same batches to several loops."""

    @property
    def num_images(self) -> int:
        return sum(len(labels) for _, labels in self)

    @property
    def batch_size(self) -> int:
        return len(self[0][1]) if self else 0
