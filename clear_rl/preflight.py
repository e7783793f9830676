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
    backbone = check_model_folders(recipe.model, where)
    if backbone is not None:
        check_backbone_stage(recipe, backbone, where)
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


def check_backbone_stage(recipe: Recipe, backbone: str, where: str) -> None:
    """The model's backbone runs this stage (its registry declaration's `training_stages`)."""
    from clear_rl.models import registry

    stages = registry.get(backbone).training_stages
    if recipe.stage not in stages:
        raise RecipeError(
            f"{where}: model.path {recipe.model.path} holds a {backbone} model, which trains in the stages "
            f"{list(stages)}, not {recipe.stage}"
        )


def check_tags(model: ModelConfig, backbone: str, where: str) -> None:
    """clear-rl trains the single-token tags only: a model whose tags are text (a folder recording none,
    under a preset whose tags are text: CLEAR's BAGEL checkpoints) is refused."""
    from clear_rl.models import registry
    from clear_rl.models.chat import saved_tags
    from clear_rl.models.settings import text_tags_training_error

    spec = registry.get(backbone)
    if not spec.presets:  # single tokens, always
        return
    folder = Path(model.path)
    tags, source = model.tags, "model.tags"
    if tags is None:
        tags, source = saved_tags(folder)
    if tags is None:
        preset = model.preset or spec.default_preset
        tags, source = (
            spec.tags_of_preset(preset),
            f"no clear_rl_recipe.yaml records it; preset {preset}'s tags",
        )
    if tags == "text":
        raise RecipeError(text_tags_training_error(f"{where}: model.path {folder}", source))


def model_backbone(model: ModelConfig, found: str) -> str:
    """The backbone of the model `model.path` loads (an adapter folder's: its base's)."""
    from clear_rl.models.chat import adapter_base
    from clear_rl.models.weights import ADAPTERS

    if found != ADAPTERS:
        return found
    return check_model_folder(adapter_base(Path(model.path)), model.backbone)


def check_model_folders(model: ModelConfig, where: str) -> str | None:
    """The `model:` section's folders exist and hold a model with whole weights (clear-rl loads
    local folders only); returns the backbone `model.path` holds (None: the model is built)."""
    found = backbone = None
    if model.path is not None:
        try:
            found = check_model_folder(model.path, model.backbone)
        except WeightsError as exc:
            raise RecipeError(f"{where}: model.path: {exc}") from None
    if model.path is not None:
        backbone = model_backbone(model, found)
        check_tags(model, backbone, where)
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
    return backbone
