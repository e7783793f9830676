"""Seeds and random draws: one torch.Generator per row, draws with the reference's ranges.

The reference draws from Python's `random` (inclusive `randint(a, b)`) and NumPy's legacy RNG
(exclusive upper bound). Here every draw comes from the row's own CPU generator, so a row's
result depends only on its seed (not on the batch, nor on the device), and the helpers keep
each range's inclusive/exclusive bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clear_rl.seeds import derive_seed

__all__ = ["derive_seed", "generators", "randint", "randint_exclusive", "uniform"]


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row, seeded with that row's seed."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def randint(gen: torch.Generator, low: int, high: int, count: int | None = None) -> torch.Tensor:
    """Python's `random.randint(low, high)`: both bounds inclusive. Shape (count,) or ()."""
    if high < low:
        raise ValueError(f"empty range for randint({low}, {high})")
    size = () if count is None else (count,)
    return torch.randint(low, high + 1, size, generator=gen)


def randint_exclusive(gen: torch.Generator, low: int, high: int, count: int) -> torch.Tensor:
    """NumPy's legacy `randint(low, high)`: the upper bound is excluded."""
    return torch.randint(low, high, (count,), generator=gen)


def uniform(gen: torch.Generator, low: float, high: float, count: int | None = None) -> torch.Tensor:
    """`random.uniform(low, high)` in float64."""
    size = () if count is None else (count,)
    return low + (high - low) * torch.rand(size, generator=gen, dtype=torch.float64)
