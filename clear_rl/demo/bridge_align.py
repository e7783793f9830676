"""Stage 0 for the latent bridge of the demo's tiny model: alignment on cached targets.

The objective is `clear-rl train`'s `stage: align` (trainers/align.py, `recipes/demo/align.yaml`):
`bridge(VAE latent)` matches the VLM's own vision-path tokens of the same image (standardised MSE
+ `lambda_cos` x (1 - cosine)). The VAE and the vision path are frozen, so each image's latent and
target tokens are computed once here and the bridge alone trains on them: the align trainer
recomputes both at every step, half its step time at the demo's sizes, and the bridge needs
several hundred steps before the LLM reads its tokens as it reads its own vision tokens. No library
trainer caches a frozen reference's outputs, hence the cached loop (cached_training.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clear_rl.data.image_sources import IMAGE_COLUMN, AlignCollator
from clear_rl.demo.cached_training import train_on_cache
from clear_rl.models.composed import ComposedUnifiedModel
from clear_rl.trainers.align import token_terms, vision_targets


@torch.no_grad()
def cache_targets(
    model: ComposedUnifiedModel, processor, images: Sequence, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(VAE latents, vision-path tokens on the bridge's grid) of every image."""
    model.eval()
    collator = AlignCollator(processor, model.config.vae_image_size)
    latents, targets = [], []
    for start in range(0, len(images), batch_size):
        batch = collator([{IMAGE_COLUMN: image} for image in images[start : start + batch_size]])
        targets.append(vision_targets(model, batch).float())
        latents.append(model.encode_latents(batch["vae_pixel_values"]).float())
    return torch.cat(latents), torch.cat(targets)


def align_bridge(
    model: ComposedUnifiedModel,
    latents: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    lambda_cos: float = 0.5,
    warmup_steps: int = 20,
    seed: int = 0,
) -> list[float]:
    """Train `model.latent_bridge` on cached (latent, target) pairs; returns the loss curve."""

    def step_loss(rows: torch.Tensor, generator: torch.Generator):
        mse, cosine = token_terms(model.bridge(latents[rows]).float(), targets[rows])
        return mse + lambda_cos * cosine, {"cos": 1 - cosine.detach()}

    return train_on_cache(
        model.latent_bridge, len(latents), step_loss, steps, "stage 0: bridge alignment",
        batch_size, learning_rate, warmup_steps, seed,
    )  # fmt: skip
