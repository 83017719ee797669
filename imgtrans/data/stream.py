"""A deterministic sample stream: every training sample is a pure function of its global index.

Sample k of a run is drawn by the dataset from (seed, k) alone: which file (a per-epoch
permutation) and which augmentation (a per-sample seed). So resuming at step s only means
starting at k = s * global_batch, and a run split over N processes sees exactly the samples a
single process with the same global batch would see.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of `n` items in `epoch` (same on every process and every resume)."""
    return np.random.default_rng([seed, epoch, n]).permutation(n)


def pick(seed: int, k: int, n: int, stream: int = 0) -> int:
    """Item index for global sample `k` from a collection of `n` items (reshuffled each epoch)."""
    epoch, pos = divmod(k, n)
    return int(epoch_permutation(seed * 1000 + stream, epoch, n)[pos])


def sample_seed(seed: int, k: int) -> int:
    """Per-sample seed for augmentation."""
    return int(np.random.default_rng([seed, k, 7]).integers(2**31 - 1))


class StreamSampler(Sampler[int]):
    """Yields the global sample indices this rank consumes, from `start_step` to `total_steps`.

    Step s covers k in [s*G, (s+1)*G) with G = local_batch * world_size; rank r takes the
    contiguous slice [s*G + r*local_batch, s*G + (r+1)*local_batch).
    """

    def __init__(self, start_step: int, total_steps: int, local_batch: int, rank: int = 0, world_size: int = 1):
        self.start, self.total = start_step, total_steps
        self.local, self.rank, self.world = local_batch, rank, world_size

    def __iter__(self) -> Iterator[int]:
        g = self.local * self.world
        for step in range(self.start, self.total):
            base = step * g + self.rank * self.local
            yield from range(base, base + self.local)

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.local
