"""Corruption work as picklable tasks, for the worker processes of `clear_rl.parallel`.

A task carries its images, their draws and the engine's settings, so a worker needs nothing
from the parent's state, and the one-process path runs the same function on the same task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from PIL import Image

from clear_rl.degrade.engine import corrupt_images


@dataclass(frozen=True)
class EngineSettings:
    """The keyword arguments of `corrupt_images` besides the images and their draws. Every task
    carries one, so an engine option reaches the workers by becoming a field here."""

    batch_size: int = 16

    def kwargs(self) -> dict:
        return asdict(self)


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
