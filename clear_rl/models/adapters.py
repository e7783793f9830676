"""Which parts of a unified model train: named parts to freeze/unfreeze, and LoRA through peft.

Parts: `llm` (the language model and its head), `vit` (vision tower), `projector` (vision ->
LLM connector), `head` (the restoration branch), `bridge` (latent bridge), `vae`. Each backbone
says which of its modules a name covers (`part_patterns`, `lora_scopes`; see models/parts.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from peft import LoraConfig, PeftModel, get_peft_model

from clear_rl.errors import ClearRLError
from clear_rl.models.backbone import TrainableBackbone
from clear_rl.models.parts import path_of
from clear_rl.models.settings import LoraSettings, check_parts


def set_trainable_parts(model: TrainableBackbone, parts: Iterable[str]) -> None:
    """Freeze everything, then unfreeze the named parts."""
    parts = check_parts(parts)
    patterns = model.part_patterns()
    chosen = [re.compile(p) for part in parts for p in patterns[part]]
    for name, param in model.named_parameters():
        param.requires_grad_(any(p.match(name) for p in chosen))


def lora_target_pattern(model: TrainableBackbone, settings: LoraSettings) -> str:
    """A regex over module names selecting the LLM's and the head's target layers."""
    alternatives = []
    scopes = model.lora_scopes()
    if settings.llm_target_modules and "llm" in scopes:
        names = "|".join(re.escape(m) for m in settings.llm_target_modules)
        alternatives.append(rf"{scopes['llm']}\..*\.(?:{names})")
    if settings.head_target_modules:
        names = "|".join(re.escape(m) for m in settings.head_target_modules)
        alternatives.append(rf"{scopes['head']}\..*\.(?:{names})")
    if not alternatives:
        raise ClearRLError("LoRA needs at least one of llm_target_modules / head_target_modules")
    return "^(?:" + "|".join(alternatives) + ")$"


def protocol_token_rows(model: TrainableBackbone) -> dict[str, list[int]]:
    """peft `trainable_token_indices`: the protocol tokens' rows of the input and (untied) output embeddings."""
    ids = sorted({i for i in vars(model.token_ids).values() if i is not None})  # tags as text have none
    rows = {path_of(model, model.get_input_embeddings()): ids}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        rows[path_of(model, output)] = ids
    return {path: ids for path, ids in rows.items() if path}


def apply_lora(model: TrainableBackbone, settings: LoraSettings | None = None) -> PeftModel:
    """Wrap the model with LoRA adapters; only adapter (and `modules_to_save`, token-row) weights train."""
    settings = settings or LoraSettings()
    config = LoraConfig(
        trainable_token_indices=protocol_token_rows(model) if settings.train_protocol_tokens else None,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_pattern(model, settings),
        modules_to_save=settings.modules_to_save or None,
    )
    return get_peft_model(model, config)
