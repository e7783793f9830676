"""Capture corruptions: lens_blur, lens_flare, motion_blur, dirty_lens, hsv_saturation.

Each function takes u8 floats (B, 3, H, W) RGB, the intensity i in [0, 1] and one generator
per row, and returns u8 floats. Formulas, constants and draw ranges follow the MMD-Bench
specification (the released `add_degradation.py`), quirks included.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from clear_rl.degrade import draws, raster
from clear_rl.degrade.colour import hsv_to_rgb, rgb_to_hsv
from clear_rl.degrade.ops import apply_lut, correlate, gaussian_kernel, sat, separable_filter, trunc

# A blur whose exact value is a whole number must not truncate one level down on float noise.
BLUR_EPS = 1e-3
# Flare colour: the reference's BGR (255, 255, 235) written in RGB.
FLARE_RGB = (235.0, 255.0, 255.0)


def lens_blur(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """sat((1-0.7i) x + 0.9i trunc(G * x)), G Gaussian with k = int(3+300i)|1, sigma = 20i.

    The weights sum to 1+0.2i: the released blend brightens. The kernel is Robust-R1's
    uncapped one (273 taps at High), which the released benchmark files were made with.
    """
    size = int(3 + 300 * i) | 1
    taps = gaussian_kernel(size, 20 * i)
    blurred = trunc(separable_filter(x, taps, taps), BLUR_EPS)
    return sat((1 - 0.7 * i) * x + (0.9 * i) * blurred)


def lens_flare(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """trunc(x + 0.9i F): F holds 3+int(30i) light-cyan disks with rays, then a 3x3 blur."""
    batch, _, height, width = x.shape
    flares = [draws.lens_flare(gen, i, height, width) for gen in gens]
    row = torch.arange(batch).repeat_interleave(torch.tensor([len(f) for f in flares])).to(x.device)
    cx, cy, radius, end_x, end_y = torch.cat(flares).to(x.device).unbind(1)
    shape = torch.arange(row.numel(), device=x.device)
    disks = raster.union_mask(raster.circle_spans(row, cx, cy, radius, shape), batch, height, width)
    rays = raster.paint(
        disks.unsqueeze(1).float(),
        [raster.line_pixels(row, cx, cy, end_x, end_y, torch.full_like(row, 2), shape, height, width)],
        torch.ones(row.numel(), 1, device=x.device),
    )
    taps = gaussian_kernel(3, 20 * i)
    flare = separable_filter(rays, taps, taps)  # one channel; the colour is applied after
    colour = torch.tensor(FLARE_RGB, device=x.device).view(1, 3, 1, 1)
    return trunc(x + (0.9 * i) * (colour * flare))


@functools.lru_cache(maxsize=64)
def motion_kernel(size: int, angle: float) -> np.ndarray:
    """The release's kernel, built with the release's calls: the d x d identity rotated about
    (d/2, d/2) by `cv2.warpAffine` (bilinear, zero border), normalised to sum 1. float64.

    The rotation centre is off by half a pixel and the window clips the line, so length and
    weights vary with the angle; building it with OpenCV keeps those quirks exactly."""
    rotation = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1)
    kernel = cv2.warpAffine(np.eye(size), rotation, (size, size))
    return kernel / kernel.sum()


def motion_blur(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """x correlated with a rotated, normalised diagonal line kernel, d = max(5, int(30i))."""
    size = max(5, int(30 * i))
    kernels = np.stack([motion_kernel(size, draws.motion_angle(gen)) for gen in gens])
    return sat(correlate(x, torch.from_numpy(kernels).float().to(x.device)))


def dirty_lens(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """sat((1-0.7i) x + 0.8i D): D is grey ellipses, spots and (i > 0.5) blobs, blurred with
    sigma 30. Shape sizes are absolute pixels, as in the reference."""
    batch, _, height, width = x.shape
    device = x.device
    ellipses, spots, blobs = [], [], []
    for row, gen in enumerate(gens):
        dirt = draws.dirty_lens(gen, i, height, width)
        ellipses.append(_with_row(row, dirt.ellipses))
        spots.append(_with_row(row, dirt.spots))
        # Each blob is an outer disc (grey 80) then a concentric inner one (grey 120).
        cx, cy, outer, inner = dirt.blobs.unbind(1)
        pair = [torch.stack([cx, cy, outer, torch.full_like(cx, 80)], 1)]
        pair.append(torch.stack([cx, cy, inner, torch.full_like(cx, 120)], 1))
        blobs.append(_with_row(row, torch.stack(pair, 1).reshape(-1, 4)))
    ellipses, spots, blobs = torch.cat(ellipses), torch.cat(spots), torch.cat(blobs)

    dirt = torch.zeros(batch, 1, height, width, device=device)
    if len(ellipses):
        row, cx, cy, axis_a, axis_b, angle = ellipses.to(device).unbind(1)
        spans = raster.ellipse_spans(row, cx, cy, axis_a, axis_b, angle, torch.zeros_like(row), height)
        dirt[:, 0] = 50.0 * raster.union_mask(spans, batch, height, width).float()
    # Blobs are drawn after every spot of their row: their shape indices come after all spots.
    discs = [spots.to(device)] + ([blobs.to(device)] if len(blobs) else [])
    pixel_sets, first = [], 0
    for disc in discs:
        row, cx, cy, radius, _ = disc.unbind(1)
        shape = first + torch.arange(row.numel(), device=device)
        pixel_sets.append(raster.span_pixels(raster.circle_spans(row, cx, cy, radius, shape), height, width))
        first += row.numel()
    if first:
        dirt = raster.paint(dirt, pixel_sets, torch.cat(discs)[:, 4:].float())
    # GaussianBlur(sigma=30) on float32 picks a kernel of cvRound(30*4*2+1)|1 = 241 taps.
    taps = gaussian_kernel(241, 30.0)
    dirt = trunc(separable_filter(dirt, taps, taps), BLUR_EPS)
    return sat((1 - 0.7 * i) * x + (0.8 * i) * dirt)


def _with_row(row: int, shapes: torch.Tensor) -> torch.Tensor:
    """Shapes (n, k) with their batch row prepended as column 0."""
    return torch.cat([torch.full((len(shapes), 1), row, dtype=torch.long), shapes], 1)


def hsv_saturation(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """S <- trunc(S (1-i)) through OpenCV's 8-bit HSV round trip (S scaled in float32)."""
    factor = torch.tensor(1 - i, dtype=torch.float32)
    table = torch.floor(torch.arange(256, dtype=torch.float32) * factor).clamp(0, 255).tolist()
    hsv = rgb_to_hsv(x)
    hsv[:, 1] = apply_lut(hsv[:, 1], table)
    return hsv_to_rgb(hsv)
