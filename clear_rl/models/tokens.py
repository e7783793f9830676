"""The CLEAR token protocol and the special tokens it adds to a tokenizer.

clear-rl's protocol adds the tags as single tokens. CLEAR's released checkpoints write them as plain
text instead; a model that does keeps only the placeholder token (`ClearTokenIds.text_tags`, models/turns.py).

Direct:        <think>quality check + reasoning</think><answer>...</answer>
With restore:  <think>quality check</think><image_restore>[<|restored_pad|> x N]<think>reasoning</think><answer>...</answer>

Emitting `<image_restore>` triggers the restoration branch; the `<|restored_pad|>` positions then
carry the latent bridge's embeddings of the restored latent, the way VLMs carry image features
at their image-token positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenizers import AddedToken

if TYPE_CHECKING:
    import torch

THINK_START = "<think>"
THINK_END = "</think>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"
IMAGE_RESTORE = "<image_restore>"
RESTORED_PAD = "<|restored_pad|>"
CLEAR_SPECIAL_TOKENS = (THINK_START, THINK_END, ANSWER_START, ANSWER_END, IMAGE_RESTORE, RESTORED_PAD)

SYSTEM_PROMPT = (
    "First check the image quality inside <think></think>. If degradation hides details needed "
    "to answer, emit <image_restore> to restore the image, then reason inside <think></think>. "
    "Give the final answer inside <answer></answer>."
)


@dataclass(frozen=True)
class ClearTokenIds:
    """Ids of the protocol tokens in one tokenizer.

    A model whose tags are plain text (CLEAR's release, `ClearTokenIds.text_tags`) has no id for the five
    tags (None): only the placeholder `<|restored_pad|>` is a token, standing for the restored slot.
    """

    think_start: int | None
    think_end: int | None
    answer_start: int | None
    answer_end: int | None
    image_restore: int | None
    restored_pad: int

    @property
    def tags_are_tokens(self) -> bool:
        return self.image_restore is not None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ClearTokenIds:
        ids = tokenizer.convert_tokens_to_ids(list(CLEAR_SPECIAL_TOKENS))
        unknown = [t for t, i in zip(CLEAR_SPECIAL_TOKENS, ids) if i is None or i == tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"tokenizer lacks the CLEAR tokens {unknown}; call add_clear_tokens first")
        return cls(*ids)

    @classmethod
    def text_tags(cls, tokenizer) -> ClearTokenIds:
        """The ids of a tokenizer whose tags stay text (`add_restored_pad` added the placeholder)."""
        pad = tokenizer.convert_tokens_to_ids(RESTORED_PAD)
        if pad is None or pad == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer lacks {RESTORED_PAD}; call add_restored_pad first")
        return cls(None, None, None, None, None, pad)


def has_tag_tokens(tokenizer) -> bool:
    """Whether the tokenizer already holds the tags as tokens of their own (a clear-rl-trained model's)."""
    return IMAGE_RESTORE in tokenizer.get_added_vocab()


def add_restored_pad(tokenizer) -> int:
    """Add only the placeholder `<|restored_pad|>` (special): the tags stay text. Returns 1 if new."""
    return tokenizer.add_special_tokens(
        {"additional_special_tokens": [RESTORED_PAD]}, replace_extra_special_tokens=False
    )


def add_clear_tokens(tokenizer) -> int:
    """Add the protocol tokens as single tokens; returns how many were new.

    The tags the model writes (`<think>`, `<answer>`, `<image_restore>`, ...) are added as
    *non-special* tokens so that `decode(..., skip_special_tokens=True)` (what TRL does before
    calling reward functions) keeps them; the placeholder `<|restored_pad|>` is special, so decoded
    completions do not show N copies of it.
    """
    visible = [
        AddedToken(t, special=False, normalized=False) for t in CLEAR_SPECIAL_TOKENS if t != RESTORED_PAD
    ]
    return tokenizer.add_tokens(visible) + add_restored_pad(tokenizer)


def up_to_last(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """(B, L) positions up to and including each row's last `token_id` (all, in a row without one)."""
    import torch  # here: recipes import this module before any heavy import

    is_token = input_ids == token_id
    length = input_ids.shape[1]
    positions = torch.arange(length, device=input_ids.device)
    last_token = length - 1 - is_token.flip(1).float().argmax(1)
    last = torch.where(is_token.any(1), last_token, length - 1)
    return positions[None, :] <= last[:, None]
