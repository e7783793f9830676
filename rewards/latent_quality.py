"""Built-in reward `latent_quality`: how close the restored latent is to the clean image's latent.

Both latents are (C, h, w) VAE latents, patchified 2x2 into (h/2 * w/2) tokens of 4C values, as
the latent bridge sees them (the released code's definition):
    0.3 * exp(-0.5 * MSE) + 0.3 * max(0, global cosine) + 0.4 * max(0, mean per-token cosine)
Identical latents score 1.0. Rollouts that did not restore (or lack a clean latent) get None, so
TRL leaves them out of this term. Its weight is 0.0 in the released recipe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clear_rl.errors import RewardError
from clear_rl.models.bridge import patchify_latents


def latent_tokens(latent: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> (h//2 * w//2, 4C) float tokens, as the bridge sees them; an odd last row or
    column is dropped."""
    _, height, width = latent.shape
    even = latent[None, :, : height - height % 2, : width - width % 2]
    return patchify_latents(even.float(), patch_size=2)[0]


def latent_similarity(restored: torch.Tensor, clean: torch.Tensor) -> float:
    restored_tokens, clean_tokens = latent_tokens(restored), latent_tokens(clean)
    mse = F.mse_loss(restored_tokens, clean_tokens).item()
    global_cos = (
        F.cosine_similarity(restored_tokens.flatten(), clean_tokens.flatten(), dim=0).clamp(min=0).item()
    )
    local_cos = F.cosine_similarity(restored_tokens, clean_tokens, dim=-1).mean().clamp(min=0).item()
    return 0.3 * math.exp(-0.5 * mse) + 0.3 * global_cos + 0.4 * local_cos


def _as_chw(latent, row: int, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(latent)
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or min(tensor.shape[1:]) < 2:
        raise RewardError(f"row {row}: {what} must be (C, h, w) with h, w >= 2, got {tuple(tensor.shape)}")
    return tensor


def latent_quality_reward(
    prompts, completions, restored, restored_latents, clean_latents, **kwargs
) -> list[float | None]:
    rewards: list[float | None] = []
    for row, (did_restore, restored_latent, clean_latent) in enumerate(
        zip(restored, restored_latents, clean_latents)
    ):
        if not did_restore or restored_latent is None or clean_latent is None:
            rewards.append(None)
            continue
        restored_latent = _as_chw(restored_latent, row, "restored_latents")
        clean_latent = _as_chw(clean_latent, row, "clean_latents").to(restored_latent.device)
        if restored_latent.shape != clean_latent.shape:
            raise RewardError(
                f"row {row}: restored latent {tuple(restored_latent.shape)} and clean latent "
                f"{tuple(clean_latent.shape)} differ in shape"
            )
        rewards.append(latent_similarity(restored_latent, clean_latent))
    return rewards
