"""The understanding path's image encoder: SigLIP over NaViT-packed patches, then the connector.

BAGEL feeds SigLIP images at their own sizes (NaViT): each image's patches are flattened in
(row, column) order, every image's tokens are packed into one sequence, and attention stays inside
each image (a block-diagonal mask here; BAGEL uses varlen flash-attention). The patch embedding is
stored as a Linear over patch vectors in (kh, kw, c) order, and positions index a learned
70 x 70 table by `h * 70 + w` (no 2-D RoPE: the official loaders set `rope=False`).

Layers are transformers' `SiglipEncoderLayer`, whose names and maths are BAGEL's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import SiglipVisionConfig
from transformers.activations import ACT2FN
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer


def patchify_image(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(C, H, W) -> (H/p * W/p, p * p * C), patches in row-major order, vectors in (kh, kw, c) order."""
    c, h, w = image.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image sides {h}x{w} must be multiples of the ViT patch size {p}")
    return image.reshape(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0).reshape(-1, p * p * c)


def grid_position_ids(
    rows: int, cols: int, max_per_side: int, device: torch.device | None = None
) -> torch.Tensor:
    """Flattened ids `h * max_per_side + w` of a rows x cols grid (BAGEL's 'extrapolate' mode)."""
    if rows > max_per_side or cols > max_per_side:
        raise ValueError(f"a {rows}x{cols} token grid exceeds the position table's {max_per_side} per side")
    h = torch.arange(rows, device=device)[:, None]
    w = torch.arange(cols, device=device)[None, :]
    return (h * max_per_side + w).flatten()


def block_diagonal_mask(lengths: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """(N, N) bool: True where two tokens belong to the same block."""
    ids = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    return ids[:, None] == ids[None, :]


class NavitEmbeddings(nn.Module):
    """`embeddings`: Linear patch embedding + learned position table."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        patch_dim = config.num_channels * config.patch_size**2
        self.patch_embedding = nn.Linear(patch_dim, config.hidden_size)
        self.num_positions = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(patches) + self.position_embedding(position_ids)


class NavitEncoder(nn.Module):
    """`encoder`: SigLIP's layers (`encoder.layers.N`)."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return hidden


class NavitVisionTransformer(nn.Module):
    """`vision_model`: embeddings -> encoder -> post_layernorm, over packed images."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.embeddings = NavitEmbeddings(config)
        self.encoder = NavitEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, patches: torch.Tensor, position_ids: torch.Tensor, lengths: Sequence[int]
    ) -> torch.Tensor:
        """patches (N, p*p*C) of several images, `lengths` tokens each -> (N, hidden)."""
        hidden = self.embeddings(patches, position_ids)
        mask = block_diagonal_mask(lengths, hidden.device)[None, None]
        return self.post_layernorm(self.encoder(hidden[None], mask)[0])


class NavitVisionModel(nn.Module):
    """`vit_model`: holds `vision_model`, as SigLIP's `SiglipVisionModel` does."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = NavitVisionTransformer(config)

    def forward(
        self, patches: torch.Tensor, position_ids: torch.Tensor, lengths: Sequence[int]
    ) -> torch.Tensor:
        return self.vision_model(patches, position_ids, lengths)


class MLPConnector(nn.Module):
    """`connector`: ViT width -> LLM width (fc1, gelu-tanh, fc2)."""

    def __init__(self, in_dim: int, out_dim: int, act: str = "gelu_pytorch_tanh"):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
