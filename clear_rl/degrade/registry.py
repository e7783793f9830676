"""The 16 MMD-Bench corruptions, their categories, sampling weights and severity levels.

Registry order is the specification's order (Capture, Transmission, Environment,
Post-processing). The weights are the benchmark's: 400 in all, 100 per category, so each
category is drawn with probability 1/4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clear_rl.degrade import capture, environment, opencv_backend, postprocess, transmission
from clear_rl.errors import ClearRLError

CorruptionFn = Callable[[torch.Tensor, float, Sequence[torch.Generator]], torch.Tensor]
OpenCVFn = Callable[[np.ndarray, float, torch.Generator], np.ndarray]

LEVELS: dict[str, float] = {"low": 0.23, "mid": 0.45, "high": 0.9}


@dataclass(frozen=True)
class Corruption:
    """One corruption type.

    `function(u8_images, intensity, generators)` is the torch backend, batched on any device, on
    u8 floats (see ops.py); `opencv(image, intensity, generator)` the CPU backend, on one (H, W, 3)
    uint8 RGB array. Both draw from draws.py, so one seed gives one corruption in either.
    `random_above`: the output depends on the seed only for intensities above this value
    (None: never). `min_size(intensity) -> (min height, min width)`: smaller images come back
    unchanged, as the released generator falls back to the clean image.
    """

    name: str
    category: str
    function: CorruptionFn
    opencv: OpenCVFn
    weight: int
    random_above: float | None = None
    min_size: Callable[[float], tuple[int, int]] | None = None

    def is_random(self, intensity: float) -> bool:
        return self.random_above is not None and intensity > self.random_above

    def fits(self, intensity: float, height: int, width: int) -> bool:
        if self.min_size is None:
            return True
        min_h, min_w = self.min_size(intensity)
        return height >= min_h and width >= min_w


def _block_min(i: float) -> tuple[int, int]:
    size = transmission.block_size(i)
    return size, size


def _watermark_min(i: float) -> tuple[int, int]:
    return 50, 50


_TABLE = (
    Corruption("lens_blur", "capture", capture.lens_blur, opencv_backend.lens_blur, 20),
    Corruption("lens_flare", "capture", capture.lens_flare, opencv_backend.lens_flare, 20, random_above=0.0),
    Corruption(
        "motion_blur", "capture", capture.motion_blur, opencv_backend.motion_blur, 20, random_above=0.0
    ),
    Corruption("dirty_lens", "capture", capture.dirty_lens, opencv_backend.dirty_lens, 20, random_above=0.0),
    Corruption("hsv_saturation", "capture", capture.hsv_saturation, opencv_backend.hsv_saturation, 20),
    Corruption(
        "jpeg_compression", "transmission", transmission.jpeg_compression, opencv_backend.jpeg_compression, 25
    ),
    Corruption(
        "block_exchange",
        "transmission",
        transmission.block_exchange,
        opencv_backend.block_exchange,
        25,
        0.0,
        _block_min,
    ),
    Corruption("mean_shift", "transmission", transmission.mean_shift, opencv_backend.mean_shift, 25),
    Corruption("scan_lines", "transmission", transmission.scan_lines, opencv_backend.scan_lines, 25),
    Corruption(
        "dark_illumination",
        "environment",
        environment.dark_illumination,
        opencv_backend.dark_illumination,
        25,
    ),
    Corruption(
        "atmospheric_turbulence",
        "environment",
        environment.atmospheric_turbulence,
        opencv_backend.atmospheric_turbulence,
        25,
    ),
    Corruption(
        "gaussian_noise",
        "environment",
        environment.gaussian_noise,
        opencv_backend.gaussian_noise,
        25,
        random_above=0.0,
    ),
    Corruption(
        "color_diffusion",
        "environment",
        environment.color_diffusion,
        opencv_backend.color_diffusion,
        25,
        random_above=0.9,
    ),
    Corruption(
        "sharpness_change",
        "post_processing",
        postprocess.sharpness_change,
        opencv_backend.sharpness_change,
        33,
    ),
    Corruption(
        "graffiti", "post_processing", postprocess.graffiti, opencv_backend.graffiti, 33, random_above=0.0
    ),
    Corruption(
        "watermark_damage",
        "post_processing",
        postprocess.watermark_damage,
        opencv_backend.watermark_damage,
        34,
        0.0,
        _watermark_min,
    ),
)

CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in _TABLE}
CATEGORIES: dict[str, list[str]] = {}
for _c in _TABLE:
    CATEGORIES.setdefault(_c.category, []).append(_c.name)
TOTAL_WEIGHT = sum(c.weight for c in _TABLE)


def get_corruption(name: str) -> Corruption:
    """The registered corruption `name`; an unknown name lists the valid ones."""
    try:
        return CORRUPTIONS[name]
    except (KeyError, TypeError):
        raise ClearRLError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}") from None


def resolve_intensity(level: str | float) -> float:
    """'low'/'mid'/'high' -> 0.23/0.45/0.9; a number (or numeric string) in [0, 1] passes."""
    if isinstance(level, str):
        key = level.strip().lower()
        if key in LEVELS:
            return LEVELS[key]
        try:
            value = float(key)
        except ValueError:
            raise ClearRLError(
                f"unknown level {level!r}; use one of {', '.join(LEVELS)} or a number in [0, 1]"
            ) from None
    elif isinstance(level, bool) or not isinstance(level, (int, float)):
        raise ClearRLError(f"intensity must be a level name or a number in [0, 1], got {level!r}")
    else:
        value = float(level)
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ClearRLError(f"intensity must be in [0, 1], got {value}")
    return value


def choose_corruptions(seeds: Sequence[int]) -> list[str]:
    """The benchmark's weighted choice of one corruption per seed (deterministic per seed)."""
    names = list(CORRUPTIONS)
    bounds = torch.tensor([c.weight for c in _TABLE], dtype=torch.float64).cumsum(0) / TOTAL_WEIGHT
    chosen = []
    for seed in seeds:
        u = torch.rand((), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        chosen.append(names[min(int(torch.searchsorted(bounds, u, right=True)), len(names) - 1)])
    return chosen
