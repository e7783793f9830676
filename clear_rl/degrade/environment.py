"""Environment corruptions: dark_illumination, atmospheric_turbulence, gaussian_noise,
color_diffusion.

Same contract as capture.py: u8 floats (B, 3, H, W) RGB in and out, intensity i, one
generator per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clear_rl.degrade import draws, raster
from clear_rl.degrade.capture import BLUR_EPS
from clear_rl.degrade.ops import apply_lut, gaussian_kernel, sat, separable_filter, trunc


def dark_factor(i: float) -> float:
    """1 - i^2 in float64, as the reference computes it (0.9471 / 0.7975 / 0.19)."""
    return 1 - i**2


def dark_illumination(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """trunc(x (1 - i^2)), evaluated in float64 per grey level (so 100 * 0.19 floors to 18,
    as numpy does: 1 - 0.9**2 is 0.18999999999999995)."""
    factor = dark_factor(i)
    return apply_lut(x, [float(int(min(max(v * factor, 0.0), 255.0))) for v in range(256)])


def turbulence_maps(i: float, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The remap coordinates in OpenCV's 1/32-pixel fixed point: (map_x, map_y) * 32 as long.

    d(y) = 40i sin(y/30 + 5i); map_x = clip(x + d, 0, W-1), map_y = clip(y + 0.7 d, 0, H-1),
    computed in float64, stored as float32, then rounded to 1/32 px as cv2.remap does.
    """
    y = torch.arange(height, dtype=torch.float64).unsqueeze(1)
    x = torch.arange(width, dtype=torch.float64).unsqueeze(0)
    shift = 40 * i * torch.sin(y / 30 + 5 * i)
    map_x = (x + shift).clamp(0, width - 1).float()
    map_y = (y + 0.7 * shift).clamp(0, height - 1).float().expand(height, width)
    return torch.round(map_x * 32).long(), torch.round(map_y * 32).long()


def atmospheric_turbulence(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """cv2.remap (INTER_LINEAR, 8-bit fixed-point weights) along a row-wise sine shear."""
    batch, channels, height, width = x.shape
    fixed_x, fixed_y = (m.reshape(-1).to(x.device) for m in turbulence_maps(i, height, width))
    ix, iy = fixed_x >> 5, fixed_y >> 5
    fx, fy = (fixed_x & 31).float(), (fixed_y & 31).float()
    flat = x.reshape(batch * channels, height * width)
    total = torch.zeros_like(flat)
    # OpenCV's integer weights are (32-fx)(32-fy)*32 /32768 etc.; here in units of 1/1024,
    # exact in float32 (sums stay below 2^24). Samples outside the image have weight 0.
    for oy, ox, weight in (
        (0, 0, (32 - fx) * (32 - fy)),
        (0, 1, fx * (32 - fy)),
        (1, 0, (32 - fx) * fy),
        (1, 1, fx * fy),
    ):
        index = (iy + oy).clamp(max=height - 1) * width + (ix + ox).clamp(max=width - 1)
        total.addcmul_(flat.index_select(1, index.to(torch.int32)), weight)
    return torch.floor((total + 512.0) / 1024.0).view(batch, channels, height, width)


def gaussian_noise(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """trunc(clip(x + N(0, (75i)^2))), noise iid per pixel and channel, drawn per row."""
    noise = torch.stack([draws.gaussian_noise(gen, *x.shape[-2:]) for gen in gens]).to(x.device)
    return trunc(x + (75 * i) * noise)


def color_diffusion(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """sat(max(.1, 1-.9i) x + min(.9, .9i) trunc(D)), D = x filtered by i^2 * Gaussian
    (k = 3 + 2 int(20i), sigma = 50i: nearly a box). Only for i > 0.9 (never at the benchmark
    levels) int(100i) grey discs are drawn on D, with NumPy's exclusive upper bounds."""
    batch, _, height, width = x.shape
    taps = [t * i for t in gaussian_kernel(3 + 2 * int(20 * i), 50 * i)]  # K = outer(g, g) * i^2
    diffused = separable_filter(x, taps, taps)
    discs = [draws.diffusion_discs(gen, i, height, width) for gen in gens]
    if sum(len(d) for d in discs):
        row = torch.arange(batch).repeat_interleave(torch.tensor([len(d) for d in discs])).to(x.device)
        cx, cy, radius, grey = torch.cat(discs).to(x.device).unbind(1)
        shape = torch.arange(row.numel(), device=x.device)
        pixels = raster.span_pixels(raster.circle_spans(row, cx, cy, radius, shape), height, width)
        diffused = raster.paint(diffused, [pixels], grey.float().unsqueeze(1).expand(-1, 3))
    return sat(max(0.1, 1 - 0.9 * i) * x + min(0.9, 0.9 * i) * trunc(diffused, BLUR_EPS))
