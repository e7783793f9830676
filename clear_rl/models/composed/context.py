"""What the composed model's restoration head is conditioned on (its `RestorationContextLike`).

Apart from the model (modeling.py) so that its decoder (decoding.py) reads it without importing the
model, which builds the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RestorationContext:
    """What the restoration head is conditioned on, for each row of a batch."""

    hidden_states: torch.Tensor  # (B, L, D) LLM hidden states
    attention_mask: torch.Tensor  # (B, L) True where a position is in the context
    degraded_latents: torch.Tensor  # (B, C, h, w) the degraded image's latent

    @property
    def num_rows(self) -> int:
        return self.hidden_states.shape[0]

    @property
    def device(self) -> torch.device:
        return self.hidden_states.device

    def select(self, rows: torch.Tensor) -> RestorationContext:
        return RestorationContext(
            self.hidden_states[rows], self.attention_mask[rows], self.degraded_latents[rows]
        )
