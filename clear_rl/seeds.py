"""Seeds derived from several parts, so every random draw has its own reproducible stream.

One algorithm for the whole library: sha256 of the parts' text. It accepts any parts (ints,
names, levels), gives the same seed on every machine and run, and is what MMD-Bench copies
(`clear-rl degrade`) are seeded with, so their files stay byte-identical.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a generator is made: seeds alone are light
    import torch

SEED_BITS = 63


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (base seed, row index, level...), same on every run."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << SEED_BITS) - 1)


def generator_for(device: torch.device | str, *parts: object) -> torch.Generator:
    """A torch generator on `device` seeded from `parts`."""
    import torch

    return torch.Generator(device=device).manual_seed(derive_seed(*parts))
