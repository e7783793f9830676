"""Seeds derived from several integers, so every random draw has its own reproducible stream."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (SeedSequence hashing: no collisions between streams)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def generator_for(device: torch.device | str, *parts: int) -> torch.Generator:
    """A torch generator on `device` seeded from `parts`."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))
