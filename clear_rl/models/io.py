"""One folder holds a whole unified model: weights and config of every part, plus the processor.

A folder is either a full model (`config.json` with model_type `clear_composed`,
`model.safetensors`) or a peft adapter folder (`adapter_config.json`) whose
`base_model_name_or_path` is a full model folder. Both load with `load_unified`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from peft import PeftModel
from transformers import AutoProcessor, ProcessorMixin

from clear_rl.atomic import atomic_path
from clear_rl.errors import ClearRLError
from clear_rl.models.composed import ComposedUnifiedConfig, ComposedUnifiedModel


def save_unified(
    model: ComposedUnifiedModel | PeftModel, processor: ProcessorMixin, path: str | os.PathLike
) -> None:
    """Save model and processor into `path`, atomically (a crash leaves any previous save intact)."""
    with atomic_path(path, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def load_unified(
    path: str | os.PathLike, dtype="auto", is_trainable: bool = False
) -> tuple[ComposedUnifiedModel | PeftModel, ProcessorMixin]:
    """Load a unified model and its processor from a local folder (full model or LoRA adapters)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ClearRLError(f"model folder not found: {folder}")
    adapter_config = folder / "adapter_config.json"
    if adapter_config.exists():
        base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        base, _ = load_unified(base_path, dtype=dtype)
        model = PeftModel.from_pretrained(base, folder, is_trainable=is_trainable)
    else:
        config_file = folder / "config.json"
        if not config_file.exists():
            raise ClearRLError(f"{folder} holds no config.json: not a saved clear-rl model")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type != ComposedUnifiedConfig.model_type:
            raise ClearRLError(
                f"{folder} holds a '{model_type}' model, not a clear-rl unified model; "
                "compose one first (clear_rl.models.compose_from_pretrained)"
            )
        model = ComposedUnifiedModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    return model, processor
