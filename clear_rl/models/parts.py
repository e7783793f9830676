"""The named trainable parts of each backbone, as patterns over its parameter and module names.

`model.trainable_parts` and LoRA's target selection speak in part names (settings.PARTS); each
backbone says which of its modules a name covers (`part_patterns`: regexes matched at the start
of a name) and where LoRA looks for the LLM's and the restoration branch's layers (`lora_scopes`).

- composed: `llm` (the VLM's decoder and head), `vit`, `projector`, `head` (the DiT), `bridge`,
  `vae`, found on the wrapped VLM by identity (LLaVA, Qwen2.5-VL, SmolVLM, ... alike);
- bagel: `llm` is the understanding expert (every `language_model` weight without `_moe_gen`, the
  embeddings, head and final norm among them), `head` the generation expert (the `_moe_gen` twins,
  `llm2vae`, `time_embedder`: the restoration branch), `bridge` `vae2llm` (latents into the LLM;
  the restoration branch reads its noised latent through it too), `projector` the connector, `vit`
  SigLIP. Its VAE sits outside the module tree and never trains. Both experts live in the LLM, so
  LoRA finds the restoration branch's layers there: name the `_moe_gen` twins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

_VISION_ATTRS = ("vision_tower", "visual", "vision_model")
_PROJECTOR_ATTRS = ("multi_modal_projector", "connector", "merger", "mm_projector")

BAGEL_PART_PATTERNS = {
    "llm": [r"bagel\.language_model\.(?!.*_moe_gen)"],
    "head": [r"bagel\.language_model\..*_moe_gen", r"bagel\.llm2vae\.", r"bagel\.time_embedder\."],
    "bridge": [r"bagel\.vae2llm\."],
    "projector": [r"bagel\.connector\."],
    "vit": [r"bagel\.vit_model\."],
    "vae": [],
}
BAGEL_LORA_SCOPES = {"llm": r"bagel\.language_model", "head": r"bagel\.language_model"}


def path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    """The module path of `target` inside `model` (by identity), or None."""
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


def composed_part_paths(model) -> dict[str, list[str]]:
    """Module path prefixes of each named part inside a composed model."""
    vlm = model.vlm
    decoder = vlm.get_decoder() if hasattr(vlm, "get_decoder") else None
    paths = {
        "llm": [path_of(model, decoder), path_of(model, vlm.get_output_embeddings())],
        "vit": [path_of(model, _find_attr(vlm, _VISION_ATTRS))],
        "projector": [path_of(model, _find_attr(vlm, _PROJECTOR_ATTRS))],
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
