"""The 16 x 3 figure of one image under every corruption and level (the paper's Figure 7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from clear_rl.degrade.engine import corrupt
from clear_rl.degrade.registry import CORRUPTIONS, resolve_intensity
from clear_rl.io.images import pil_to_tensor, tensor_to_pil
from clear_rl.seeds import derive_seed

CATEGORY_TITLES = {
    "capture": "Capture",
    "transmission": "Transmission",
    "environment": "Environment",
    "post_processing": "Post-processing",
}


def corruption_grid(
    image: Image.Image,
    seed: int = 0,
    levels: Sequence[str] = ("low", "mid", "high"),
    cell: int = 192,
    backend: str = "auto",
) -> Image.Image:
    """A labelled grid: one row per corruption (grouped by category), one column per level.

    Corruptions run on the full-size image (their sizes are absolute pixels), then each
    result is shrunk to a `cell`-pixel-wide thumbnail.
    """
    clean = pil_to_tensor(image).unsqueeze(0)
    scale = cell / max(image.size)
    thumb_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    font = ImageFont.load_default(size=14)
    label_w, header_h, pad = 210, 28, 4
    row_h = thumb_size[1] + pad
    sheet = Image.new(
        "RGB", (label_w + len(levels) * (thumb_size[0] + pad), header_h + len(CORRUPTIONS) * row_h), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for col, level in enumerate(levels):
        x = label_w + col * (thumb_size[0] + pad)
        draw.text((x + 4, 6), f"{level} (i={resolve_intensity(level):g})", fill="black", font=font)
    previous = None
    for row, (name, corruption) in enumerate(CORRUPTIONS.items()):
        y = header_h + row * row_h
        if corruption.category != previous:
            draw.line([(0, y - 2), (sheet.width, y - 2)], fill=(120, 120, 120), width=1)
            draw.text((6, y + 4), CATEGORY_TITLES[corruption.category], fill=(90, 90, 90), font=font)
            previous = corruption.category
        draw.text((6, y + 24), name, fill="black", font=font)
        for col, level in enumerate(levels):
            with torch.no_grad():
                out = corrupt(clean, name, level, derive_seed(seed, name, level), backend)
            tile = tensor_to_pil(out[0]).resize(thumb_size, Image.Resampling.BILINEAR)
            sheet.paste(tile, (label_w + col * (thumb_size[0] + pad), y))
    return sheet
