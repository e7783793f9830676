"""The composed model's named parts, found on the wrapped VLM by identity (LLaVA, Qwen2.5-VL, SmolVLM, ...).

`llm` (the VLM's decoder and head), `vit`, `projector`, `head` (the DiT), `bridge`, `vae`; LoRA looks
for the LLM's layers in its decoder and the restoration branch's in the head (models/parts.py).
"""

from __future__ import annotations

import re

from clear_rl.models.parts import find_attr, path_of

_VISION_ATTRS = ("vision_tower", "visual", "vision_model")
_PROJECTOR_ATTRS = ("multi_modal_projector", "connector", "merger", "mm_projector")


def composed_part_paths(model) -> dict[str, list[str]]:
    """Module path prefixes of each named part inside a composed model."""
    vlm = model.vlm
    decoder = vlm.get_decoder() if hasattr(vlm, "get_decoder") else None
    paths = {
        "llm": [path_of(model, decoder), path_of(model, vlm.get_output_embeddings())],
        "vit": [path_of(model, find_attr(vlm, _VISION_ATTRS))],
        "projector": [path_of(model, find_attr(vlm, _PROJECTOR_ATTRS))],
        "head": ["restoration_head"],
        "bridge": ["latent_bridge"],
        "vae": ["vae"],
    }
    return {part: [p for p in prefixes if p] for part, prefixes in paths.items()}


def composed_part_patterns(model) -> dict[str, list[str]]:
    return {part: [re.escape(p) + r"\." for p in paths] for part, paths in composed_part_paths(model).items()}


def composed_lora_scopes(model) -> dict[str, str]:
    llm = composed_part_paths(model)["llm"][:1]
    return {**({"llm": re.escape(llm[0])} if llm else {}), "head": "restoration_head"}
