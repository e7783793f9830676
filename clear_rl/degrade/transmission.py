"""Transmission corruptions: jpeg_compression, block_exchange, mean_shift, scan_lines.

Same contract as capture.py: u8 floats (B, 3, H, W) RGB in and out, intensity i, one
generator per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clear_rl.degrade import draws
from clear_rl.degrade.jpeg import jpeg_roundtrip
from clear_rl.degrade.meanshift import pyr_mean_shift
from clear_rl.degrade.ops import apply_lut


def jpeg_quality(i: float) -> int:
    """q = clamp(int(100 - 95i), 5, 100): 78 / 57 / 14 at Low / Mid / High."""
    return min(max(int(100 - 95 * i), 5), 100)


def jpeg_compression(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """A JPEG round trip at quality int(100 - 95i), 4:2:0 chroma."""
    return jpeg_roundtrip(x, jpeg_quality(i))


def block_size(i: float) -> int:
    """b = min(32, int(5 + 30i)); an image needs both sides >= b (11 / 18 / 32)."""
    return min(32, int(5 + 30 * i))


def block_exchange(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """int(35i) sequential swaps of grid-aligned b x b blocks; the right and bottom
    remainder strips (W mod b, H mod b) are never touched."""
    batch, channels, height, width = x.shape
    size, swaps = block_size(i), int(35 * i)
    grid_rows, grid_cols = height // size, width // size
    if grid_rows == 0 or grid_cols == 0:
        raise ValueError(f"block_exchange needs sides >= {size} px, got {height}x{width}")
    orders = []
    for gen in gens:
        order = list(range(grid_rows * grid_cols))  # order[position] = block now at position
        for a, b in draws.block_swaps(gen, swaps, grid_rows, grid_cols):
            order[a], order[b] = order[b], order[a]
        orders.append(order)
    order = torch.tensor(orders, device=x.device)
    out = x.clone()
    region = x[:, :, : grid_rows * size, : grid_cols * size]
    blocks = region.reshape(batch, channels, grid_rows, size, grid_cols, size).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(batch, grid_rows * grid_cols, channels, size, size)
    moved = blocks[torch.arange(batch, device=x.device).unsqueeze(1), order]
    moved = moved.view(batch, grid_rows, grid_cols, channels, size, size).permute(0, 3, 1, 4, 2, 5)
    out[:, :, : grid_rows * size, : grid_cols * size] = moved.reshape(
        batch, channels, grid_rows * size, grid_cols * size
    )
    return out


def mean_shift(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """pyrMeanShiftFiltering with sp = sr = int(40i) (see meanshift.py for the port)."""
    radius = int(40 * i)
    return pyr_mean_shift(x, radius, radius)


def scan_line_rows(i: float, height: int) -> torch.Tensor:
    """Rows darkened: bands of max(5, int(7i)) rows every T = max(3, int(20/(i+0.1))) rows,
    starting at row 0."""
    period = max(3, int(20 / (i + 0.1)))
    band = max(5, int(7 * i))
    return torch.remainder(torch.arange(height), period) < band


def scan_lines(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Rows in the bands become trunc(0.01 x), i.e. 0, 1 or 2."""
    rows = scan_line_rows(i, x.shape[-2]).to(x.device)
    dark = apply_lut(x, [float(int(v * 0.01)) for v in range(256)])
    return torch.where(rows.view(1, 1, -1, 1), dark, x)
