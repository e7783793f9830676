"""What a recipe says about a model's backbone, parts and LoRA, importable without torch or peft.

The recipe is checked before any heavy import (`clear_rl.recipe`), so the part names and the
LoRA settings live here, apart from the code that applies them (`models/adapters.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from clear_rl.errors import ClearRLError

# `llm` (the language model and its head), `vit` (vision tower), `projector` (vision -> LLM
# connector), `head` (restoration DiT), `bridge` (latent bridge), `vae`.
PARTS = ("llm", "vit", "projector", "head", "bridge", "vae")
# `model.backbone` / `--backbone`: which implementation a saved folder loads as. `auto` tells them
# apart by the folder (BAGEL's official layout, else a clear-rl composed model).
BACKBONES = ("auto", "composed", "bagel")
# `model.preset` / `--preset`: the inference presets of BAGEL-family folders (the names of
# `clear_rl.models.bagel.presets.PRESETS`, here without importing torch).
BAGEL_PRESETS = ("clear-release", "bagel-upstream")


def check_backbone(backbone: str) -> str:
    """The backbone name, checked; a ClearRLError names a wrong one."""
    if backbone not in BACKBONES:
        raise ClearRLError(f"unknown backbone {backbone!r}; valid backbones: {list(BACKBONES)}")
    return backbone


def check_parts(parts: Iterable[str]) -> list[str]:
    """The part names as a list; a ClearRLError names any that is not one of PARTS."""
    parts = list(parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ClearRLError(f"unknown model part(s) {unknown}; valid parts: {list(PARTS)}")
    return parts


@dataclass
class LoraSettings:
    """LoRA on the LLM's attention and on the restoration head's attention by default."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    llm_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    head_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # Parts trained in full beside the adapters (e.g. ["latent_bridge"] for stage 2).
    modules_to_save: list[str] = field(default_factory=list)
    # Train the embedding (and output) rows of the protocol tokens, which compose_unified added
    # untrained: without them a LoRA model cannot learn to write <think>, <image_restore>, ...
    train_protocol_tokens: bool = True
