"""Capture corruptions: lens_blur, lens_flare, motion_blur, dirty_lens, hsv_saturation.

Each function takes u8 floats (B, 3, H, W) RGB, the intensity i in [0, 1] and one generator
per row, and returns u8 floats. Formulas, constants and draw ranges follow the MMD-Bench
specification (the released `add_degradation.py`), quirks included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from clear_rl.degrade import raster
from clear_rl.degrade.colour import hsv_to_rgb, rgb_to_hsv
from clear_rl.degrade.ops import apply_lut, correlate, gaussian_kernel, sat, separable_filter, trunc
from clear_rl.degrade.rng import randint, uniform

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
    count = 3 + int(30 * i)
    params = []
    for gen in gens:
        cx, cy = randint(gen, 0, width, count), randint(gen, 0, height, count)  # both inclusive
        radius = randint(gen, 10, 50, count)
        angle = uniform(gen, 0.0, 2.0 * math.pi, count)
        length = randint(gen, 30, 150, count).double()
        end_x = torch.trunc(cx + length * angle.cos()).long()
        end_y = torch.trunc(cy + length * angle.sin()).long()
        params.append(torch.stack([cx, cy, radius, end_x, end_y], 1))
    cx, cy, radius, end_x, end_y = torch.cat(params).to(x.device).unbind(1)
    row = torch.arange(batch, device=x.device).repeat_interleave(count)
    shape = torch.arange(row.numel(), device=x.device)
    disks = raster.union_mask(raster.circle_spans(row, cx, cy, radius, shape), batch, height, width)
    rays = raster.paint(
        disks.unsqueeze(1).float(),
        [raster.line_pixels(row, cx, cy, end_x, end_y, torch.full_like(row, 2), shape)],
        torch.ones(row.numel(), 1, device=x.device),
    )
    taps = gaussian_kernel(3, 20 * i)
    flare = separable_filter(rays, taps, taps)  # one channel; the colour is applied after
    colour = torch.tensor(FLARE_RGB, device=x.device).view(1, 3, 1, 1)
    return trunc(x + (0.9 * i) * (colour * flare))


def rotated_line(size: int, angle: float) -> torch.Tensor:
    """The d x d identity rotated `angle` degrees by `cv2.warpAffine` about (d/2, d/2):
    bilinear, zero border, OpenCV's 1/32-pixel fixed-point coordinates. Not normalised."""
    identity = torch.eye(size, dtype=torch.float64)
    coords = torch.arange(size, dtype=torch.float64)
    theta = math.radians(angle)
    alpha, beta = math.cos(theta), math.sin(theta)
    centre = size / 2.0
    forward = torch.tensor(
        [
            [alpha, beta, (1 - alpha) * centre - beta * centre],
            [-beta, alpha, beta * centre + (1 - alpha) * centre],
        ],
        dtype=torch.float64,
    )
    inverse = torch.linalg.inv(torch.cat([forward, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)]))[:2]
    # warpAffine's fixed point: AB_SCALE = 1024, rounded to 1/32 px (round_delta 16).
    x_step = torch.round(inverse[0, 0] * coords * 1024).long()
    y_step = torch.round(inverse[1, 0] * coords * 1024).long()
    x_base = torch.round((inverse[0, 1] * coords + inverse[0, 2]) * 1024).long() + 16
    y_base = torch.round((inverse[1, 1] * coords + inverse[1, 2]) * 1024).long() + 16
    fixed_x = (x_base.unsqueeze(1) + x_step.unsqueeze(0)) >> 5  # [dst y, dst x], 1/32 px
    fixed_y = (y_base.unsqueeze(1) + y_step.unsqueeze(0)) >> 5
    ix, iy = fixed_x >> 5, fixed_y >> 5
    fx = (fixed_x & 31).double().div(32).float().double()
    fy = (fixed_y & 31).double().div(32).float().double()
    kernel = torch.zeros(size, size, dtype=torch.float64)
    for oy, ox, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        sy, sx = iy + oy, ix + ox
        inside = (sy >= 0) & (sy < size) & (sx >= 0) & (sx < size)
        kernel += torch.where(inside, identity[sy.clamp(0, size - 1), sx.clamp(0, size - 1)], 0.0) * weight
    return kernel


def motion_kernels(size: int, angles_degrees: Sequence[float]) -> torch.Tensor:
    """The reference's motion kernels, normalised to sum 1: (len(angles), d, d) float64."""
    kernels = [rotated_line(size, angle) for angle in angles_degrees]
    return torch.stack([kernel / kernel.sum() for kernel in kernels])


def motion_blur(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """x correlated with a rotated, normalised diagonal line kernel, d = max(5, int(30i))."""
    size = max(5, int(30 * i))
    angles = [float(uniform(gen, 0.0, 360.0)) for gen in gens]
    kernels = motion_kernels(size, angles).float()
    return sat(correlate(x, kernels))


def dirty_lens(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """sat((1-0.7i) x + 0.8i D): D is grey ellipses, spots and (i > 0.5) blobs, blurred with
    sigma 30. Shape sizes are absolute pixels, as in the reference."""
    batch, _, height, width = x.shape
    device = x.device
    n_ellipses = int(10 * i) if i > 0.1 else 0
    n_spots, n_blobs = int(300 * i), (int(5 * i) if i > 0.5 else 0)
    ellipses, spots, blobs = [], [], []
    for row, gen in enumerate(gens):
        if n_ellipses:
            cx, cy = randint(gen, 0, width, n_ellipses), randint(gen, 0, height, n_ellipses)
            axis_a, axis_b = randint(gen, 150, 300, n_ellipses), randint(gen, 100, 200, n_ellipses)
            angle = randint(gen, 0, 180, n_ellipses)
            ellipses.append(torch.stack([torch.full_like(cx, row), cx, cy, axis_a, axis_b, angle], 1))
        cx, cy = randint(gen, 0, width, n_spots), randint(gen, 0, height, n_spots)
        radius, grey = randint(gen, 4, 20, n_spots), randint(gen, 50, 100, n_spots)
        spots.append(torch.stack([torch.full_like(cx, row), cx, cy, radius, grey], 1))
        if n_blobs:
            bx, by = randint(gen, 0, width, n_blobs), randint(gen, 0, height, n_blobs)
            outer, inner = randint(gen, 20, 50, n_blobs), randint(gen, 10, 30, n_blobs)
            # Each blob is an outer disc (grey 80) then a concentric inner one (grey 120).
            rows = torch.full_like(bx, row)
            pair = [torch.stack([rows, bx, by, outer, torch.full_like(bx, 80)], 1)]
            pair.append(torch.stack([rows, bx, by, inner, torch.full_like(bx, 120)], 1))
            blobs.append(torch.stack(pair, 1).reshape(-1, 5))

    dirt = torch.zeros(batch, 1, height, width, device=device)
    if ellipses:
        row, cx, cy, axis_a, axis_b, angle = torch.cat(ellipses).to(device).unbind(1)
        spans = raster.ellipse_spans(row, cx, cy, axis_a, axis_b, angle, torch.zeros_like(row), height)
        dirt[:, 0] = 50.0 * raster.union_mask(spans, batch, height, width).float()
    # Blobs are drawn after every spot of their row: their shape indices come after all spots.
    discs = [torch.cat(spots).to(device)] + ([torch.cat(blobs).to(device)] if blobs else [])
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


def hsv_saturation(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """S <- trunc(S (1-i)) through OpenCV's 8-bit HSV round trip (S scaled in float32)."""
    factor = torch.tensor(1 - i, dtype=torch.float32)
    table = torch.floor(torch.arange(256, dtype=torch.float32) * factor).clamp(0, 255).tolist()
    hsv = rgb_to_hsv(x)
    hsv[:, 1] = apply_lut(hsv[:, 1], table)
    return hsv_to_rgb(hsv)
