"""Every random draw of the 16 corruptions, in one place, shared by both backends.

A row's draws come from its own seeded `torch.Generator` in a fixed order, so the torch
backend (batched, any device) and the OpenCV backend (one image at a time on the CPU) give
the same corruption for the same seed: same flare positions, same dirt, same swaps, same
noise, same strokes. Ranges keep the released generator's bounds (Python's inclusive
`randint`, NumPy's exclusive one; see rng.py). Shapes come back as CPU int64 tensors with one
row per shape, in drawing order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import torch

from clear_rl.degrade.rng import randint, randint_exclusive, uniform

GRAFFITI_WORDS = ("X", "FAKE", "COPY", "VOID", "COPYRIGHT")
TEXT_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Dirt:
    """dirty_lens's shapes: ellipses (cx, cy, a, b, angle), spots (cx, cy, radius, grey) and
    blobs (cx, cy, outer radius, inner radius), each (n, k) int64."""

    ellipses: torch.Tensor
    spots: torch.Tensor
    blobs: torch.Tensor


@dataclass(frozen=True)
class TextStamp:
    """graffiti's text: the string, its bottom-left corner, font scale and stroke thickness."""

    text: str
    x: int
    y: int
    scale: float
    thickness: int


@dataclass(frozen=True)
class Graffiti:
    """graffiti's lines (n, 8): R, G, B, x0, y0, x1, y1, thickness; and its text, if any."""

    lines: torch.Tensor
    stamp: TextStamp | None


def lens_flare(gen: torch.Generator, i: float, height: int, width: int) -> torch.Tensor:
    """3 + int(30i) flares (cx, cy, radius, ray end x, ray end y); centres may sit 1 px outside."""
    count = 3 + int(30 * i)
    cx, cy = randint(gen, 0, width, count), randint(gen, 0, height, count)  # both inclusive
    radius = randint(gen, 10, 50, count)
    angle = uniform(gen, 0.0, 2.0 * math.pi, count)
    length = randint(gen, 30, 150, count).double()
    end_x = torch.trunc(cx + length * angle.cos()).long()
    end_y = torch.trunc(cy + length * angle.sin()).long()
    return torch.stack([cx, cy, radius, end_x, end_y], 1)


def motion_angle(gen: torch.Generator) -> float:
    """motion_blur's kernel angle in degrees, uniform on [0, 360)."""
    return float(uniform(gen, 0.0, 360.0))


def dirty_lens(gen: torch.Generator, i: float, height: int, width: int) -> Dirt:
    """int(10i) ellipses (i > 0.1), int(300i) spots, int(5i) blobs (i > 0.5)."""
    n_ellipses = int(10 * i) if i > 0.1 else 0
    n_spots, n_blobs = int(300 * i), (int(5 * i) if i > 0.5 else 0)
    ellipses = torch.zeros(0, 5, dtype=torch.long)
    if n_ellipses:
        cx, cy = randint(gen, 0, width, n_ellipses), randint(gen, 0, height, n_ellipses)
        axis_a, axis_b = randint(gen, 150, 300, n_ellipses), randint(gen, 100, 200, n_ellipses)
        ellipses = torch.stack([cx, cy, axis_a, axis_b, randint(gen, 0, 180, n_ellipses)], 1)
    cx, cy = randint(gen, 0, width, n_spots), randint(gen, 0, height, n_spots)
    spots = torch.stack([cx, cy, randint(gen, 4, 20, n_spots), randint(gen, 50, 100, n_spots)], 1)
    blobs = torch.zeros(0, 4, dtype=torch.long)
    if n_blobs:
        bx, by = randint(gen, 0, width, n_blobs), randint(gen, 0, height, n_blobs)
        blobs = torch.stack([bx, by, randint(gen, 20, 50, n_blobs), randint(gen, 10, 30, n_blobs)], 1)
    return Dirt(ellipses, spots, blobs)


def block_swaps(gen: torch.Generator, swaps: int, grid_rows: int, grid_cols: int) -> list[tuple[int, int]]:
    """block_exchange's swaps as (block a, block b) grid indices (row * grid_cols + col), in order."""
    r1, c1 = randint(gen, 0, grid_rows - 1, swaps), randint(gen, 0, grid_cols - 1, swaps)
    r2, c2 = randint(gen, 0, grid_rows - 1, swaps), randint(gen, 0, grid_cols - 1, swaps)
    return list(zip((r1 * grid_cols + c1).tolist(), (r2 * grid_cols + c2).tolist()))


def gaussian_noise(gen: torch.Generator, height: int, width: int) -> torch.Tensor:
    """Unit normal noise (3, H, W) float32, iid per pixel and channel (scaled by 75i by the caller)."""
    return torch.randn((3, height, width), generator=gen)


def diffusion_discs(gen: torch.Generator, i: float, height: int, width: int) -> torch.Tensor:
    """color_diffusion's int(100i) discs (cx, cy, radius, grey), NumPy's exclusive bounds; only
    for i > 0.9, i.e. never at the benchmark levels. (0, 4) otherwise."""
    if not i > 0.9:
        return torch.zeros(0, 4, dtype=torch.long)
    count = int(100 * i)
    cx, cy = randint_exclusive(gen, 0, width, count), randint_exclusive(gen, 0, height, count)
    radius, grey = randint_exclusive(gen, 5, 20, count), randint_exclusive(gen, 0, 255, count)
    return torch.stack([cx, cy, radius, grey], 1)


def text_style(i: float) -> tuple[float, int]:
    """graffiti's font scale max(0.5, 5i) and thickness max(1, int(scale))."""
    scale = max(0.5, 5 * i)
    return scale, max(1, int(scale))


@functools.lru_cache(maxsize=256)
def text_size(text: str, scale: float, thickness: int) -> tuple[int, int]:
    """`cv2.getTextSize` (width, height), baseline ignored as in the release."""
    (width, height), _ = cv2.getTextSize(text, TEXT_FONT, scale, thickness)
    return width, height


def graffiti(gen: torch.Generator, i: float, height: int, width: int) -> Graffiti:
    """int(10i) lines (colour drawn as B, G, R, then both ends, then thickness up to int(5i));
    at i > 0.55 a text stamp, on images where its height fits (H - 10 > th + 10)."""
    count = int(10 * i)
    colour_bgr = randint(gen, 0, 255, 3 * count).view(count, 3)
    x0, y0 = randint(gen, 0, width - 1, count), randint(gen, 0, height - 1, count)
    x1, y1 = randint(gen, 0, width - 1, count), randint(gen, 0, height - 1, count)
    thickness = randint(gen, 1, max(1, int(5 * i)), count)
    lines = torch.cat([colour_bgr.flip(1), torch.stack([x0, y0, x1, y1, thickness], 1)], 1)
    stamp = None
    if i > 0.55:
        number = str(int(randint(gen, 1, 100)))  # drawn first, as in the release
        choices = (*GRAFFITI_WORDS, number)
        text = choices[int(torch.randint(len(choices), (), generator=gen))]
        scale, weight = text_style(i)
        text_w, text_h = text_size(text, scale, weight)
        if height - 10 > text_h + 10:
            tx = int(randint(gen, 0, max(1, width - text_w - 10)))
            ty = int(randint(gen, text_h + 10, height - 10))
            stamp = TextStamp(text, tx, ty, scale, weight)
    return Graffiti(lines, stamp)


def watermark_rectangles(gen: torch.Generator, i: float, height: int, width: int) -> torch.Tensor:
    """int(1+15i) rectangles (x0, y0, x1, y1), corners inclusive; needs H, W >= 50."""
    count = int(1 + 15 * i)
    x, y = randint(gen, 0, width - 50, count), randint(gen, 0, height - 50, count)
    dw, dh = randint(gen, 50, 200, count), randint(gen, 20, 80, count)
    return torch.stack([x, y, x + dw, y + dh], 1)
