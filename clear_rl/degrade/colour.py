"""OpenCV's 8-bit RGB <-> HSV conversions (H in [0, 180), S and V in [0, 255]), in torch.

hsv_saturation must go through these exact conversions: the 8-bit round trip alone changes
colours by a few levels (the spec measured up to +-6), so a float HSV model would not give the
benchmark's images. RGB2HSV is OpenCV's integer algorithm (12-bit fixed-point division
tables); HSV2RGB is its float algorithm followed by saturate_cast.
"""

from __future__ import annotations

import functools

import torch

from clear_rl.degrade.ops import lookup

HSV_SHIFT = 12
HUE_RANGE = 180


@functools.lru_cache(maxsize=1)
def _division_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's sdiv_table and hdiv_table180: round((255 << 12) / v), round((180 << 12) / (6 d))."""
    index = torch.arange(256, dtype=torch.float64)
    safe = index.clamp(min=1)
    sdiv = torch.where(index > 0, ((255 << HSV_SHIFT) / safe).round(), 0.0).long()
    hdiv = torch.where(index > 0, ((HUE_RANGE << HSV_SHIFT) / (6.0 * safe)).round(), 0.0).long()
    return sdiv, hdiv


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """u8 floats (B, 3, H, W) RGB -> u8 floats (B, 3, H, W) as H, S, V (`cv2.COLOR_RGB2HSV`)."""
    sdiv, hdiv = (t.to(device=images.device, dtype=torch.int32) for t in _division_tables())
    r, g, b = images.to(torch.int32).unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    vmin = torch.minimum(torch.minimum(r, g), b)
    diff = v - vmin
    half = 1 << (HSV_SHIFT - 1)
    s = (diff * lookup(sdiv, v) + half) >> HSV_SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * lookup(hdiv, diff) + half) >> HSV_SHIFT
    h = torch.where(h < 0, h + HUE_RANGE, h)
    return torch.stack([h, s, v], dim=1).float()


# Which of (v, v(1-s), v(1-s f), v(1-s(1-f))) is B, G, R in each of the 6 hue sectors (OpenCV's
# sector_data, stored as B, G, R indices).
_SECTORS = torch.tensor([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """u8 floats H, S, V -> u8 floats RGB (`cv2.COLOR_HSV2RGB`), computed in float32."""
    h, s, v = hsv.float().unbind(1)
    s = s * (1.0 / 255.0)
    v = v * (1.0 / 255.0)
    h = torch.remainder(h * (6.0 / HUE_RANGE), 6.0)
    sector = torch.floor(h)
    frac = h - sector
    sector = sector.long().clamp(0, 5)
    table = torch.stack([v, v * (1.0 - s), v * (1.0 - s * frac), v * (1.0 - s * (1.0 - frac))], dim=1)
    picks = _SECTORS.to(hsv.device)[sector]  # (B, H, W, 3) as B, G, R
    bgr = torch.gather(table, 1, picks.permute(0, 3, 1, 2))
    bgr = torch.where((s == 0).unsqueeze(1), v.unsqueeze(1).expand_as(bgr), bgr)
    return (bgr.flip(1) * 255.0).round().clamp(0.0, 255.0)
