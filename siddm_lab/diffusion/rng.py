"""Where an objective draws its noise: the global RNG (one model) or one generator per ensemble member.

Training objectives never call ``torch.randn`` directly: they ask a ``RandomSource`` for tensors
"like" a batch. For a single model the batch is ``[B, ...]`` and the draw comes from torch's global
generator (reseeded every step by ``siddm_lab.callbacks.StepSeed``). For an ensemble of E members
trained in one process the batch is ``[E, B, ...]`` and member k's slice is drawn from its own
``torch.Generator`` with the per-member shape ``[B, ...]``, in the same order: a member seeded like
a single run draws exactly that run's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RandomSource:
    """Args: ``generators``: one per ensemble member (None: a single model on the global RNG);
    ``stacked``: False for a single model drawing from ``generators[0]`` (no member dim)."""

    def __init__(self, generators: Sequence[torch.Generator] | None = None, stacked: bool = True):
        self.generators = list(generators) if generators is not None else None
        self.stacked = stacked and self.generators is not None
        if self.generators is not None and not stacked and len(self.generators) != 1:
            raise ValueError("an unstacked RandomSource takes exactly one generator")

    @classmethod
    def single(cls, generator: torch.Generator) -> RandomSource:
        """A single model's draws from ``generator`` (instead of the global RNG)."""
        return cls([generator], stacked=False)

    @property
    def members(self) -> int | None:
        return len(self.generators) if self.stacked else None

    def batch_ndim(self) -> int:
        """Leading dims that index samples: [B] for one model, [E, B] for an ensemble."""
        return 2 if self.stacked else 1

    def member_mean(self, v: torch.Tensor) -> torch.Tensor:
        """Mean over everything but the member dim: a scalar for one model, [E] for an ensemble."""
        return v.reshape(len(self.generators), -1).mean(1) if self.stacked else v.mean()

    def manual_seed(self, seeds: Sequence[int]) -> None:
        """Reseed every member's generator (``seeds`` one per member)."""
        if self.generators is None:
            raise ValueError("this RandomSource draws from the global RNG: seed it with torch.manual_seed")
        if len(seeds) != len(self.generators):
            raise ValueError(f"{len(seeds)} seeds for {len(self.generators)} members")
        for g, s in zip(self.generators, seeds):
            g.manual_seed(int(s))

    def _draw(self, fn, shape, device, dtype, args=()) -> torch.Tensor:
        if self.generators is None:
            return fn(*args, shape, device=device, dtype=dtype)
        if not self.stacked:
            g = self.generators[0]
            return fn(*args, shape, generator=g, device=g.device, dtype=dtype).to(device)
        per_member = tuple(shape[1:])
        out = [fn(*args, per_member, generator=g, device=g.device, dtype=dtype) for g in self.generators]
        return torch.stack(out).to(device)

    def randn(self, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        return self._draw(torch.randn, tuple(shape), device, dtype)

    def rand(self, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        return self._draw(torch.rand, tuple(shape), device, dtype)

    def randint(self, high: int, shape, device=None) -> torch.Tensor:
        return self._draw(torch.randint, tuple(shape), device, torch.long, args=(high,))

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, x.device, x.dtype)

    def batch_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """The sample dims of a batch: x.shape[:1] (one model) or x.shape[:2] (ensemble)."""
        return tuple(x.shape[: self.batch_ndim()])


GLOBAL = RandomSource()
