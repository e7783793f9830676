"""Batched rasterisation of OpenCV-style filled shapes and lines, with overwrite order.

OpenCV draws opaque shapes one after the other (LINE_8, integer coordinates, clipped to the
image): a later shape overwrites an earlier one. Shapes here become horizontal runs ("spans")
or pixel lists covering only their own extent, never a whole-image mask per shape; a union of
same-coloured shapes is a difference array along x, and differently coloured shapes are
painted "last shape wins" with a scatter-max of the shape's drawing order.

Nothing is compacted with boolean indexing (slow on CPU): a run that draws nothing is empty
(x_lo > x_hi), and a pixel that draws nothing has shape index -1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

Pixels = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # row, y, x, shape (-1: none)


@dataclass
class Spans:
    """Runs of pixels x_lo..x_hi (inclusive) on line y of batch row `row`, drawn by `shape`;
    all tensors share one shape, and a run with x_lo > x_hi draws nothing."""

    row: torch.Tensor
    y: torch.Tensor
    x_lo: torch.Tensor
    x_hi: torch.Tensor
    shape: torch.Tensor

    def clipped(self, height: int, width: int) -> Spans:
        """Clip to the image: runs on lines outside it become empty."""
        inside = (self.y >= 0) & (self.y < height)
        x_lo = torch.where(inside, self.x_lo.clamp(min=0), width)
        x_hi = torch.where(inside, self.x_hi.clamp(max=width - 1), width - 1)
        return Spans(self.row, self.y.clamp(0, height - 1), x_lo, x_hi, self.shape)


def _spans(row, y, x_lo, x_hi, valid, shape) -> Spans:
    """(S, K) runs per shape; runs where `valid` is false become empty."""
    return Spans(
        row.unsqueeze(1).expand_as(y),
        y,
        torch.where(valid, x_lo, 1),
        torch.where(valid, x_hi, 0),
        shape.unsqueeze(1).expand_as(y),
    )


@functools.lru_cache(maxsize=8)
def circle_half_widths(max_radius: int) -> torch.Tensor:
    """table[r, |dy|]: half-width of OpenCV's filled circle of radius r on row dy (-1: none).

    Replays OpenCV's `Circle()` (the integer midpoint algorithm behind `cv2.circle` with
    thickness -1, LINE_8) once per radius, so the discs have OpenCV's exact pixel sets.
    """
    table = torch.full((max_radius + 1, max_radius + 1), -1, dtype=torch.long)
    for radius in range(max_radius + 1):
        err, dx, dy, plus, minus = 0, radius, 0, 1, 2 * radius - 1
        while dx >= dy:
            table[radius, dy] = max(int(table[radius, dy]), dx)
            table[radius, dx] = max(int(table[radius, dx]), dy)
            dy += 1
            err += plus
            plus += 2
            if err > 0:
                err -= minus
                dx -= 1
                minus -= 2
    return table


def circle_spans(row, cx, cy, radius, shape) -> Spans:
    """Filled circles (all arguments (S,) long tensors)."""
    max_radius = int(radius.max()) if radius.numel() else 0
    table = circle_half_widths(max_radius).to(radius.device)
    dy = torch.arange(-max_radius, max_radius + 1, device=radius.device)
    half = table[radius.unsqueeze(1), dy.abs().unsqueeze(0)]
    y = cy.unsqueeze(1) + dy
    return _spans(row, y, cx.unsqueeze(1) - half, cx.unsqueeze(1) + half, half >= 0, shape)


def ellipse_spans(row, cx, cy, axis_a, axis_b, angle_degrees, shape, height: int) -> Spans:
    """Filled ellipses (`cv2.ellipse(..., 0, 360, colour, -1)`), rotated by an angle in degrees.

    OpenCV fills a 72-gon approximation; the exact ellipse differs from it by under a pixel.
    A point (dx, dy) is inside when (dx cos + dy sin)^2/a^2 + (-dx sin + dy cos)^2/b^2 <= 1:
    per image line a quadratic in dx whose roots bound the run.
    """
    theta = angle_degrees.double() * (math.pi / 180.0)
    cos, sin = theta.cos().unsqueeze(1), theta.sin().unsqueeze(1)
    inv_a2 = 1.0 / axis_a.double().unsqueeze(1) ** 2
    inv_b2 = 1.0 / axis_b.double().unsqueeze(1) ** 2
    y = torch.arange(height, device=cx.device).unsqueeze(0).expand(cx.shape[0], height)
    dy = (y - cy.unsqueeze(1)).double()
    quad = cos**2 * inv_a2 + sin**2 * inv_b2
    lin = 2.0 * dy * sin * cos * (inv_a2 - inv_b2)
    const = dy**2 * (sin**2 * inv_a2 + cos**2 * inv_b2) - 1.0
    disc = lin**2 - 4.0 * quad * const
    root = disc.clamp(min=0).sqrt()
    x_lo = torch.ceil(cx.unsqueeze(1) + (-lin - root) / (2.0 * quad)).long()
    x_hi = torch.floor(cx.unsqueeze(1) + (-lin + root) / (2.0 * quad)).long()
    return _spans(row, y, x_lo, x_hi, disc >= 0, shape)


def rectangle_spans(row, x0, y0, x1, y1, shape) -> Spans:
    """Filled rectangles with inclusive corners (x0, y0)-(x1, y1), x0 <= x1, y0 <= y1."""
    tallest = int((y1 - y0).max()) + 1 if row.numel() else 0
    y = y0.unsqueeze(1) + torch.arange(tallest, device=row.device)
    return _spans(
        row, y, x0.unsqueeze(1).expand_as(y), x1.unsqueeze(1).expand_as(y), y <= y1.unsqueeze(1), shape
    )


def union_mask(spans: Spans, batch: int, height: int, width: int) -> torch.Tensor:
    """(B, H, W) bool: pixels covered by any run (a difference array summed along x)."""
    spans = spans.clipped(height, width)
    drawn = (spans.x_lo <= spans.x_hi).to(torch.int32).reshape(-1)
    line = ((spans.row * height + spans.y) * (width + 1)).reshape(-1)
    marks = torch.zeros(batch * height * (width + 1), dtype=torch.int32, device=line.device)
    marks.index_add_(0, line + spans.x_lo.clamp(max=width).reshape(-1), drawn)
    marks.index_add_(0, line + (spans.x_hi + 1).clamp(min=0).reshape(-1), -drawn)
    return marks.view(batch, height, width + 1).cumsum(-1)[..., :width] > 0


def span_pixels(spans: Spans, height: int, width: int) -> Pixels:
    """Every pixel of the (clipped) runs, as (row, y, x, shape) with shape -1 for padding."""
    spans = spans.clipped(height, width)
    longest = int((spans.x_hi - spans.x_lo).max()) + 1 if spans.row.numel() else 0
    offset = torch.arange(max(longest, 0), device=spans.row.device)
    x = spans.x_lo.unsqueeze(-1) + offset
    drawn = x <= spans.x_hi.unsqueeze(-1)

    def grow(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(-1).expand_as(x)

    return grow(spans.row), grow(spans.y), x, torch.where(drawn, grow(spans.shape), -1)


def drawn_pixels(
    draw: Callable[[np.ndarray, int, int], object],
    box: tuple[int, int, int, int],
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the pixels an OpenCV drawing call sets in an H x W image, drawn on a canvas
    covering only `box` = (x_lo, y_lo, x_hi, y_hi) (inclusive) within the image.

    `draw(canvas, dx, dy)` must shift its integer coordinates by (dx, dy). OpenCV's
    rasterisers are exact under integer shifts, and the canvas's clipped sides are the
    image's, so the pixels are those the same call sets on the whole image (clipping changes
    the fixed-point walk along a polygon's edges, so the canvas must clip where the image does).
    """
    x_lo, y_lo = max(box[0], 0), max(box[1], 0)
    x_hi, y_hi = min(box[2], width - 1), min(box[3], height - 1)
    if x_lo > x_hi or y_lo > y_hi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    canvas = np.zeros((y_hi - y_lo + 1, x_hi - x_lo + 1), np.uint8)
    draw(canvas, -x_lo, -y_lo)
    ys, xs = np.nonzero(canvas)
    return ys + y_lo, xs + x_lo


def _pixel_sets(parts: list[tuple[int, int, np.ndarray, np.ndarray]], device: torch.device) -> Pixels:
    """(row, shape, ys, xs) per shape -> one flat Pixels set."""
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty, empty
    rows = np.concatenate([np.full(len(ys), row) for row, _, ys, _ in parts])
    shapes = np.concatenate([np.full(len(ys), shape) for _, shape, ys, _ in parts])
    ys = np.concatenate([ys for _, _, ys, _ in parts])
    xs = np.concatenate([xs for _, _, _, xs in parts])
    row, y, x, shape = (torch.from_numpy(a.astype(np.int64)).to(device) for a in (rows, ys, xs, shapes))
    return row, y, x, shape


def line_pixels(row, x0, y0, x1, y1, thickness, shape, height: int, width: int) -> Pixels:
    """Pixels of `cv2.line` segments (all (S,) long tensors) in an H x W image.

    Each segment is drawn by `cv2.line` itself (LINE_8) on a canvas covering its own extent:
    OpenCV's thick lines are fixed-point polygons with round caps, whose exact pixel sets are
    not worth re-deriving, and the few strokes per image cost microseconds on the CPU.
    """
    parts = []
    for r, a, b, c, d, t, s in torch.stack([row, x0, y0, x1, y1, thickness, shape], 1).tolist():
        reach = t + 2

        def draw(canvas, dx, dy, a=a, b=b, c=c, d=d, t=t):
            cv2.line(canvas, (a + dx, b + dy), (c + dx, d + dy), 1, t)

        box = (min(a, c) - reach, min(b, d) - reach, max(a, c) + reach, max(b, d) + reach)
        ys, xs = drawn_pixels(draw, box, height, width)
        parts.append((r, s, ys, xs))
    return _pixel_sets(parts, row.device)


def text_pixels(
    text: str, x: int, y: int, scale: float, thickness: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of `cv2.putText(text, bottom-left (x, y), FONT_HERSHEY_SIMPLEX, scale, thickness)`
    (OpenCV's built-in vector font) in an H x W image."""
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    reach = thickness + 2

    def draw(canvas, dx, dy):
        cv2.putText(canvas, text, (x + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, 1, thickness)

    box = (x - reach, y - text_h - reach, x + text_w + reach, y + baseline + reach)
    return drawn_pixels(draw, box, height, width)


def paint(canvas: torch.Tensor, pixel_sets: list[Pixels], colours: torch.Tensor) -> torch.Tensor:
    """Draw opaque shapes onto canvas (B, C, H, W): each pixel takes the colour of the last
    shape (highest `shape` index) covering it. `colours` is (S, C), indexed by shape; shapes
    of very different sizes come as separate pixel sets so none pads to the largest."""
    batch, channels, height, width = canvas.shape
    winner = torch.full((batch * height * width,), -1, dtype=torch.long, device=canvas.device)
    for pixels in pixel_sets:
        rows, ys, xs, shapes = (p.reshape(-1) for p in pixels)
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        index = (rows * height + ys.clamp(0, height - 1)) * width + xs.clamp(0, width - 1)
        winner.scatter_reduce_(0, index, torch.where(inside, shapes, -1), reduce="amax")
    if colours.shape[0] == 0:
        return canvas
    winner = winner.view(batch, 1, height, width)
    painted = colours.to(canvas.dtype).T[:, winner.clamp(min=0)[:, 0]].permute(1, 0, 2, 3)
    return torch.where(winner >= 0, painted, canvas)
