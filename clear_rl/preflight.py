"""What a recipe points at, checked before any work starts and before anything is written:
model folders and their weights, the dataset, the reward plugins and the output folder.

`load_recipe` checks the recipe's keys and types; these checks read the file system only (a
saved dataset's splits and columns come from its JSON files, `data/disk.py`; weights from their
safetensors headers, `models/weights.py`; the output folder from its run records, `runs.py`),
so a missing folder, split, column or weights file is refused in milliseconds, not after a model
has loaded. Nothing heavy is imported here, except what a reward plugin itself imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clear_rl.data.disk import check_saved_split, is_saved_dataset
from clear_rl.data.samples import GRPO_COLUMNS, PREPARED_COLUMNS
from clear_rl.errors import DataError, RecipeError, RewardError
from clear_rl.models.weights import WeightsError, check_model_folder, check_pretrained_folder

if TYPE_CHECKING:
    from clear_rl.recipe import ModelConfig, Recipe


def check_inputs(recipe: Recipe) -> None:
    """Raise a RecipeError, DataError or RewardError naming the recipe file and key of the first
    input that is missing or unusable, or the output folder the run must not write into
    (`runs.RunFinished` when `resume_from_checkpoint: last` finds the run finished)."""
    from clear_rl.runs import check_output_dir

    where = str(recipe.source) if recipe.source is not None else "recipe"
    check_model_folders(recipe.model, where)
    check_data(recipe, where)
    check_output_dir(recipe, where)
    if recipe.rewards:  # imported, parameters bound and dry-run: before TRL, before any write
        from clear_rl.rewards import load_rewards

        try:
            load_rewards(recipe.rewards)
        except RewardError as exc:
            raise RewardError(f"{where}: {exc}") from None


def check_data(recipe: Recipe, where: str) -> None:
    """The stage's data: its source exists, with the splits and columns the stage reads."""
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
    """The `model:` section's folders exist and hold a model with whole weights (clear-rl loads
    local folders only)."""
    found = None
    if model.path is not None:
        try:
            found = check_model_folder(model.path, model.backbone)
        except WeightsError as exc:
            raise RecipeError(f"{where}: model.path: {exc}") from None
    if model.load_in_4bit and model.lora is None and found != "adapters":  # adapters keep training
        raise RecipeError(f"{where}: model.load_in_4bit trains only through LoRA: add a model.lora section")
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
        try:
            check_pretrained_folder(folder)
        except WeightsError as exc:
            raise RecipeError(f"{where}: model.{key}: {exc}") from None
