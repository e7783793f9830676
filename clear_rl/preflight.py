"""What a recipe points at, checked before any work starts: model folders and the dataset.

`load_recipe` checks the recipe's keys and types; these checks read the file system only (a
saved dataset's splits and columns come from its JSON files, `data/disk.py`), so a missing
folder, split or column is refused in milliseconds, not after a model has loaded. Nothing
heavy is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clear_rl.data.disk import check_saved_split, is_saved_dataset
from clear_rl.data.samples import GRPO_COLUMNS, PREPARED_COLUMNS
from clear_rl.errors import DataError, RecipeError

if TYPE_CHECKING:
    from clear_rl.recipe import ModelConfig, Recipe


def check_inputs(recipe: Recipe) -> None:
    """Raise a RecipeError or DataError naming the recipe file and key of the first input that
    is missing or unusable."""
    where = str(recipe.source) if recipe.source is not None else "recipe"
    check_model_folders(recipe.model, where)
    data = recipe.data
    splits = [data.split] + ([data.eval_split] if data.eval_split else [])
    source = Path(data.path)
    try:
        if recipe.stage == "align":  # any images: a folder of files, a saved dataset or a TSV
            if not source.exists():
                raise DataError(
                    f"image source not found: {source} (a folder of images, a dataset folder or a .tsv)"
                )
            if is_saved_dataset(source):
                for split in splits:
                    check_saved_split(source, split)
            return
        required = GRPO_COLUMNS if recipe.stage == "grpo" else PREPARED_COLUMNS
        for split in splits:
            check_saved_split(source, split, required)
    except DataError as exc:
        raise DataError(f"{where}: data.path: {exc}") from None


def check_model_folders(model: ModelConfig, where: str) -> None:
    """The `model:` section's folders exist and hold a model (clear-rl loads local folders only)."""
    if model.path is not None:
        folder = Path(model.path)
        if not folder.is_dir():
            raise RecipeError(f"{where}: model.path: model folder not found: {folder}")
        if not any((folder / name).is_file() for name in ("config.json", "adapter_config.json")):
            from clear_rl.models.bagel.unified import is_bagel_folder

            if not is_bagel_folder(folder):
                raise RecipeError(
                    f"{where}: model.path: {folder} holds no config.json or adapter_config.json, nor "
                    "BAGEL's official layout: not a model saved by clear-rl"
                )
    for key, value, subfolder in (
        ("vlm_path", model.vlm_path, None),
        ("vae_path", model.vae_path, model.vae_subfolder),
    ):
        if value is None:
            continue
        folder = Path(value, subfolder or "")
        if not folder.is_dir():
            raise RecipeError(
                f"{where}: model.{key}: folder not found: {folder} (clear-rl loads local folders only)"
            )
        if not (folder / "config.json").is_file():
            raise RecipeError(f"{where}: model.{key}: {folder} holds no config.json")
