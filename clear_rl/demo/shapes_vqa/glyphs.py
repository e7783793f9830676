"""5x7 bitmap glyphs for the symbols ShapesVQA prints, so that no image depends on a font file.

Fonts differ between machines and would make the same seed draw different pixels; a fixed
bitmap upscaled with nearest neighbour draws the same strokes everywhere, and its stroke width
(`scale` pixels) is what strong blur or noise wipes out.
"""

from __future__ import annotations

from functools import cache

import numpy as np

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7

# One string per row, '#' = ink. Classic 5x7 dot-matrix shapes.
_GLYPH_ROWS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}

GLYPHS: dict[str, np.ndarray] = {
    char: np.array([[cell == "#" for cell in row] for row in rows], dtype=bool)
    for char, rows in _GLYPH_ROWS.items()
}
AVAILABLE_SYMBOLS = "".join(GLYPHS)


@cache
def glyph_mask(char: str, scale: int) -> np.ndarray:
    """The (7*scale, 5*scale) boolean ink mask of `char`, upscaled with nearest neighbour.

    Cached and read-only: every image of a set reuses the same few masks.
    """
    if char not in GLYPHS:
        raise KeyError(f"no glyph for symbol {char!r}; available: {AVAILABLE_SYMBOLS}")
    if scale < 1:
        raise ValueError(f"glyph scale must be >= 1, got {scale}")
    mask = GLYPHS[char].repeat(scale, axis=0).repeat(scale, axis=1)
    mask.flags.writeable = False
    return mask
