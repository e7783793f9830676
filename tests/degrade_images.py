"""Natural-looking test images for the MMD-Bench tests, generated in code from a seed:
smooth colour gradients, a few opaque shapes (edges) and a fine texture."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def natural_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(batch, 3, height, width) in [0, 1], multiples of 1/255 like decoded images; different
    per row, the same for the same seed."""
    return torch.stack(list(iter_natural_images(batch, height, width, seed)))


def iter_natural_images(count: int, height: int, width: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """The same images one (3, height, width) at a time, for sets too large to hold at once
    (the benchmarks' thousand 512x512 images)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    for _ in range(count):
        a = torch.rand(6, generator=gen)
        image = torch.stack([a[0] * xx + a[1] * yy, a[2] * (1 - xx) + a[3] * yy, a[4] * xx * yy + 0.5 * a[5]])
        noise = torch.rand(1, 3, height, width, generator=gen)
        texture = torch.nn.functional.avg_pool2d(noise, 5, 1, 2, count_include_pad=False)[0]
        image = 0.15 + 0.55 * image + 0.3 * texture
        for _ in range(6):
            cx, cy, r = torch.rand(3, generator=gen)
            colour = torch.rand(3, 1, 1, generator=gen)
            if bool(torch.rand((), generator=gen) < 0.5):
                inside = ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.08 + 0.15 * r) ** 2
            else:
                inside = ((xx - cx).abs() < 0.05 + 0.15 * r) & ((yy - cy).abs() < 0.04 + 0.1 * r)
            image = torch.where(inside, colour, image)
        yield (image.clamp(0, 1) * 255).round() / 255
