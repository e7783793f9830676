"""ShapesVQA scenes: what is in one image (background, shapes, one printed symbol) and drawing it.

A scene is plain data, sampled by `generate.py` from the answer it must support, so that a test
can redraw the same scene with one thing changed (another symbol, say) and compare.
Backgrounds for a whole batch are drawn at once with torch; shapes are anti-aliased coverage
masks drawn by PIL at `SUPERSAMPLE`x resolution and box-filtered down; symbols are bitmap
glyphs (see `glyphs.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from clear_rl.demo.shapes_vqa.glyphs import GLYPH_HEIGHT, GLYPH_WIDTH, glyph_mask

# Saturated colours that stay apart in hue, on purpose far from the pale, desaturated
# backgrounds. Values are the nominal RGB; each drawn shape jitters them by COLOR_JITTER.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 150, 55),
    "blue": (40, 80, 215),
    "yellow": (235, 205, 30),
    "purple": (135, 55, 185),
    "orange": (240, 125, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOR_JITTER = 12
SUPERSAMPLE = 4
GRID = 3  # the image is a GRID x GRID board of cells; each object or symbol owns one cell
TEXTURE_GRID = 4  # the low-frequency background texture is a TEXTURE_GRID^2 grid, upsampled


@dataclass(frozen=True)
class Background:
    """A gentle linear gradient between two pale colours plus a smooth luminance texture."""

    start_rgb: tuple[float, float, float]  # in [0, 1]
    end_rgb: tuple[float, float, float]
    angle: float  # gradient direction, radians
    texture: tuple[float, ...]  # TEXTURE_GRID**2 offsets in [-1, 1], row-major
    texture_amplitude: float


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    center: tuple[float, float]  # (x, y) in pixels
    radius: float  # pixels; every shape fits in the circle of this radius
    rgb: tuple[int, int, int]  # the jittered colour actually drawn


@dataclass(frozen=True)
class SymbolMark:
    char: str
    left: int
    top: int
    scale: int  # glyph pixels per bitmap cell: the stroke width
    ink: int  # grey level of the ink, 0-255

    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive end, of the symbol's pixels."""
        return (
            self.left,
            self.top,
            self.left + GLYPH_WIDTH * self.scale,
            self.top + GLYPH_HEIGHT * self.scale,
        )


@dataclass(frozen=True)
class Scene:
    size: int
    background: Background
    objects: tuple[ShapeObject, ...]
    symbol: SymbolMark

    def to_meta(self) -> dict:
        """JSON-ready description (what a test or an analysis needs to check an answer)."""
        return {
            "objects": [
                {
                    "shape": o.shape,
                    "color": o.color,
                    "center": [round(o.center[0], 2), round(o.center[1], 2)],
                    "radius": round(o.radius, 2),
                    "rgb": list(o.rgb),
                }
                for o in self.objects
            ],
            "symbol": {"char": self.symbol.char, "box": list(self.symbol.box()), "ink": self.symbol.ink},
        }


def cell_size(size: int) -> float:
    return size / GRID


def cell_origin(cell: int, size: int) -> tuple[float, float]:
    """Top-left corner (x, y) of grid cell `cell` (row-major)."""
    row, col = divmod(cell, GRID)
    return col * cell_size(size), row * cell_size(size)


def shape_outline(shape: str, cx: float, cy: float, r: float) -> list[list[tuple[float, float]]]:
    """Polygons (one or more) of a shape centred at (cx, cy) inside radius r; circles excluded."""
    if shape == "square":
        h = 0.8 * r
        return [[(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]]
    if shape == "triangle":  # equilateral, pointing up, inscribed in the circle
        return [[(cx, cy - r), (cx + 0.866 * r, cy + 0.5 * r), (cx - 0.866 * r, cy + 0.5 * r)]]
    if shape == "diamond":
        return [[(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]]
    if shape == "cross":  # thin arms: the shape that blur turns into a blob first
        t = 0.28 * r
        return [
            [(cx - r, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx - r, cy + t)],
            [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy + r), (cx - t, cy + r)],
        ]
    raise ValueError(f"unknown shape {shape!r}; choices: {', '.join(SHAPES)}")


def shape_patch(obj: ShapeObject, size: int) -> tuple[np.ndarray, int, int]:
    """The shape's coverage (fraction of each pixel it covers, float32 in [0, 1]) over its
    bounding box, and the box's top-left (x0, y0) in the image.

    PIL draws hard-edged polygons only; drawing at SUPERSAMPLE x and box-filtering down gives
    the anti-aliased edge a camera would see, without a rasteriser of our own. Only the
    bounding box is drawn, which keeps a set of thousands of images fast.
    """
    (cx, cy), r = obj.center, obj.radius
    x0, y0 = max(0, math.floor(cx - r) - 1), max(0, math.floor(cy - r) - 1)
    x1, y1 = min(size, math.ceil(cx + r) + 2), min(size, math.ceil(cy + r) + 2)
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    lx, ly, lr = (cx - x0) * s, (cy - y0) * s, r * s
    if obj.shape == "circle":
        draw.ellipse((lx - lr, ly - lr, lx + lr, ly + lr), fill=255)
    else:
        for polygon in shape_outline(obj.shape, lx, ly, lr):
            draw.polygon(polygon, fill=255)
    small = canvas.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0, x0, y0


def shape_coverage(obj: ShapeObject, size: int) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the fraction of each pixel the shape covers."""
    patch, x0, y0 = shape_patch(obj, size)
    coverage = np.zeros((size, size), dtype=np.float32)
    coverage[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    return coverage


def render_backgrounds(backgrounds: Sequence[Background], size: int) -> torch.Tensor:
    """(B, 3, size, size) float32 in [0, 1], all backgrounds of a batch in one pass."""
    start = torch.tensor([b.start_rgb for b in backgrounds], dtype=torch.float32)[:, :, None, None]
    end = torch.tensor([b.end_rgb for b in backgrounds], dtype=torch.float32)[:, :, None, None]
    angle = torch.tensor([b.angle for b in backgrounds], dtype=torch.float32)[:, None, None]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    # Projection on the gradient direction, scaled so the ramp spans [0, 1] over the image.
    ramp = (xs * torch.cos(angle) + ys * torch.sin(angle)) / (
        0.5 * (torch.cos(angle).abs() + torch.sin(angle).abs())
    )
    ramp = ((ramp + 1) / 2).clamp(0, 1)[:, None]
    texture = torch.tensor([b.texture for b in backgrounds], dtype=torch.float32)
    texture = texture.view(-1, 1, TEXTURE_GRID, TEXTURE_GRID)
    texture = F.interpolate(texture, size=(size, size), mode="bicubic", align_corners=True)
    amplitude = torch.tensor([b.texture_amplitude for b in backgrounds], dtype=torch.float32)
    images = start + (end - start) * ramp + amplitude[:, None, None, None] * texture
    return images.clamp(0, 1)


def paint_scene(background: np.ndarray, scene: Scene) -> Image.Image:
    """Composite the shapes, then the symbol, over an (H, W, 3) float background."""
    image = background.copy()
    for obj in scene.objects:
        patch, x0, y0 = shape_patch(obj, scene.size)
        region = image[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]]
        coverage = patch[..., None]
        region *= 1 - coverage
        region += (np.asarray(obj.rgb, dtype=np.float32) / 255.0) * coverage
    mark = scene.symbol
    x0, y0, x1, y1 = mark.box()
    image[y0:y1, x0:x1][glyph_mask(mark.char, mark.scale)] = mark.ink / 255.0
    return Image.fromarray(np.rint(image * 255.0).clip(0, 255).astype(np.uint8), mode="RGB")


def render_scenes(scenes: Sequence[Scene]) -> list[Image.Image]:
    """Draw scenes (all of one size) as RGB PIL images."""
    if not scenes:
        return []
    size = scenes[0].size
    if any(s.size != size for s in scenes):
        raise ValueError("render_scenes draws one image size per call")
    backgrounds = render_backgrounds([s.background for s in scenes], size)
    backgrounds = backgrounds.permute(0, 2, 3, 1).numpy()
    return [paint_scene(bg, scene) for bg, scene in zip(backgrounds, scenes)]


def nearest_color_name(rgb: Sequence[float], names: Sequence[str] | None = None) -> str:
    """The palette colour nearest (Euclidean, 0-255 RGB) to `rgb`: how a colour is read back."""
    names = list(names or COLORS)
    return min(names, key=lambda n: math.dist(COLORS[n], rgb))
