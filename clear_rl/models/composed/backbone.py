"""The composed backbone's declaration in the backbone registry (models/registry.py); light: no torch.

A saved composed model is `config.json` (model_type `clear_composed`) + `model.safetensors` (or a
sharded index) whose keys all start with one of its parts. It writes the protocol tags as single
tokens, has no presets and runs every stage, stage 0 (`align`) included.
"""

from __future__ import annotations

from pathlib import Path

from clear_rl.models.registry import BackboneSpec
from clear_rl.models.weights import WeightsError, read_json, safetensors_header

COMPOSED_MODEL_TYPE = "clear_composed"  # ComposedUnifiedConfig.model_type (importing it loads torch)
# The parts of a composed model (ComposedUnifiedModel's attributes): every weight key starts with one.
COMPOSED_PARTS = ("vlm", "vae", "restoration_head", "latent_bridge")


def is_composed_layout(folder: Path) -> bool:
    """Whether the folder claims a Hugging Face layout (`config.json`): checked for clear-rl's by
    `check_composed_folder`."""
    return (folder / "config.json").is_file()


def check_composed_folder(folder: Path) -> None:
    """A composed model folder's config is clear-rl's and its weights are whole and its own."""
    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type != COMPOSED_MODEL_TYPE:
        raise WeightsError(
            f"{folder} holds a '{model_type}' model, not a clear-rl unified model; compose one first "
            "(model.vlm_path + model.vae_path in a recipe, or clear_rl.models.compose_from_pretrained)"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        files = [folder / name for name in shards]
        if not files:
            raise WeightsError(f"{index} lists no weights files")
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    else:
        raise WeightsError(
            f"{folder} holds config.json but no model.safetensors: the model's weights are missing"
        )
    names: list[str] = []
    for file in files:
        header = safetensors_header(file)
        foreign = sorted(k for k in header if k.split(".", 1)[0] not in COMPOSED_PARTS)
        if foreign:
            raise WeightsError(
                f"{file} holds weights of another model (keys such as {foreign[:3]}), not a clear-rl "
                f"composed model's ({', '.join(p + '.*' for p in COMPOSED_PARTS)})"
            )
        names.extend(header)
    parts = {k.split(".", 1)[0] for k in names}
    if "vlm" not in parts:
        raise WeightsError(f"{files[0]} holds no weights of the model's VLM (vlm.*): not a complete save")


def _load(folder: Path, dtype="auto", load_in_4bit: bool = False, preset=None, tags=None):
    from clear_rl.models.composed.io import load_composed

    return load_composed(folder, dtype=dtype, load_in_4bit=load_in_4bit, preset=preset, tags=tags)


def _model_classes() -> tuple[type, ...]:
    from clear_rl.models.composed.modeling import ComposedUnifiedModel

    return (ComposedUnifiedModel,)


def _build_tiny(folder: str | Path, seed: int = 0) -> Path:
    from clear_rl.models.io import save_unified
    from clear_rl.models.tiny import TinyModelConfig, build_tiny_model

    model, processor = build_tiny_model(TinyModelConfig(), seed=seed)
    save_unified(model, processor, folder)
    return Path(folder)


SPEC = BackboneSpec(  # registered by models/registry.py on its first look-up
    name="composed",
    description="a Hugging Face VLM + a diffusers VAE + a DiT restoration head + the latent bridge",
    detect=is_composed_layout,
    check_folder=check_composed_folder,
    load=_load,
    model_classes=_model_classes,
    build_tiny=_build_tiny,
    training_readbacks=("bridge", "reencode"),  # reencode replays the rollout's restored_embeds
    training_stages=("align", "sft", "bridge", "grpo"),
    detect_order=100,  # any config.json: recognised after every more specific layout
    missing=lambda folder: "it holds no config.json",
)
