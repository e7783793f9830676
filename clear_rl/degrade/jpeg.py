"""Batched baseline-JPEG round trip in torch, after libjpeg(-turbo)'s defaults as OpenCV uses them.

`cv2.imencode('.jpg', q)` + `cv2.imdecode` is written out here so that a whole batch goes
through on its own device: JFIF YCbCr with libjpeg's fixed-point colour tables, 4:2:0 chroma
(2x2 averages with libjpeg's alternating 1/2 rounding bias), 8x8 DCT, the IJG tables scaled
by quality, and on decoding libjpeg's "fancy" triangular chroma upsampling. The DCT is an
exact orthonormal float transform where libjpeg uses an integer approximation, so a
coefficient on a rounding boundary can land one quantisation step apart; images match
libjpeg's to within a few levels, not bit for bit.
"""

from __future__ import annotations

import functools
import math

import torch

LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

SCALE_BITS = 16
ONE_HALF = 1 << (SCALE_BITS - 1)


def _fix(value: float) -> int:
    return int(value * (1 << SCALE_BITS) + 0.5)


def quality_table(base: tuple[tuple[int, ...], ...], quality: int) -> torch.Tensor:
    """libjpeg's `jpeg_set_quality` scaling of a base table (baseline: entries in 1..255)."""
    quality = min(max(quality, 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, dtype=torch.long)
    return ((table * scale + 50) // 100).clamp(1, 255).float()


@functools.lru_cache(maxsize=4)
def _dct_matrix(device_type: str) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix (JPEG's DCT is exactly this, per axis)."""
    k = torch.arange(8, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(8, dtype=torch.float64).unsqueeze(0)
    matrix = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2.0 / 8)
    matrix[0] /= math.sqrt(2.0)
    return matrix.float().to(device_type)


def _rgb_to_ycc(rgb: torch.Tensor) -> torch.Tensor:
    """libjpeg's rgb_ycc_convert, integer-exact: (B, 3, H, W) u8 -> Y, Cb, Cr whole numbers."""
    r, g, b = rgb.to(torch.int32).unbind(1)  # every sum stays below 2^31
    offset = 128 << SCALE_BITS
    y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + ONE_HALF) >> SCALE_BITS
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset + ONE_HALF - 1) >> SCALE_BITS
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset + ONE_HALF - 1) >> SCALE_BITS
    return torch.stack([y, cb, cr], 1)


def _ycc_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """libjpeg's ycc_rgb_convert, integer-exact, with range limiting to [0, 255]."""
    y, cb, cr = ycc.to(torch.int32).unbind(1)
    cb, cr = cb - 128, cr - 128
    r = y + ((_fix(1.402) * cr + ONE_HALF) >> SCALE_BITS)
    g = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + ONE_HALF) >> SCALE_BITS)
    b = y + ((_fix(1.772) * cb + ONE_HALF) >> SCALE_BITS)
    return torch.stack([r, g, b], 1).clamp(0, 255).float()


def _downsample_h2v2(plane: torch.Tensor) -> torch.Tensor:
    """2x2 averages with libjpeg's bias 1, 2, 1, 2... along each output line."""
    total = plane[..., 0::2, 0::2] + plane[..., 0::2, 1::2] + plane[..., 1::2, 0::2] + plane[..., 1::2, 1::2]
    bias = torch.ones(total.shape[-1], dtype=total.dtype, device=total.device)
    bias[1::2] = 2
    return (total + bias) >> 2


def _upsample_h2v2_fancy(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """libjpeg's h2v2_fancy_upsample: 3/4 nearer + 1/4 farther sample, per axis, edges replicated."""
    rows = torch.cat([plane[..., :1, :], plane, plane[..., -1:, :]], -2)
    upper = 3 * plane + rows[..., :-2, :]  # output row 2r uses the line above
    lower = 3 * plane + rows[..., 2:, :]  # output row 2r+1 uses the line below
    colsum = torch.stack([upper, lower], -2).flatten(-3, -2)
    cols = torch.cat([colsum[..., :1], colsum, colsum[..., -1:]], -1)
    left = (3 * colsum + cols[..., :-2] + 8) >> 4
    right = (3 * colsum + cols[..., 2:] + 7) >> 4
    return torch.stack([left, right], -1).flatten(-2)[..., :height, :width]


def _blocks_roundtrip(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level shift, 8x8 DCT, quantise (round half away from zero), dequantise, inverse DCT.

    One image at a time, so BLAS sees the same shapes whatever the batch: a row's result
    never depends on the other rows.
    """
    batch, height, width = plane.shape
    dct = _dct_matrix(plane.device.type)
    table = table.to(plane.device).view(1, 8, 1, 8)
    out = []
    for image in plane:
        blocks = (image.float() - 128.0).view(height // 8, 8, width // 8, 8)
        coefficients = torch.einsum("ij,hjwk,lk->hiwl", dct, blocks, dct)
        quantised = torch.sign(coefficients) * torch.floor(coefficients.abs() / table + 0.5)
        restored = torch.einsum("ji,hjwk,kl->hiwl", dct, quantised * table, dct)
        out.append(torch.floor(restored + 128.5).clamp(0, 255).to(torch.int32).view(height, width))
    return torch.stack(out)


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode u8 floats (B, 3, H, W) RGB as JPEG at `quality`, 4:2:0."""
    batch, _, height, width = images.shape
    padded_h, padded_w = -(-height // 16) * 16, -(-width // 16) * 16
    ycc = _rgb_to_ycc(images)
    if (padded_h, padded_w) != (height, width):
        # libjpeg fills partial MCUs by repeating the last column and line.
        rows = torch.arange(padded_h, device=images.device).clamp(max=height - 1)
        cols = torch.arange(padded_w, device=images.device).clamp(max=width - 1)
        ycc = ycc.index_select(-2, rows).index_select(-1, cols)
    luma = _blocks_roundtrip(ycc[:, 0], quality_table(LUMINANCE_TABLE, quality))
    chroma_table = quality_table(CHROMINANCE_TABLE, quality)
    chroma_h, chroma_w = -(-height // 2), -(-width // 2)
    chroma = [
        _blocks_roundtrip(_downsample_h2v2(ycc[:, c]), chroma_table)[:, :chroma_h, :chroma_w] for c in (1, 2)
    ]
    upsampled = [_upsample_h2v2_fancy(c, height, width) for c in chroma]
    return _ycc_to_rgb(torch.stack([luma[:, :height, :width], *upsampled], 1))
