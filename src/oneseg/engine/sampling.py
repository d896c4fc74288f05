"""Sample order and per-sample randomness that depend only on (seed, epoch, position).

A resumed run must see the same samples, augmented the same way, as a run that never stopped.
`EpochSampler` shuffles with a generator seeded by (seed, epoch), gives each process its own
slice, can start part-way into an epoch, and hands every sample its own seed, so augmentation does
not depend on worker processes or on the global RNG. `SeededDataset` applies that seed.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler):
    """Yields `(index, sample_seed)` for this process's share of one epoch.

    Arguments:
        length: samples in the dataset.
        seed: the run's seed.
        shuffle: shuffle per epoch (training) or keep order (evaluation).
        rank, world_size: this process's slice: positions rank, rank + world_size, ...
        drop_last: drop the tail that does not fill every process equally.
        pad: otherwise, repeat samples from the start so every process has as many, as
            DistributedSampler does (training); without it shares may differ by one (evaluation).
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad: bool = True,
    ):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad = pad
        self.epoch = 0
        self.start = 0  # samples of this process's slice to skip (a run resumed mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, num_samples: int) -> None:
        """Begin the next epoch `num_samples` into this process's slice (reset after it)."""
        self.start = num_samples

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.drop_last:
            order = order[: len(order) - len(order) % self.world_size]
        elif self.pad and order and len(order) % self.world_size:
            pad = self.world_size - len(order) % self.world_size
            order += (order * (pad // len(order) + 1))[:pad]
        return order

    def __len__(self) -> int:
        return len(range(self.rank, len(self._order()), self.world_size))

    def __iter__(self):
        order = self._order()
        mine = list(range(self.rank, len(order), self.world_size))
        start, self.start = self.start, 0
        for position in mine[start:]:
            sample_seed = (self.seed * 1_000_003 + self.epoch * 10_007 + position) % 2**31
            yield order[position], sample_seed


class SeededDataset(Dataset):
    """Calls `dataset[index]` with Python, NumPy and torch RNGs seeded by the sample's seed,
    leaving the caller's RNG states as they were."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
