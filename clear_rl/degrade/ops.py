"""Shared torch primitives for the corruptions: uint8 rounding, OpenCV borders and filters.

Every corruption works on "u8 floats": (B, 3, H, W) float32 tensors holding whole numbers in
[0, 255], the values of the reference's uint8 arrays. The helpers here reproduce the two
roundings of the reference (numpy `astype(uint8)` truncation and OpenCV's `saturate_cast`)
and OpenCV's default border (BORDER_REFLECT_101), so each step is quantised where the
reference quantises it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch


def to_u8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> u8 floats (whole numbers 0..255), the reference's uint8 input."""
    return images.float().clamp(0.0, 1.0).mul(255.0).round()


def from_u8(values: torch.Tensor) -> torch.Tensor:
    """u8 floats -> [0, 1] floats: exact multiples of 1/255."""
    return values / 255.0


def sat(values: torch.Tensor) -> torch.Tensor:
    """OpenCV saturate_cast<uchar>: round half to even (cvRound), then clamp to [0, 255]."""
    return values.round().clamp_(0.0, 255.0)


def trunc(values: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """numpy clip + astype(uint8): clamp to [0, 255], then floor.

    `eps` absorbs float noise of a filter whose exact result is a whole number (a flat region
    blurred by a kernel summing to 1), so the floor does not depend on summation order.
    """
    return (values + eps).clamp_(0.0, 255.0).floor_()


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 1-D table and integer-valued indices of any shape.

    index_select with int32 indices: several times faster on CPU than indexing with int64.
    """
    return table.index_select(0, index.to(torch.int32).reshape(-1)).view(index.shape)


def apply_lut(values: torch.Tensor, table: Sequence[float]) -> torch.Tensor:
    """Map each u8 value through a 256-entry table (pointwise ops computed exactly once)."""
    return lookup(torch.tensor(table, dtype=torch.float32, device=values.device), values)


def reflect101_index(size: int, before: int, after: int, device: torch.device | None = None) -> torch.Tensor:
    """Source indices of a line padded with OpenCV's BORDER_REFLECT_101 (`gfedcb|abcdefgh|gfedcba`).

    Works for any pad width, also wider than the line (the reflection repeats), as OpenCV does.
    """
    index = torch.arange(-before, size + after, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - index, index)


def pad_reflect101(images: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Pad the last two dimensions with BORDER_REFLECT_101."""
    height, width = images.shape[-2:]
    rows = reflect101_index(height, top, bottom, images.device)
    cols = reflect101_index(width, left, right, images.device)
    return images.index_select(-2, rows).index_select(-1, cols)


@functools.lru_cache(maxsize=64)
def gaussian_kernel(size: int, sigma: float) -> tuple[float, ...]:
    """`cv2.getGaussianKernel(size, sigma)`: float64 taps normalised to sum 1.

    A non-positive sigma takes OpenCV's default 0.3*((size-1)*0.5-1)+0.8, and sizes 1..7 with
    such a sigma use OpenCV's fixed small kernels.
    """
    small = {1: (1.0,), 3: (0.25, 0.5, 0.25), 5: (0.0625, 0.25, 0.375, 0.25, 0.0625)}
    small[7] = (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125)
    if sigma <= 0 and size in small:
        return small[size]
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    centre = (size - 1) * 0.5
    taps = [math.exp(-((j - centre) ** 2) / (2.0 * sigma * sigma)) for j in range(size)]
    total = sum(taps)
    return tuple(t / total for t in taps)


@functools.lru_cache(maxsize=64)
def _band_matrix_cpu(size: int, taps: tuple[float, ...]) -> torch.Tensor:
    count = len(taps)
    anchor = count // 2
    source = reflect101_index(size, anchor, count - 1 - anchor)
    outputs = torch.arange(size).unsqueeze(1).expand(size, count)
    sources = source.unfold(0, count, 1)  # (size, count): the padded window of each output
    weights = torch.tensor(taps, dtype=torch.float64).expand(size, count)
    matrix = torch.zeros(size * size, dtype=torch.float64)
    matrix.index_add_(0, (sources * size + outputs).reshape(-1), weights.reshape(-1))
    return matrix.view(size, size).float()


def band_matrix(size: int, taps: Sequence[float], device: torch.device) -> torch.Tensor:
    """Matrix M with `line @ M` = the 1D correlation of `line` with `taps` (anchor len//2),
    BORDER_REFLECT_101 folded in.

    A dense matmul is how large separable kernels run fast here: its cost does not depend on
    the kernel length (a 273-tap Gaussian costs what a 3-tap one does) and BLAS is far faster
    on CPU than direct or FFT convolution at these sizes.
    """
    return _band_matrix_cpu(size, tuple(float(t) for t in taps)).to(device)


def separable_filter(images: torch.Tensor, taps_y: Sequence[float], taps_x: Sequence[float]) -> torch.Tensor:
    """`cv2.filter2D` with the kernel outer(taps_y, taps_x), float32, BORDER_REFLECT_101.

    Runs one image at a time so that a row's result never depends on the rest of the batch
    (BLAS may block a larger product differently).
    """
    height, width = images.shape[-2:]
    across = band_matrix(width, taps_x, images.device)
    down = band_matrix(height, taps_y, images.device).T.contiguous()
    return torch.stack([down @ (image @ across) for image in images])


def correlate(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """`cv2.filter2D` (correlation, anchor at k//2, BORDER_REFLECT_101) with one small kernel
    per row: images (B, C, H, W), kernels (B, kh, kw) or (kh, kw).

    Sums shifted views over the kernel's non-zero taps only, so a sparse line kernel (motion
    blur) costs what its few taps cost, and each row's sum runs in a fixed order.
    """
    if kernels.dim() == 2:
        kernels = kernels.expand(images.shape[0], *kernels.shape)
    height, width = images.shape[-2:]
    kh, kw = kernels.shape[-2:]
    padded = pad_reflect101(images, kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2)
    out = torch.zeros_like(images)
    cpu_kernels = kernels.detach().cpu().double()
    for row, kernel in enumerate(cpu_kernels):
        for dy, dx in torch.nonzero(kernel).tolist():
            weight = float(kernel[dy, dx])
            out[row].add_(padded[row, :, dy : dy + height, dx : dx + width], alpha=weight)
    return out
