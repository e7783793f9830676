"""Applying corruptions to batches: seeds, intensities, grouping, fall-backs, backends.

Float images (B, 3, H, W) in [0, 1] go in and come out, on their own device; internally the
values are the reference's uint8 levels, so outputs are multiples of 1/255. Row r's draws
come from a generator seeded with seeds[r] alone: a row's result never depends on the rest
of the batch.

Two backends compute the same corruptions from the same draws: `opencv` (the released
generator's OpenCV calls, one image at a time on the CPU: the fast and exact choice there)
and `torch` (batched tensors on any device: the choice for GPU batches). `auto` takes torch
for CUDA tensors and OpenCV otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clear_rl.degrade.ops import from_u8, to_u8
from clear_rl.degrade.registry import get_corruption, resolve_intensity
from clear_rl.degrade.rng import generators
from clear_rl.errors import ClearRLError
from clear_rl.io.images import pil_to_tensor, tensor_to_pil

logger = logging.getLogger("clear_rl.degrade")

# On CPU a batch runs in chunks of about this many pixels. The corruptions are memory-bound
# there, and a chunk whose working set stays in cache ran 2-5x faster per image than one pass
# over 16 images at 512x512 (measured on the 2-core dev machine). Rows are independent, so
# chunking never changes a result. Accelerators take the whole batch at once.
CPU_CHUNK_PIXELS = 512 * 512
BACKENDS = ("auto", "opencv", "torch")


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """'auto' -> 'torch' for a CUDA device, 'opencv' otherwise; 'opencv' and 'torch' pass."""
    if backend not in BACKENDS:
        raise ClearRLError(f"unknown corruption backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "torch" if device is not None and torch.device(device).type == "cuda" else "opencv"


def default_device(backend: str) -> torch.device:
    """Where a run without a device of its own (PIL images, files) corrupts: the GPU for
    'auto' and 'torch' when one is present, else the CPU."""
    if backend != "opencv" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _row_seeds(seeds: int | Sequence[int], batch: int) -> list[int]:
    if isinstance(seeds, int):
        return [seeds] * batch
    seeds = [int(s) for s in seeds]
    if len(seeds) != batch:
        raise ClearRLError(f"got {len(seeds)} seeds for a batch of {batch} images; pass one per row")
    return seeds


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ClearRLError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ClearRLError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    return images


def _fits_or_warn(corruption, value: float, height: int, width: int) -> bool:
    """Whether the image is large enough; if not, log it (it comes back clean, as in the release)."""
    if corruption.fits(value, height, width):
        return True
    min_h, min_w = corruption.min_size(value)
    logger.warning(
        "%s at intensity %s needs images of at least %dx%d px, got %dx%d: returned unchanged",
        corruption.name,
        value,
        min_w,
        min_h,
        width,
        height,
    )
    return False


def _corrupt_opencv(u8: torch.Tensor, corruption, value: float, gens) -> torch.Tensor:
    """The OpenCV backend on a (B, 3, H, W) uint8 batch: row by row on the CPU."""
    arrays = u8.permute(0, 2, 3, 1).cpu().numpy()
    out = [corruption.opencv(np.ascontiguousarray(array), value, gen) for array, gen in zip(arrays, gens)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(u8.device)


def corrupt(
    images: torch.Tensor,
    name: str,
    intensity: str | float,
    seeds: int | Sequence[int] = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Apply corruption `name` at `intensity` (a level name or a number in [0, 1]) to a batch.

    images: (B, 3, H, W) float in [0, 1] (or uint8 0..255, returned as uint8), (3, H, W) too.
    seeds: one int per row, or one int for every row.
    backend: 'auto' (torch for CUDA tensors, OpenCV otherwise), 'opencv' or 'torch'; both give
    the same corruption for the same seed, the result stays on the input's device.
    """
    corruption = get_corruption(name)
    value = resolve_intensity(intensity)
    single = isinstance(images, torch.Tensor) and images.dim() == 3
    batch = _as_batch(images.unsqueeze(0) if single else images)
    backend = resolve_backend(backend, batch.device)
    is_uint8 = batch.dtype == torch.uint8
    row_seeds = _row_seeds(seeds, batch.shape[0])
    height, width = batch.shape[-2:]
    if batch.shape[0] == 0:
        return images.clone()
    if not _fits_or_warn(corruption, value, height, width):
        return images.clone()
    gens = generators(row_seeds)
    if backend == "opencv":
        u8 = batch if is_uint8 else to_u8(batch).to(torch.uint8)
        out = _corrupt_opencv(u8, corruption, value, gens)
        result = out if is_uint8 else from_u8(out.float()).to(batch.dtype)
        return result[0] if single else result
    rows = max(1, CPU_CHUNK_PIXELS // (height * width)) if batch.device.type == "cpu" else batch.shape[0]
    parts = []
    for start in range(0, batch.shape[0], rows):
        chunk = batch[start : start + rows]
        u8 = chunk.float() if is_uint8 else to_u8(chunk)
        parts.append(corruption.function(u8, value, gens[start : start + rows]))
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    result = out.to(torch.uint8) if is_uint8 else from_u8(out).to(batch.dtype)
    return result[0] if single else result


def corrupt_rows(
    images: torch.Tensor,
    names: Sequence[str],
    intensities: str | float | Sequence[str | float],
    seeds: Sequence[int],
    backend: str = "auto",
) -> torch.Tensor:
    """Apply a different corruption and intensity to each row (rows grouped internally)."""
    batch = _as_batch(images)
    count = batch.shape[0]
    if isinstance(intensities, (str, int, float)):
        intensities = [intensities] * count
    if len(names) != count or len(intensities) != count:
        raise ClearRLError(
            f"corrupt_rows needs one name and one intensity per row: {count} rows, "
            f"{len(names)} names, {len(intensities)} intensities"
        )
    row_seeds = _row_seeds(seeds, count)
    groups: dict[tuple[str, float], list[int]] = {}
    for row, (name, level) in enumerate(zip(names, intensities)):
        get_corruption(name)
        groups.setdefault((name, resolve_intensity(level)), []).append(row)
    out = batch.clone()
    for (name, value), rows in groups.items():
        index = torch.tensor(rows, device=batch.device)
        out[index] = corrupt(batch[index], name, value, [row_seeds[r] for r in rows], backend)
    return out


def _corrupt_pil_opencv(image: Image.Image, name: str, value: float, seed: int) -> Image.Image:
    """One PIL image through the OpenCV backend, with no tensor round trip."""
    corruption = get_corruption(name)
    array = np.asarray(image.convert("RGB"))
    if not _fits_or_warn(corruption, value, *array.shape[:2]):
        return image.convert("RGB")
    return Image.fromarray(corruption.opencv(array, value, generators([seed])[0]))


def corrupt_pil(
    image: Image.Image, name: str, level: str | float = "high", seed: int = 0, backend: str = "auto"
) -> Image.Image:
    """Corrupt one PIL image (any mode; the result is RGB)."""
    backend = resolve_backend(backend, default_device(backend))
    if backend == "opencv":
        return _corrupt_pil_opencv(image, name, resolve_intensity(level), int(seed))
    batch = pil_to_tensor(image).unsqueeze(0).to(default_device(backend))
    return tensor_to_pil(corrupt(batch, name, level, seed, backend)[0].cpu())


def corrupt_images(
    images: Sequence[Image.Image],
    names: Sequence[str | None],
    intensity: str | float | Sequence[str | float | None],
    seeds: Sequence[int],
    batch_size: int = 16,
    backend: str = "auto",
) -> list[Image.Image]:
    """Corrupt PIL images of any sizes, each with its own corruption, intensity and seed (for
    data builders and benchmark files). A row whose name or intensity is None stays clean.
    Returns RGB images in order.

    The OpenCV backend ('auto' without a GPU) takes one image at a time; the torch backend
    batches same-size images, on the GPU when one is present."""
    count = len(images)
    levels = [intensity] * count if isinstance(intensity, (str, int, float)) else list(intensity)
    if not (count == len(names) == len(seeds) == len(levels)):
        raise ClearRLError(
            f"need one name, intensity and seed per image: {count} images, {len(names)} names, "
            f"{len(levels)} intensities, {len(seeds)} seeds"
        )
    backend = resolve_backend(backend, default_device(backend))
    if backend == "opencv":
        return [
            image.convert("RGB")
            if name is None or level is None
            else _corrupt_pil_opencv(image, name, resolve_intensity(level), int(seed))
            for image, name, level, seed in zip(images, names, levels, seeds)
        ]
    device = default_device(backend)
    out: list[Image.Image] = [image.convert("RGB") for image in images]
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        if names[position] is not None and levels[position] is not None:
            by_size.setdefault(image.size, []).append(position)
    for positions in by_size.values():
        for start in range(0, len(positions), max(1, batch_size)):
            chunk = positions[start : start + max(1, batch_size)]
            batch = torch.stack([pil_to_tensor(images[p]) for p in chunk]).to(device)
            result = corrupt_rows(
                batch,
                [names[p] for p in chunk],
                [levels[p] for p in chunk],
                [seeds[p] for p in chunk],
                backend,
            ).cpu()
            for p, tensor in zip(chunk, result):
                out[p] = tensor_to_pil(tensor)
    return out
