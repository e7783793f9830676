"""One folder holds a whole unified model: weights and config of every part, plus the processor.

A folder is either a full model of a registered backbone (models/registry.py: a clear-rl composed
model, `config.json` with model_type `clear_composed` + `model.safetensors`; an official-layout BAGEL /
CLEAR folder, `llm_config.json`, `vit_config.json`, `ema.safetensors` or `model.safetensors`,
`ae.safetensors`; or yours), or a peft adapter folder (`adapter_config.json`) whose
`base_model_name_or_path` is a full model folder. `backbone="auto"` recognises the folder's backbone;
`load_unified` asks that backbone's declaration to load it, and reads the chat the model was trained
with (the system prompt in the `clear_rl_recipe.yaml` its training stage saved beside it, see
`models.chat`) into `model.clear_rl_chat`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from peft import PeftModel
from transformers import AutoProcessor, ProcessorMixin

from clear_rl.io.atomic import atomic_path
from clear_rl.models import registry
from clear_rl.models.chat import ATTRIBUTE, chat_settings_of, saved_chat_settings, saved_tags
from clear_rl.models.weights import ADAPTERS, check_model_folder


def save_unified(model, processor: ProcessorMixin, path: str | os.PathLike) -> None:
    """Save model and processor into `path`, atomically (a crash leaves any previous save intact)."""
    with atomic_path(path, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether `path` holds a whole model `load_unified` reads (not adapters): a registered
    backbone's layout."""
    return registry.detect(path) is not None


def load_unified(
    path: str | os.PathLike,
    dtype="auto",
    is_trainable: bool = False,
    backbone: str = "auto",
    load_in_4bit: bool = False,
    preset: str | None = None,
    tags: str | None = None,
) -> tuple[object, ProcessorMixin]:
    """Load a unified model and its processor from a local folder (full model of any registered
    backbone, or LoRA adapters on one); `model.clear_rl_chat` holds the system prompt and chat
    settings it was trained with. `backbone` ("auto" or a registered name: `composed`, `bagel`, ...)
    forces how the folder is read; `load_in_4bit` loads the base's transformer Linears in NF4 (CUDA,
    bitsandbytes): BAGEL's, or a composed model's VLM (its vision side, VAE, head and bridge stay
    whole); a folder saved 4-bit loads 4-bit either way. `preset` names the inference preset of a
    backbone that has them (BAGEL's: models/bagel/presets.py; None: its default); `tags` ("text" or
    "tokens") how such a model writes the protocol tags (None: what the folder records, else the
    preset's; a composed model speaks tokens)."""
    folder = Path(path)
    found = check_model_folder(folder, registry.check_backbone(backbone))  # missing, cut short, foreign
    if found != ADAPTERS:
        return registry.get(found).load(
            folder, dtype=dtype, load_in_4bit=load_in_4bit, preset=preset, tags=tags
        )
    base_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    base, base_processor = load_unified(
        base_path,
        dtype=dtype,
        backbone=backbone,
        load_in_4bit=load_in_4bit,
        preset=preset,
        tags=tags or saved_tags(folder)[0],
    )
    model = PeftModel.from_pretrained(base, folder, is_trainable=is_trainable)
    if registry.spec_of(base).processor_from_base:  # BAGEL's: its base folder's (the tokenizer alone)
        setattr(model, ATTRIBUTE, saved_chat_settings(folder, chat_settings_of(base)))
        return model, base_processor
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    setattr(model, ATTRIBUTE, saved_chat_settings(folder))
    return model, processor
