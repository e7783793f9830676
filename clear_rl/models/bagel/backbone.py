"""BAGEL's declaration in the backbone registry (models/registry.py); light: no torch until it loads.

An official-layout folder (BAGEL-7B-MoT, CLEAR's checkpoints) holds `llm_config.json`,
`vit_config.json`, `ema.safetensors` or `model.safetensors` and `ae.safetensors`. It loads under an
inference preset (presets.py), which says how its tags are written; an adapter folder trained on it
holds no processor (the base folder's tokenizer is its processor). Stage 0 (`align`) reads a VLM's own
vision path, which BAGEL's packed MoT does not expose: it is not offered.
"""

from __future__ import annotations

from pathlib import Path

from clear_rl.choices import PRESETS
from clear_rl.models.registry import BackboneSpec
from clear_rl.models.weights import WeightsError, safetensors_header

CONFIGS = ("llm_config.json", "vit_config.json")
WEIGHTS = ("ema.safetensors", "model.safetensors")  # models.bagel.config.WEIGHT_NAMES
AE = "ae.safetensors"
# How each preset writes the protocol tags (presets.py `BagelPreset.tags`; tests/test_bagel_presets.py
# checks they agree), here without importing torch.
PRESET_TAGS = dict.fromkeys(PRESETS, "text")  # both write the release's plain-text tags


def is_bagel_layout(folder: Path) -> bool:
    """Whether the folder claims BAGEL's official layout (its two JSON configs)."""
    return all((folder / name).is_file() for name in CONFIGS)


def check_bagel_folder(folder: Path) -> None:
    """An official-layout BAGEL folder's weights and VAE are present and whole."""
    weights = next((folder / name for name in WEIGHTS if (folder / name).exists()), None)
    if weights is None:
        raise WeightsError(
            f"{folder} holds BAGEL's configs but no weights: {' or '.join(WEIGHTS)} is missing"
        )
    safetensors_header(weights)
    if not (folder / AE).exists():
        raise WeightsError(f"{folder} holds BAGEL's configs but no {AE} (the VAE's weights)")
    safetensors_header(folder / AE)


def _missing(folder: Path) -> str:
    return f"it lacks {[name for name in CONFIGS if not (folder / name).is_file()]}"


def _load(folder: Path, dtype="auto", load_in_4bit: bool = False, preset=None, tags=None):
    from clear_rl.models.bagel.unified import load_bagel_unified

    return load_bagel_unified(
        folder, dtype=dtype, quantization="nf4" if load_in_4bit else None, preset=preset, tags=tags
    )


def _model_classes() -> tuple[type, ...]:
    from clear_rl.models.bagel.unified import BagelUnifiedModel

    return (BagelUnifiedModel,)


def _build_tiny(folder: str | Path, seed: int = 0) -> Path:
    from clear_rl.models.bagel.tiny import build_tiny_bagel

    build_tiny_bagel(folder, seed=seed)
    return Path(folder)


SPEC = BackboneSpec(  # registered by models/registry.py on its first look-up
    name="bagel",
    description="BAGEL-7B-MoT and CLEAR's checkpoints, in the official layout",
    detect=is_bagel_layout,
    check_folder=check_bagel_folder,
    load=_load,
    model_classes=_model_classes,
    build_tiny=_build_tiny,
    training_readbacks=("bridge",),
    training_stages=("sft", "bridge", "grpo"),
    presets=PRESETS,
    default_preset="clear-release",
    preset_tags=PRESET_TAGS,
    processor_from_base=True,
    missing=_missing,
)
