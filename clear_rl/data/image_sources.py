"""Images without questions, for the bridge alignment stage (`stage: align`).

Alignment needs only images, so a user can align the bridge of any VLM + VAE pair on what they
have: a folder of image files (searched recursively), a `save_to_disk` dataset (a prepared one
from `clear-rl prepare` or any with an image column), or a VLMEvalKit TSV. Cells are decoded
lazily by the collator; nothing is written anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from clear_rl.errors import DataError
from clear_rl.io.images import decode_image
from clear_rl.io.tsv import read_tsv, resolve_image_cells
from clear_rl.models.processing import vae_pixel_values
from clear_rl.models.vision import image_inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Tried in order when a recipe names no column: a prepared dataset's clean view first.
DEFAULT_IMAGE_COLUMNS = ("clean_image", "image")
IMAGE_COLUMN = "image"  # what `load_image_dataset` returns its images under


def _from_dataset_folder(path: Path, split: str, column: str | None) -> datasets.Dataset:
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path} has no split '{split}'; it has {list(loaded)}")
        loaded = loaded[split]
    candidates = (column,) if column else DEFAULT_IMAGE_COLUMNS
    found = [c for c in candidates if c in loaded.column_names]
    if not found:
        raise DataError(f"{path} has no image column {list(candidates)}; it has {loaded.column_names}")
    # Undecoded cells: decoding happens per batch in the collator.
    images = loaded.select_columns([found[0]]).cast_column(found[0], datasets.Image(decode=False))
    return images.rename_column(found[0], IMAGE_COLUMN) if found[0] != IMAGE_COLUMN else images


def load_image_dataset(
    path: str, split: str = "train", column: str | None = None, max_samples: int | None = None
) -> datasets.Dataset:
    """A dataset with one `image` column of undecoded cells, from a folder, a dataset or a TSV."""
    source = Path(path)
    if source.is_file() and source.suffix.lower() == ".tsv":
        frame = read_tsv(source, required=("index", "image"))
        images = datasets.Dataset.from_dict({IMAGE_COLUMN: resolve_image_cells(frame)})
    elif source.is_dir() and any((source / name).exists() for name in ("dataset_dict.json", "state.json")):
        images = _from_dataset_folder(source, split, column)
    elif source.is_dir():
        files = sorted(str(f) for f in source.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{source} holds no image files ({', '.join(IMAGE_SUFFIXES)}) and is no dataset")
        images = datasets.Dataset.from_dict({IMAGE_COLUMN: files})
    else:
        raise DataError(f"image source not found: {path} (a folder of images, a dataset folder or a .tsv)")
    if max_samples is not None:
        images = images.select(range(min(max_samples, len(images))))
    return images


@dataclass
class AlignCollator:
    """Image cells -> the VLM image processor's tensors and the VAE's view of the same images."""

    processor: Any
    vae_image_size: int

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        images = []
        for i, row in enumerate(rows):
            try:
                images.append(decode_image(row[IMAGE_COLUMN]))
            except DataError as exc:
                raise DataError(f"image row {i} of the batch cannot be decoded: {exc}") from None
        return {
            **image_inputs(self.processor, images),
            "vae_pixel_values": vae_pixel_values(images, self.vae_image_size),
        }
