"""Which parts of a composed model train: named parts to freeze/unfreeze, and LoRA through peft.

Parts: `llm` (the language model and its head), `vit` (vision tower), `projector` (vision ->
LLM connector), `head` (restoration DiT), `bridge` (latent bridge), `vae`. Their module paths are
found on the wrapped VLM by identity, so the names work for LLaVA, Qwen2.5-VL, SmolVLM and
others without a per-architecture table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from clear_rl.errors import ClearRLError
from clear_rl.models.composed import ComposedUnifiedModel
from clear_rl.models.settings import LoraSettings, check_parts

_VISION_ATTRS = ("vision_tower", "visual", "vision_model")
_PROJECTOR_ATTRS = ("multi_modal_projector", "connector", "merger", "mm_projector")


def _path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((name for name, module in model.named_modules() if module is target), None)


def _find_attr(root: nn.Module, names: Iterable[str]) -> nn.Module | None:
    for holder in (root, getattr(root, "model", None)):
        for name in names:
            module = getattr(holder, name, None) if holder is not None else None
            if isinstance(module, nn.Module):
                return module
    return None


def part_paths(model: ComposedUnifiedModel) -> dict[str, list[str]]:
    """Module path prefixes of each named part inside `model`."""
    vlm = model.vlm
    decoder = vlm.get_decoder() if hasattr(vlm, "get_decoder") else None
    paths = {
        "llm": [_path_of(model, decoder), _path_of(model, vlm.get_output_embeddings())],
        "vit": [_path_of(model, _find_attr(vlm, _VISION_ATTRS))],
        "projector": [_path_of(model, _find_attr(vlm, _PROJECTOR_ATTRS))],
        "head": ["restoration_head"],
        "bridge": ["latent_bridge"],
        "vae": ["vae"],
    }
    return {part: [p for p in prefixes if p] for part, prefixes in paths.items()}


def set_trainable_parts(model: ComposedUnifiedModel, parts: Iterable[str]) -> None:
    """Freeze everything, then unfreeze the named parts."""
    parts = check_parts(parts)
    prefixes = part_paths(model)
    chosen = tuple(f"{p}." for part in parts for p in prefixes[part])
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(chosen))


def lora_target_pattern(model: ComposedUnifiedModel, settings: LoraSettings) -> str:
    """A regex over module names selecting the LLM's and the head's target layers."""
    alternatives = []
    llm_prefixes = part_paths(model)["llm"][:1]
    if settings.llm_target_modules and llm_prefixes:
        names = "|".join(re.escape(m) for m in settings.llm_target_modules)
        alternatives.append(rf"{re.escape(llm_prefixes[0])}\..*\.(?:{names})")
    if settings.head_target_modules:
        names = "|".join(re.escape(m) for m in settings.head_target_modules)
        alternatives.append(rf"restoration_head\..*\.(?:{names})")
    if not alternatives:
        raise ClearRLError("LoRA needs at least one of llm_target_modules / head_target_modules")
    return "^(?:" + "|".join(alternatives) + ")$"


def protocol_token_rows(model: ComposedUnifiedModel) -> dict[str, list[int]]:
    """peft `trainable_token_indices`: the protocol tokens' rows of the input and (untied) output embeddings."""
    ids = sorted(set(vars(model.token_ids).values()))
    rows = {_path_of(model, model.get_input_embeddings()): ids}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        rows[_path_of(model, output)] = ids
    return {path: ids for path, ids in rows.items() if path}


def apply_lora(model: ComposedUnifiedModel, settings: LoraSettings | None = None) -> PeftModel:
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
