"""Glyph masks for graffiti's text stamp, rendered once per string with PIL's built-in font.

The reference writes with OpenCV's built-in Hershey vector font (no font file). Writing a
vector font renderer here would copy a large table of strokes; PIL already ships a default
font (`ImageFont.load_default`, no font file either), so the glyphs come from PIL and are
then scaled to the reference's text box: height th = 96 px (getTextSize at scale 4.5,
thickness 4) and Hershey's width for that string, so position draws, overflow and covered
area match the reference.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

TEXT_HEIGHT = 96
# getTextSize widths at FONT_HERSHEY_SIMPLEX, scale 4.5, thickness 4 (from the spec); digits
# are 90 px each plus 4.
HERSHEY_WIDTHS = {"X": 94, "FAKE": 346, "COPY": 373, "VOID": 314, "COPYRIGHT": 769}
RENDER_SIZE = 128
STROKE = 4


def text_width(text: str) -> int:
    """Hershey text width in pixels for one of graffiti's strings."""
    if text in HERSHEY_WIDTHS:
        return HERSHEY_WIDTHS[text]
    if text.isdigit():
        return 90 * len(text) + 4
    raise ValueError(f"no Hershey width known for {text!r}")


@functools.lru_cache(maxsize=128)
def glyph_mask(text: str) -> torch.Tensor:
    """(TEXT_HEIGHT, text_width) bool mask of the text's ink, as drawn opaque (no antialias)."""
    font = ImageFont.load_default(size=RENDER_SIZE)
    left, top, right, bottom = font.getbbox(text, stroke_width=STROKE // 2)
    canvas = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(canvas).text(
        (4 - left, 4 - top), text, fill=255, font=font, stroke_width=STROKE // 2, stroke_fill=255
    )
    ink = canvas.crop(canvas.getbbox())
    ink = ink.resize((text_width(text), TEXT_HEIGHT), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(ink) >= 128)
