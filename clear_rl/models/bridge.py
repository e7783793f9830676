"""The latent representation bridge: restored VAE latents straight into the LLM's input space.

CLEAR's point is that a restored latent need not be decoded to pixels and re-encoded by the
vision tower: one small network turns it into LLM input embeddings (BAGEL: `vae2llm(x0) +
time_embed(t=0) + latent_pos_embed`). Here: 2x2 patchify -> Linear -> a learned 2D position
embedding -> `mixer_layers` transformer layers over the token grid -> MLP -> LLM hidden size.

The mixer matters for a VLM whose LLM was never trained on VAE latents: its ViT's tokens carry
image-wide context (attention over the whole image), which a per-patch map cannot reproduce; with
`mixer_layers=0` the bridge is the per-patch MLP of BAGEL's form (its constant t=0 time embedding
folded into the bias). The mixer runs at `width` (default: the LLM's hidden size, capped at 1024)
so that a 3584-wide LLM does not get a 3584-wide bridge.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

MAX_DEFAULT_WIDTH = 1024


def patchify_latents(latents: torch.Tensor, patch_size: int = 2) -> torch.Tensor:
    """(B, C, h, w) -> (B, (h/p)*(w/p), C*p*p) tokens, row-major over the patch grid."""
    b, c, h, w = latents.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {patch_size}")
    x = latents.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch_size) * (w // patch_size), c * patch_size**2)


class Mixer(nn.Module):
    """`nn.TransformerEncoder` over the token grid (the same parameter names and computation), with
    each layer built on its own: the encoder deep-copies one layer, and copies of a layer that
    DeepSpeed's `zero.Init` has already partitioned lose ZeRO-3's bookkeeping, so a saved model
    could not load under ZeRO-3. Every layer starts from the same weights, as the copies did, and
    random draws after the mixer are the ones the encoder left."""

    def __init__(self, width: int, heads: int, layers: int):
        super().__init__()
        start = torch.random.get_rng_state()
        built = []
        for _ in range(layers):
            torch.random.set_rng_state(start)  # each layer draws what the first drew
            built.append(
                nn.TransformerEncoderLayer(
                    width,
                    heads,
                    dim_feedforward=4 * width,
                    dropout=0.0,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
            )
        self.layers = nn.ModuleList(built)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens


class LatentBridge(ModelMixin, ConfigMixin):
    """Maps (B, C, h, w) latents to (B, h/2 * w/2, hidden_size) LLM input embeddings."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        hidden_size: int = 3584,
        patch_size: int = 2,
        mlp_depth: int = 2,
        max_grid_size: int = 64,
        mixer_layers: int = 0,
        width: int | None = None,
        mixer_heads: int = 4,
    ):
        super().__init__()
        in_dim = latent_channels * patch_size**2
        if mixer_layers == 0:  # the per-patch map; its position embedding is added at the output
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_size)]
            for _ in range(mlp_depth - 1):
                layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
            self.proj = nn.Sequential(*layers)
            self.pos_embed = nn.Parameter(torch.randn(max_grid_size, max_grid_size, hidden_size) * 0.02)
            return
        inner = width or min(hidden_size, MAX_DEFAULT_WIDTH)
        if inner % mixer_heads:
            raise ValueError(f"bridge width {inner} is not divisible by mixer_heads {mixer_heads}")
        self.proj = nn.Sequential(nn.Linear(in_dim, inner))
        self.pos_embed = nn.Parameter(torch.randn(max_grid_size, max_grid_size, inner) * 0.02)
        self.mixer = Mixer(inner, mixer_heads, mixer_layers)
        out: list[nn.Module] = [nn.LayerNorm(inner), nn.Linear(inner, hidden_size)]
        for _ in range(mlp_depth - 1):
            out += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        self.out = nn.Sequential(*out)

    def grid_size(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid (rows, cols) for latents of spatial size (h, w)."""
        p = self.config.patch_size
        return latent_hw[0] // p, latent_hw[1] // p

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid_size(latents.shape[-2:])
        if max(rows, cols) > self.config.max_grid_size:
            raise ValueError(
                f"latent grid {rows}x{cols} exceeds the bridge's max_grid_size {self.config.max_grid_size}"
            )
        tokens = patchify_latents(latents.to(self.proj[0].weight.dtype), self.config.patch_size)
        pos = self.pos_embed[:rows, :cols].reshape(rows * cols, -1)
        if self.config.mixer_layers == 0:
            return self.proj(tokens) + pos
        return self.out(self.mixer(self.proj(tokens) + pos))
