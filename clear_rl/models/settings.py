"""What a recipe says about a model's parts and LoRA, importable without torch or peft.

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


def text_tags_training_error(where: str, source: str) -> str:
    """Why a model reading the tags as text is not trained (the one message, for preflight and load)."""
    return (
        f"{where}: this BAGEL-family model reads the protocol tags as plain text ({source}), as CLEAR's "
        "release writes them; clear-rl trains the single-token protocol only (its rollouts, training pass "
        "and distill find the restored slot by the single <image_restore> token). To teach this model "
        "clear-rl's protocol from scratch (SFT from BAGEL-7B-MoT), set model.tags: tokens; a checkpoint "
        "trained with text tags (CLEAR's release) is evaluated, not trained further, by clear-rl"
    )


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
