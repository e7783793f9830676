"""Post-processing corruptions: sharpness_change, graffiti, watermark_damage.

Same contract as capture.py: u8 floats (B, 3, H, W) RGB in and out, intensity i, one
generator per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clear_rl.degrade import raster
from clear_rl.degrade.ops import box_sum, correlate, gaussian_kernel, sat, separable_filter, trunc
from clear_rl.degrade.rng import randint
from clear_rl.degrade.text import TEXT_HEIGHT, glyph_mask, text_width

GRAFFITI_WORDS = ("X", "FAKE", "COPY", "VOID", "COPYRIGHT")
TEXT_RGB = (255.0, 0.0, 0.0)  # the reference's BGR (0, 0, 255): pure red
# Telea's radius: the first inpainting pass averages over this radius, later passes triple it.
INPAINT_RADIUS = 3


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


def _text_stamp(gen: torch.Generator, height: int, width: int) -> tuple[str, int, int] | None:
    """Draw graffiti's text and its bottom-left corner; None when the image is too short."""
    number = str(int(randint(gen, 1, 100)))  # drawn first, as in the reference
    choices = (*GRAFFITI_WORDS, number)
    text = choices[int(torch.randint(len(choices), (), generator=gen))]
    if not height - 10 > TEXT_HEIGHT + 10:
        return None
    tx = int(randint(gen, 0, max(1, width - text_width(text) - 10)))
    ty = int(randint(gen, TEXT_HEIGHT + 10, height - 10))
    return text, tx, ty


def graffiti(x: torch.Tensor, i: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """int(10i) opaque random lines (thickness up to int(5i)); at i > 0.55 also a red text
    stamp ("X", "FAKE", "COPY", "VOID", "COPYRIGHT" or a number) 96 px high, only on images at
    least 117 px high."""
    batch, _, height, width = x.shape
    count = int(10 * i)
    out = x
    if count:
        lines = []
        for gen in gens:
            colour_bgr = randint(gen, 0, 255, 3 * count).view(count, 3)
            x0, y0 = randint(gen, 0, width - 1, count), randint(gen, 0, height - 1, count)
            x1, y1 = randint(gen, 0, width - 1, count), randint(gen, 0, height - 1, count)
            thickness = randint(gen, 1, max(1, int(5 * i)), count)
            lines.append(torch.cat([colour_bgr.flip(1), torch.stack([x0, y0, x1, y1, thickness], 1)], 1))
        params = torch.cat(lines).to(x.device)
        row = torch.arange(batch, device=x.device).repeat_interleave(count)
        shape = torch.arange(row.numel(), device=x.device)
        x0, y0, x1, y1, thickness = params[:, 3:].unbind(1)
        pixels = raster.line_pixels(row, x0, y0, x1, y1, thickness, shape)
        out = raster.paint(out, [pixels], params[:, :3].float())
    if i > 0.55:
        out = out.clone()
        red = torch.tensor(TEXT_RGB, device=x.device).view(3, 1, 1)
        for row, gen in enumerate(gens):
            stamp = _text_stamp(gen, height, width)
            if stamp is None:
                continue
            text, tx, ty = stamp
            mask = glyph_mask(text).to(x.device)
            # putText's origin is the bottom-left corner: the glyphs sit on the baseline ty
            # (ty >= 106, so the top is inside the image); long text overflows on the right.
            top = ty - TEXT_HEIGHT + 1
            visible = mask[:, : width - tx]
            region = out[row, :, top : ty + 1, tx : tx + visible.shape[1]]
            region[:] = torch.where(visible, red, region)
    return out


def watermark_rectangles(gen: torch.Generator, i: float, height: int, width: int) -> torch.Tensor:
    """int(1+15i) rectangles (x, y, x+dw, y+dh), corners inclusive; needs H, W >= 50."""
    count = int(1 + 15 * i)
    x, y = randint(gen, 0, width - 50, count), randint(gen, 0, height - 50, count)
    dw, dh = randint(gen, 50, 200, count), randint(gen, 20, 80, count)
    return torch.stack([x, y, x + dw, y + dh], 1)


def inpaint(x: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """Fill `holes` (B, H, W) bool from the boundary inward by masked averaging.

    Stands in for `cv2.inpaint(..., 3, INPAINT_TELEA)`: every pass gives each unfilled pixel
    that has known pixels within the window the rounded mean of those pixels, then marks it
    known. The first pass uses Telea's radius 3, so the edges smear inward as Telea's do;
    later passes triple the window so deep holes fill in a few passes. Unlike Telea, there
    is no gradient (isophote) term or distance weighting: interiors come out smoother.
    """
    known = (~holes).unsqueeze(1)
    # Three colour sums and the count of known pixels go through one box sum per pass (float32
    # sums of whole numbers: exact up to radius ~120, far beyond these holes' depth).
    stacked = torch.cat([x, torch.ones_like(known, dtype=x.dtype)], 1) * known
    radius = INPAINT_RADIUS
    while not bool(known.all()):
        sums = box_sum(stacked, radius)
        counts = sums[:, 3:]
        fill = ~known & (counts > 0)
        if not bool(fill.any()):
            break  # an image that is all hole (small images, large rectangles): nothing to fill from
        mean = torch.round(sums[:, :3] / counts.clamp(min=1))
        stacked = torch.where(fill, torch.cat([mean, torch.ones_like(counts)], 1), stacked)
        known = known | fill
        radius *= 3
    return torch.where(known, stacked[:, :3], x)


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
    rects = [watermark_rectangles(gen, i, height, width) for gen in gens]
    row = torch.arange(batch).repeat_interleave(torch.tensor([len(r) for r in rects])).to(x.device)
    x0, y0, x1, y1 = torch.cat(rects).to(x.device).unbind(1)
    mask = raster.union_mask(raster.rectangle_spans(row, x0, y0, x1, y1, row), batch, height, width)
    restored = inpaint(x, mask)
    out = sat((1 - i) * x + i * restored)
    if i > 0.5:
        outline = mask_outline(mask).unsqueeze(1)
        out = torch.where(outline, trunc(0.8 * out), out)
    return out
