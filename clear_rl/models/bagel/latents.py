"""The generation path's token interface: VAE latents <-> LLM tokens.

A latent (C, h, w) becomes (h/2 * w/2) tokens of 2 x 2 x C values (vector order (ph, pw, c), as
BAGEL's `einsum("chpwq->hwpqc")`); each enters the LLM as `vae2llm(x_t) + time_embedder(t) +
latent_pos_embed[h * max_latent_size + w]`, and the generation expert's output leaves as the
velocity `llm2vae(h)`. The two position tables are fixed 2-D sin-cos tables (MAE/DiT's, computed
by diffusers' `get_2d_sincos_pos_embed`), recomputed rather than loaded.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding
from torch import nn


def patchify_latent(latent: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(C, h, w) -> (h/p * w/p, p * p * C), tokens in row-major order, vectors in (ph, pw, c) order."""
    c, h, w = latent.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"latent sides {h}x{w} must be multiples of the latent patch size {p}")
    return latent.reshape(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0).reshape(-1, p * p * c)


def unpatchify_latent(
    tokens: torch.Tensor, channels: int, height: int, width: int, patch_size: int
) -> torch.Tensor:
    """The inverse of `patchify_latent`: (h/p * w/p, p * p * C) -> (C, h, w)."""
    p = patch_size
    grid = tokens.reshape(height // p, width // p, p, p, channels)
    return grid.permute(4, 0, 2, 1, 3).reshape(channels, height, width)


def sincos_table(hidden_size: int, grid_side: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(grid_side**2, hidden_size) fixed 2-D sin-cos table, row `h * grid_side + w` (fp32)."""
    table = get_2d_sincos_pos_embed(
        hidden_size, grid_side, base_size=grid_side, interpolation_scale=1.0, device=device, output_type="pt"
    )
    return table.float()


class PositionEmbedding(nn.Module):
    """`vit_pos_embed` / `latent_pos_embed`: a frozen sin-cos table, a non-persistent buffer here."""

    def __init__(self, grid_side: int, hidden_size: int):
        super().__init__()
        self.grid_side = grid_side
        self.hidden_size = hidden_size
        self.register_buffer("pos_embed", sincos_table(hidden_size, grid_side), persistent=False)

    def reset(self, device: torch.device | str) -> None:
        self.pos_embed = sincos_table(self.hidden_size, self.grid_side, device=device)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


class TimestepEmbedder(nn.Module):
    """`time_embedder`: DiT's 256-dim sinusoid (cos first, max period 1e4) -> Linear-SiLU-Linear.

    BAGEL feeds t in [0, 1] as is (no x1000); clean context latents use t = 0.
    """

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = get_timestep_embedding(
            t.float(), self.frequency_dim, flip_sin_to_cos=True, downscale_freq_shift=0, max_period=10000
        )
        return self.mlp(freq.to(self.mlp[0].weight.dtype))
