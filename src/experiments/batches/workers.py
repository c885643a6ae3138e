"""The reference path: per-image torchvision transforms in DataLoader worker processes, for data
that does not fit on the device and as what the benchmark compares the device path with.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Iterator

import torch
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from experiments.batches import Batching, Loader, Loaders, make_loaders, repeats_grey
from experiments.batches.augment import BatchAugment
from experiments.data import Split, Splits
from experiments.ranks import SINGLE, Ranks


def torchvision_transform(augment: BatchAugment | None, mean, std, size: int,
                          stored_size: int | None = None, repeat_grey: bool = False):
    """The torchvision ops that BatchAugment and the device loader reproduce, applied to one
    uint8 CHW image, in the device path's order: crop and flip at the stored size (or a random
    resized crop straight to `size`), rotation, a Resize to `size` when `stored_size` differs,
    grey repeated to 3 channels (`repeat_grey`), then normalization and erasing."""
    from torchvision.transforms import v2

    stored = stored_size or size
    aug = augment if augment is not None else BatchAugment()
    ops = []
    if aug.resizes:
        ops.append(v2.RandomResizedCrop(size, scale=aug.rrc_scale, ratio=aug.rrc_ratio,
                                        antialias=True))
    if aug.crop_padding:
        ops.append(v2.RandomCrop(stored, padding=aug.crop_padding,
                                  padding_mode="constant" if aug.crop_pad_mode == "zeros" else "reflect"))
    if aug.flip:
        ops.append(v2.RandomHorizontalFlip())
    if aug.rotate_degrees:
        ops.append(v2.RandomRotation(aug.rotate_degrees))  # nearest, fill 0
    if not aug.resizes and stored != size:
        ops.append(v2.Resize((size, size), antialias=True))
    if repeat_grey:
        ops.append(v2.Grayscale(num_output_channels=3))  # a 1-channel image: its plane 3 times
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if aug.erase_p:
        ops.append(v2.RandomErasing(aug.erase_p, aug.erase_scale, aug.erase_ratio, value=0))
    return v2.Compose(ops)


def end_workers(loader: torch.utils.data.DataLoader) -> None:
    """End a DataLoader's persistent workers now (workers that are not persistent end with
    their pass). Left to the garbage collector, they run on after their job: a loader is in a
    reference cycle (its sampler points back to it), so only a collection ends it, at a random
    moment of whatever runs next, and then slowly: the collector closes the workers' queues
    before the iterator can send them its stop, so each join waits out DataLoader's 5-s status
    interval. After a smoke job of loader=dataloader in one process (3 loaders of 2 workers),
    the next collection took 25 s; ended here, 0.01 s a loader (this CPU, 2026-12-02).
    `_iterator` and `_shutdown_workers` are DataLoader's own (private; Lightning's
    CombinedLoader ends its loaders' workers the same way)."""
    iterator, loader._iterator = getattr(loader, "_iterator", None), None
    if isinstance(iterator, _MultiProcessingDataLoaderIter):
        iterator._shutdown_workers()


def leave_signals_to_the_job(names: tuple[str, ...], job_pid: int, worker_id: int) -> None:
    """A DataLoader worker's first act (`worker_init_fn`): the job's stop signals
    (trainer.stop_signals) reach its workers too (Ctrl-C signals every process of the terminal,
    Slurm every process of the job), and the job alone acts on them: it decides when to stop,
    and ends its workers. A worker that took them as its own logged the job's stop warning
    once more (a forked one inherits the job's handler: 5 lines for one Ctrl-C with
    loader.workers=2), and one that died of them (torch's SIGTERM handler in a worker; Ctrl-C's
    KeyboardInterrupt in a worker started as a new interpreter, by spawn or forkserver) failed
    the job's next batch ("DataLoader worker ... is killed by signal") instead of letting it
    checkpoint. So they are ignored here, except a SIGTERM from the job itself
    (multiprocessing's terminate(), at exit), which still ends the worker, as torch's does."""
    stops = {signal.Signals[name] for name in names}
    for sig in stops - {signal.SIGTERM}:
        signal.signal(sig, signal.SIG_IGN)
    if signal.SIGTERM in stops:  # waited for by a thread, which sees who sent it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=end_at_the_jobs_sigterm, args=(job_pid,), daemon=True).start()


def end_at_the_jobs_sigterm(job_pid: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == job_pid:
            os._exit(0)  # (torch's handler exits so too: no error for the job to report)


class EpochSampler(torch.utils.data.Sampler):
    """Yields (seed, index) pairs: this rank's share of a pass (`Loader.shards`). Each pass
    draws, in the main process, from `generator` alone (seeded alike on every rank): its order
    (when shuffling) and one seed, from which every image's augmentation is seeded.

    So an epoch's batches are a function of the generator's state at its start, which the
    checkpoint saves: a resumed job sees the same images and the same augmentations as an
    uninterrupted one, although its (persistent) workers are new processes with new RNGs; and
    an image's augmentation is the same whichever rank, and however many, serve it.
    """

    def __init__(self, loader: Loader, shuffle: bool, generator: torch.Generator):
        self.loader, self.shuffle, self.generator = loader, shuffle, generator

    def __len__(self) -> int:
        return sum(len(s) for s in self.loader.shards(torch.arange(self.loader.split_size)))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = int(torch.randint(2**62, (), generator=self.generator))
        n = self.loader.split_size
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return ((seed, int(i)) for shard in self.loader.shards(order) for i in shard)


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


class WorkerLoader(Loader):
    """A torchvision DataLoader with the usual speed settings, yielding batches on the device.

    For data that does not fit on the device, and as the reference the benchmark compares with.
    """

    def __init__(self, split: Split, batch_size: int, transform, *, device, workers: int,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 channels_last: bool = False, pin_memory: bool = True, prefetch_factor: int = 4,
                 persistent_workers: bool = True, ranks: Ranks = SINGLE,
                 stop_signals: tuple[str, ...] = ()):
        self.device, self.channels_last = torch.device(device), channels_last
        self.dataset = TransformedSplit(split, transform)
        self.sampler = EpochSampler(self, shuffle, torch.Generator().manual_seed(seed))
        self.options = dict(sampler=self.sampler, num_workers=workers,
                            pin_memory=pin_memory and self.device.type == "cuda",
                            prefetch_factor=prefetch_factor if workers else None,
                            persistent_workers=persistent_workers and workers > 0,
                            worker_init_fn=functools.partial(leave_signals_to_the_job, stop_signals,
                                                             os.getpid()),
                            # for the workers' base seed only (unused: every image is seeded),
                            # so that starting workers never draws from torch's global RNG
                            generator=torch.Generator().manual_seed(seed))
        super().__init__(len(self.dataset), batch_size, drop_last, ranks)

    def set_batch_size(self, batch_size: int) -> None:
        """A new DataLoader (and workers) for the new size; the sampler's generator carries on.
        The sampler yields this rank's batches whole (a training batch's part, or evaluation
        batches), so the DataLoader only cuts them where they end."""
        super().set_batch_size(batch_size)
        if hasattr(self, "loader"):
            end_workers(self.loader)  # the old size's (the garbage collector would, some time)
        size = self.local_batch_size if self.drop_last else batch_size
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=size, drop_last=False,
                                                  **self.options)

    @property
    def generators(self) -> list[torch.Generator]:
        """Draws each epoch's order and augmentation seed (saved in checkpoints)."""
        return [self.sampler.generator]

    def close(self) -> None:
        end_workers(self.loader)  # a later pass would start new workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in self.loader:
            # non_blocking: with pinned memory the copy overlaps with the GPU's work
            images = images.to(self.device, non_blocking=True, memory_format=layout)
            yield images, labels.to(self.device, non_blocking=True)


def worker_loaders(splits: Splits, batching: Batching, *, workers: int | str = "auto",
                   pin_memory: bool = True, prefetch_factor: int = 4,
                   persistent_workers: bool = True) -> Loaders:
    """`loader=dataloader`: train, val and test, each a WorkerLoader."""
    b = batching
    count = b.cores if workers == "auto" else int(workers)  # auto: one per core allotted

    def make(split: Split, batch_size: int, augment: BatchAugment | None, train: bool) -> WorkerLoader:
        transform = torchvision_transform(
            augment, b.input.mean, b.input.std, b.input.size, stored_size=split.images.shape[-1],
            repeat_grey=repeats_grey(split.images.shape[1], b.input))
        return WorkerLoader(split, batch_size, transform, device=b.device, workers=count,
                            shuffle=train, drop_last=train, seed=b.seed,
                            channels_last=b.channels_last, pin_memory=pin_memory,
                            prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                            ranks=b.ranks, stop_signals=b.stop_signals)

    return make_loaders(splits, b, make)
