"""Corruption work as picklable tasks, for the worker processes of `clear_rl.parallel`.

A task carries its images (or image cells), their draws and the engine's settings, so a worker
needs nothing from the parent's state, and the one-process path runs the same function on the
same task. This module imports only what the work needs, since every worker imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from clear_rl.degrade.engine import corrupt_images, default_device, resolve_backend
from clear_rl.degrade.registry import CORRUPTIONS
from clear_rl.io.images import decode_image, encode_base64_image, encode_jpeg

JPEG_QUALITY = 95  # the release re-encodes every image (fallbacks too) at OpenCV's default 95


@dataclass(frozen=True)
class EngineSettings:
    """The keyword arguments of `corrupt_images` besides the images and their draws. Every task
    carries one, so an engine option reaches the workers by becoming a field here."""

    batch_size: int = 16
    backend: str = "opencv"  # resolved: 'opencv' or 'torch' (see engine_settings)

    def kwargs(self) -> dict:
        return asdict(self)


def engine_settings(backend: str, batch_size: int, workers: int) -> tuple[EngineSettings, int]:
    """The settings every task of a run carries, and the run's worker count.

    `backend` is resolved here, once, so 'auto' means this machine's choice for every task and a
    manifest can name it. The torch backend on a GPU runs in this process alone: the GPU does
    the work, and worker processes would each start CUDA on the same device.
    """
    resolved = resolve_backend(backend, default_device(backend))
    if resolved == "torch" and default_device(resolved).type == "cuda":
        workers = 1
    return EngineSettings(batch_size=batch_size, backend=resolved), workers


@dataclass(frozen=True)
class CorruptTask:
    """Images to corrupt, each with its corruption, intensity and seed (None: kept clean)."""

    images: Sequence[Image.Image]
    names: Sequence[str | None]
    intensities: Sequence[float | None]
    seeds: Sequence[int]
    engine: EngineSettings = EngineSettings()


def run_corrupt_task(task: CorruptTask) -> list[Image.Image]:
    """The corrupted images of `task`, in order (RGB)."""
    return corrupt_images(task.images, task.names, task.intensities, task.seeds, **task.engine.kwargs())


def _encode_tsv_cell(image: Image.Image) -> str:
    return encode_base64_image(image, JPEG_QUALITY)


def _encode_dataset_cell(image: Image.Image) -> dict:
    return {"bytes": encode_jpeg(image, JPEG_QUALITY), "path": None}


# How an MMD-Bench copy stores its cells: VLMEvalKit TSV text, or a `datasets.Image` value.
ENCODERS: dict[str, Callable[[Image.Image], Any]] = {
    "base64": _encode_tsv_cell,
    "bytes": _encode_dataset_cell,
}


@dataclass(frozen=True)
class DegradeChunk:
    """A chunk of one MMD-Bench output: the rows' image cells as stored, where each comes from
    (for errors), their draws; the cells come back encoded, ready to write."""

    cells: Sequence[Any]
    wheres: Sequence[str]
    base_dir: str | os.PathLike | None  # where relative image paths are looked up
    names: Sequence[str]
    seeds: Sequence[int]
    intensity: float
    encoding: str  # a key of ENCODERS
    engine: EngineSettings = EngineSettings()


def degrade_chunk(task: DegradeChunk) -> tuple[list[Any], list[bool]]:
    """Decode, corrupt and encode a chunk: the whole of a row's work, JPEG included, so a worker
    does all of it. Returns the encoded cells and whether each corruption applied (False: the
    image is below its minimum size and kept clean, as the release does)."""
    clean = [decode_image(cell, where, task.base_dir) for cell, where in zip(task.cells, task.wheres)]
    out = corrupt_images(clean, task.names, task.intensity, task.seeds, **task.engine.kwargs())
    encode = ENCODERS[task.encoding]
    applied = [CORRUPTIONS[n].fits(task.intensity, im.height, im.width) for n, im in zip(task.names, clean)]
    return [encode(image) for image in out], applied
