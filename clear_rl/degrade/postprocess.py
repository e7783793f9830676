"""Post-processing corruptions: sharpness_change, graffiti, watermark_damage.

Same contract as capture.py: u8 floats (B, 3, H, W) RGB in and out, intensity i, one
generator per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from clear_rl.degrade import draws, raster
from clear_rl.degrade.ops import correlate, gaussian_kernel, sat, separable_filter, trunc

TEXT_RGB = (255.0, 0.0, 0.0)  # the reference's BGR (0, 0, 255): pure red
INPAINT_RADIUS = 3  # Telea's neighbourhood radius, as in the release


def sharpness_change(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """sat(0.7x + 0.3 sat(80i * Laplacian-sharpen(x))): saturates to about 0.7x + 76.5, nearly
    independent of i (the released definition). At i = 0 the reference's blur branch runs."""
    if i > 0:
        gain = 80 * i
        kernel = torch.tensor([[0.0, -gain, 0.0], [-gain, 5 * gain, -gain], [0.0, -gain, 0.0]])
        sharpened = sat(correlate(x, kernel.to(x.device)))
    else:
        taps = gaussian_kernel(int(3 + 5 * abs(i)) | 1, 0)
        sharpened = sat(separable_filter(x, taps, taps))
    return sat(0.7 * x + 0.3 * sharpened)


def graffiti(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """int(10i) opaque random lines (thickness up to int(5i)); at i > 0.55 also a red Hershey
    text stamp ("X", "FAKE", "COPY", "VOID", "COPYRIGHT" or a number), only on images tall
    enough for it."""
    batch, _, height, width = x.shape
    marks = [draws.graffiti(gen, i, height, width) for gen in gens]
    lines = torch.cat([m.lines for m in marks]).to(x.device)
    row = torch.arange(batch).repeat_interleave(torch.tensor([len(m.lines) for m in marks])).to(x.device)
    out = x
    if len(lines):
        shape = torch.arange(row.numel(), device=x.device)
        x0, y0, x1, y1, thickness = lines[:, 3:].unbind(1)
        pixels = raster.line_pixels(row, x0, y0, x1, y1, thickness, shape, height, width)
        out = raster.paint(out, [pixels], lines[:, :3].float())
    stamps = [(r, m.stamp) for r, m in enumerate(marks) if m.stamp is not None]
    if stamps:
        out = out.clone()
        red = torch.tensor(TEXT_RGB, device=x.device).view(3, 1)
        for r, stamp in stamps:
            drawn = raster.text_pixels(
                stamp.text, stamp.x, stamp.y, stamp.scale, stamp.thickness, height, width
            )
            ys, xs = (torch.from_numpy(v).to(x.device) for v in drawn)
            out[r, :, ys, xs] = red.to(out.dtype)
    return out


def inpaint(x: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """`cv2.inpaint(..., 3, INPAINT_TELEA)` of each row, on the CPU.

    Telea's method is a fast-marching pass that fills hole pixels one at a time in order of
    their distance to the boundary, each from the pixels filled before it: sequential by
    nature, with no batched tensor form. The release's own call keeps the result exact.
    """
    images = x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
    masks = holes.to(torch.uint8).mul(255).cpu().numpy()
    filled = [
        cv2.inpaint(image, mask, INPAINT_RADIUS, cv2.INPAINT_TELEA) for image, mask in zip(images, masks)
    ]
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).to(x.device, x.dtype)


def mask_outline(mask: torch.Tensor) -> torch.Tensor:
    """`cv2.Canny(mask, 50, 150)` of a binary mask: of two neighbours that differ vertically
    the upper one, horizontally the left one (outside on the top/left sides, the last inside
    line on the bottom/right)."""
    outline = torch.zeros_like(mask)
    vertical = mask[:, :-1, :] != mask[:, 1:, :]
    horizontal = mask[:, :, :-1] != mask[:, :, 1:]
    outline[:, :-1, :] |= vertical
    outline[:, :, :-1] |= horizontal
    return outline


def watermark_damage(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Blend toward an inpainting of int(1+15i) random rectangles: sat((1-i) x + i R); at
    i > 0.5 the rectangles' outline becomes trunc(0.8 out)."""
    batch, _, height, width = x.shape
    if height < 50 or width < 50:
        raise ValueError(f"watermark_damage needs sides >= 50 px, got {height}x{width}")
    rects = [draws.watermark_rectangles(gen, i, height, width) for gen in gens]
    row = torch.arange(batch).repeat_interleave(torch.tensor([len(r) for r in rects])).to(x.device)
    x0, y0, x1, y1 = torch.cat(rects).to(x.device).unbind(1)
    mask = raster.union_mask(raster.rectangle_spans(row, x0, y0, x1, y1, row), batch, height, width)
    restored = inpaint(x, mask)
    out = sat((1 - i) * x + i * restored)
    if i > 0.5:
        outline = mask_outline(mask).unsqueeze(1)
        out = torch.where(outline, trunc(0.8 * out), out)
    return out
