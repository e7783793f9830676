"""The CPU backend: the 16 corruptions on OpenCV and NumPy, one uint8 RGB image at a time.

Each function takes an (H, W, 3) uint8 RGB array, the intensity i and the row's generator,
and returns a new uint8 array. They make the released generator's own calls (`filter2D`,
`GaussianBlur`, `warpAffine`, `remap`, `pyrMeanShiftFiltering`, Telea `inpaint`, `Canny`,
Hershey `putText`, libjpeg through `imencode`) with the same casts at the same steps, in RGB
(the three colour-dependent constants swapped), and draw their random parameters from
draws.py, so they give the torch backend's corruption for the same seed.

Where the release does more work than its result needs, the work is cut and the result kept:
shapes of one grey level are drawn and blurred on one channel instead of three, Gaussians of
up to 100 taps run as two 1-D passes, a level-wise cast is a lookup table, a flare touches only
the pixels it lights, and strokes are drawn straight onto the image.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from clear_rl.degrade import draws
from clear_rl.degrade.capture import BLUR_EPS, FLARE_RGB, motion_kernel
from clear_rl.degrade.postprocess import INPAINT_RADIUS, TEXT_RGB
from clear_rl.degrade.transmission import block_size, jpeg_quality, scan_line_rows

FLARE_COLOUR = np.array(FLARE_RGB, np.float32)


def _lut(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).clip(0, 255).astype(np.uint8)


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    return cv2.getGaussianKernel(size, sigma)


# Above this many taps, one 2-D filter2D (OpenCV takes its DFT path there, as the release's
# call does) beats two 1-D passes: 18 vs 40-70 ms for lens_blur's 273 taps on 512x512, where
# at 73 taps the 1-D passes take 6 ms against 10 (measured on one thread).
DFT_TAPS = 100


def _blur_truncated(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """trunc(filter2D(float32(image), outer(taps, taps))), the release's cast included."""
    if len(taps) > DFT_TAPS:
        blurred = cv2.filter2D(image.astype(np.float32), -1, taps @ taps.T, delta=BLUR_EPS)
    else:
        blurred = cv2.sepFilter2D(image, cv2.CV_32F, taps, taps, delta=BLUR_EPS)
    return blurred.astype(np.uint8)  # the release's plain cast: values stay in [0, 255]


def lens_blur(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """addWeighted(x, 1-0.7i, trunc(G * x), 0.9i): k = int(3+300i)|1, sigma 20i (uncapped)."""
    taps = _gaussian_taps(int(3 + 300 * i) | 1, 20 * i)
    return cv2.addWeighted(x, 1 - 0.7 * i, _blur_truncated(x, taps), 0.9 * i, 0)


def lens_flare(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """trunc(x + 0.9i F): disks and rays of one colour, so F is that colour times one blurred
    mask; only the pixels the blurred mask reaches are touched."""
    height, width = x.shape[:2]
    mask = np.zeros((height, width), np.float32)
    for cx, cy, radius, end_x, end_y in draws.lens_flare(gen, i, height, width).tolist():
        cv2.circle(mask, (cx, cy), radius, 1.0, -1)
        cv2.line(mask, (cx, cy), (end_x, end_y), 1.0, 2)
    mask = cv2.GaussianBlur(mask, (3, 3), 20 * i)
    ys, xs = np.nonzero(mask)
    out = x.copy()
    lit = x[ys, xs].astype(np.float32) + (0.9 * i) * mask[ys, xs, None] * FLARE_COLOUR
    out[ys, xs] = lit.clip(0, 255).astype(np.uint8)
    return out


def motion_blur(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """filter2D(x, motion_kernel(max(5, int(30i)), angle)), angle uniform on [0, 360)."""
    return cv2.filter2D(x, -1, motion_kernel(max(5, int(30 * i)), draws.motion_angle(gen)))


def dirty_lens(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """addWeighted(x, 1-0.7i, trunc(GaussianBlur(D, sigma 30)), 0.8i): D holds grey ellipses,
    spots and blobs, drawn in the release's order on one channel (every grey is R = G = B)."""
    height, width = x.shape[:2]
    dirt = draws.dirty_lens(gen, i, height, width)
    canvas = np.zeros((height, width), np.float32)
    for cx, cy, axis_a, axis_b, angle in dirt.ellipses.tolist():
        cv2.ellipse(canvas, (cx, cy), (axis_a, axis_b), angle, 0, 360, 50.0, -1)
    for cx, cy, radius, grey in dirt.spots.tolist():
        cv2.circle(canvas, (cx, cy), radius, float(grey), -1)
    for cx, cy, outer, inner in dirt.blobs.tolist():
        cv2.circle(canvas, (cx, cy), outer, 80.0, -1)
        cv2.circle(canvas, (cx, cy), inner, 120.0, -1)
    # GaussianBlur(sigma=30) on float32 picks cvRound(30*4*2+1)|1 = 241 taps.
    blurred = _blur_truncated(canvas, _gaussian_taps(241, 30.0))
    return cv2.addWeighted(x, 1 - 0.7 * i, cv2.cvtColor(blurred, cv2.COLOR_GRAY2RGB), 0.8 * i, 0)


def hsv_saturation(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """S <- trunc(S (1-i)) (scaled in float32) through OpenCV's 8-bit HSV round trip."""
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
    table = np.floor(np.arange(256, dtype=np.float32) * np.float32(1 - i)).clip(0, 255).astype(np.uint8)
    hsv[..., 1] = table[hsv[..., 1]]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def jpeg_compression(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """`imencode('.jpg', quality int(100 - 95i))` then `imdecode` (libjpeg's defaults, 4:2:0)."""
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(x, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality(i)]
    )
    if not ok:
        raise ValueError("cv2.imencode failed on a JPEG round trip")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def block_exchange(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """int(35i) sequential swaps of grid-aligned b x b blocks; remainder strips untouched."""
    height, width = x.shape[:2]
    size = block_size(i)
    grid_rows, grid_cols = height // size, width // size
    if grid_rows == 0 or grid_cols == 0:
        raise ValueError(f"block_exchange needs sides >= {size} px, got {height}x{width}")
    out = x.copy()
    for a, b in draws.block_swaps(gen, int(35 * i), grid_rows, grid_cols):
        (ra, ca), (rb, cb) = divmod(a, grid_cols), divmod(b, grid_cols)
        first = out[ra * size : (ra + 1) * size, ca * size : (ca + 1) * size].copy()
        out[ra * size : (ra + 1) * size, ca * size : (ca + 1) * size] = out[
            rb * size : (rb + 1) * size, cb * size : (cb + 1) * size
        ]
        out[rb * size : (rb + 1) * size, cb * size : (cb + 1) * size] = first
    return out


def mean_shift(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """`pyrMeanShiftFiltering(x, sp, sr)` with sp = sr = int(40i); symmetric in the channels,
    so RGB gives the release's BGR result with the channels swapped."""
    radius = int(40 * i)
    return cv2.pyrMeanShiftFiltering(x, radius, radius)


def scan_lines(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """Rows in the bands become trunc(0.01 x)."""
    out = x.copy()
    rows = scan_line_rows(i, x.shape[0]).numpy()
    out[rows] = _lut([int(v * 0.01) for v in range(256)])[x[rows]]
    return out


def dark_illumination(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """trunc(x (1 - i^2)), the factor in float64, as a lookup table."""
    factor = 1 - i**2
    return cv2.LUT(x, _lut([int(min(max(v * factor, 0.0), 255.0)) for v in range(256)]))


@functools.lru_cache(maxsize=16)
def turbulence_maps(i: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """d(y) = 40i sin(y/30 + 5i); map_x = clip(x + d), map_y = clip(y + 0.7d), float64 then float32."""
    y = np.arange(height, dtype=np.float64)[:, None]
    x = np.arange(width, dtype=np.float64)[None, :]
    shift = 40 * i * np.sin(y / 30 + 5 * i)
    map_x = np.clip(x + shift, 0, width - 1).astype(np.float32)
    map_y = np.broadcast_to(np.clip(y + 0.7 * shift, 0, height - 1), (height, width)).astype(np.float32)
    return map_x, map_y


def atmospheric_turbulence(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """`remap(x, map_x, map_y, INTER_LINEAR)` along the row-wise sine shear."""
    map_x, map_y = turbulence_maps(i, *x.shape[:2])
    return cv2.remap(x, map_x, map_y, cv2.INTER_LINEAR)


def gaussian_noise(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """trunc(clip(float32(x) + 75i n)), n the row's unit normal draws (3, H, W)."""
    noise = draws.gaussian_noise(gen, *x.shape[:2]).permute(1, 2, 0).numpy()
    noisy = x.astype(np.float32) + np.float32(75 * i) * noise
    return noisy.clip(0, 255).astype(np.uint8)


def color_diffusion(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """addWeighted(x, max(.1, 1-.9i), trunc(D), min(.9, .9i)): D = x filtered by i^2 times a
    Gaussian (k = 3 + 2 int(20i), sigma 50i); grey discs on D only for i > 0.9."""
    height, width = x.shape[:2]
    taps = _gaussian_taps(3 + 2 * int(20 * i), 50 * i) * i  # outer(taps, taps) = K * i^2
    discs = draws.diffusion_discs(gen, i, height, width)
    if len(discs):
        diffused = cv2.sepFilter2D(x, cv2.CV_32F, taps, taps, delta=BLUR_EPS)
        for cx, cy, radius, grey in discs.tolist():
            cv2.circle(diffused, (cx, cy), radius, (float(grey),) * 3, -1)
        diffused = diffused.astype(np.uint8)
    else:
        diffused = _blur_truncated(x, taps)
    return cv2.addWeighted(x, max(0.1, 1 - 0.9 * i), diffused, min(0.9, 0.9 * i), 0)


def sharpness_change(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """addWeighted(x, 0.7, filter2D(x, 80i * Laplacian sharpen), 0.3): about 0.7x + 76.5."""
    if i > 0:
        kernel = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float64) * (80 * i)
        sharpened = cv2.filter2D(x, -1, kernel)
    else:
        size = int(3 + 5 * abs(i)) | 1
        sharpened = cv2.GaussianBlur(x, (size, size), 0)
    return cv2.addWeighted(x, 0.7, sharpened, 0.3, 0)


def graffiti(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """int(10i) opaque random lines, then at i > 0.55 a red Hershey text stamp."""
    height, width = x.shape[:2]
    marks = draws.graffiti(gen, i, height, width)
    out = x.copy()
    for red, green, blue, x0, y0, x1, y1, thickness in marks.lines.tolist():
        cv2.line(out, (x0, y0), (x1, y1), (red, green, blue), thickness)
    if marks.stamp is not None:
        stamp = marks.stamp
        cv2.putText(
            out, stamp.text, (stamp.x, stamp.y), draws.TEXT_FONT, stamp.scale, TEXT_RGB, stamp.thickness
        )
    return out


def watermark_mask(i: float, gen: torch.Generator, height: int, width: int) -> np.ndarray:
    """The union of watermark_damage's rectangles as a 0/255 uint8 mask."""
    if height < 50 or width < 50:
        raise ValueError(f"watermark_damage needs sides >= 50 px, got {height}x{width}")
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in draws.watermark_rectangles(gen, i, height, width).tolist():
        cv2.rectangle(mask, (x0, y0), (x1, y1), 255, -1)
    return mask


def watermark_damage(x: np.ndarray, i: float, gen: torch.Generator) -> np.ndarray:
    """addWeighted(x, 1-i, Telea inpaint of the rectangles, i); at i > 0.5 the mask's Canny
    outline becomes trunc(0.8 out)."""
    mask = watermark_mask(i, gen, *x.shape[:2])
    restored = cv2.inpaint(x, mask, INPAINT_RADIUS, cv2.INPAINT_TELEA)
    out = cv2.addWeighted(x, 1 - i, restored, i, 0)
    if i > 0.5:
        edges = cv2.Canny(mask, 50, 150) > 0
        out[edges] = (out[edges] * 0.8).astype(np.uint8)
    return out
