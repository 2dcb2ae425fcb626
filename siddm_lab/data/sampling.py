"""Training batches that a resumed run continues exactly.

``ResumableBatchSampler`` draws epoch ``e``'s order from ``(seed, e)`` alone and shards it over the
DDP ranks itself (the trainer configs set ``use_distributed_sampler: false``), so the batches of
any epoch are known without replaying the run. ``ResumableDataLoader`` exposes Lightning's
stateful-loader interface: its ``state_dict`` (saved in every checkpoint) is the epoch and the
number of batches the training loop has consumed in it, and ``load_state_dict`` makes the next
epoch iterator skip exactly those batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Sampler


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of indices 0..n-1: a permutation seeded by ``(seed, epoch)`` (or the identity without
    ``shuffle``), split over ranks (rank r takes every world-th index, all ranks get the same count),
    cut into batches (the last partial batch dropped with ``drop_last``).

    With ``member_seeds`` (an ensemble trained in one process) every batch is a list of E index
    lists, member k's drawn exactly as a sampler with ``seed = member_seeds[k]`` draws them."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 member_seeds: list[int] | None = None):
        if batch_size < 1 or n < 1:
            raise ValueError("ResumableBatchSampler needs n >= 1 and batch_size >= 1")
        self.member_seeds = None if member_seeds is None else [int(s) for s in member_seeds]
        self.n, self.batch_size, self.seed = n, batch_size, int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0
        self._skip = 0  # batches to skip at the start of the next iteration (resume)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def skip(self, batches: int) -> None:
        self._skip = max(0, int(batches))

    def _per_rank(self) -> int:
        return self.n // _rank_world()[1]

    def __len__(self) -> int:
        m = self._per_rank()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def _order(self, seed: int, rank: int, world: int) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        return order[rank::world][: self._per_rank()]

    def __iter__(self):
        rank, world = _rank_world()
        seeds = [self.seed] if self.member_seeds is None else self.member_seeds
        mine = torch.stack([self._order(s, rank, world) for s in seeds])
        start, self._skip = self._skip, 0
        for b in range(start, len(self)):
            batch = mine[:, b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[0].tolist() if self.member_seeds is None else batch.tolist()


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ``ResumableBatchSampler`` with Lightning's ``state_dict`` /
    ``load_state_dict``. ``consumed`` returns how many batches of the current epoch the training
    loop has finished (read from the trainer when a checkpoint is written)."""

    def __init__(self, dataset, batch_sampler: ResumableBatchSampler, consumed: Callable[[], int] | None = None,
                 **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._consumed = consumed

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "batches": int(self._consumed()) if self._consumed else 0,
                "seed": self.batch_sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.seed = int(state.get("seed", self.batch_sampler.seed))
        self.batch_sampler.set_epoch(int(state["epoch"]))
        self.batch_sampler.skip(int(state["batches"]))
