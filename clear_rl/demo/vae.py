"""Stage 0 for the VAE of the demo's tiny model: reconstruction training and latent calibration.

A real backbone comes with a trained VAE (e.g. FLUX's); the tiny one is random, so the demo
trains it briefly on the images it will see (clean and degraded). No library trainer fits an
autoencoder's reconstruction objective, hence this short loop.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from clear_rl.models.composed import ComposedUnifiedModel

logger = logging.getLogger(__name__)


def train_vae(
    model: ComposedUnifiedModel,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    kl_weight: float = 1e-6,
    detail_weight: float = 10.0,
    contrast_weight: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """Fit `model.vae` to reconstruct `images` ((N, 3, S, S) in [-1, 1]); returns the loss curve.

    Pixels weigh 1 + `detail_weight` x their distance from the image's mean colour: with a plain
    MSE a briefly trained VAE learns the pale background that fills most pixels and blurs the small
    coloured objects the questions ask about into one brownish hue.
    """
    vae = model.vae
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc="stage 0: VAE", unit="step"):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)].to(vae.device)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=None)).sample
        weight = 1 + detail_weight * (batch - batch.mean((2, 3), keepdim=True)).norm(dim=1, keepdim=True)
        error = (weight * (reconstruction - batch) ** 2).mean() / weight.mean()
        if contrast_weight:
            # Relative to each image's own contrast: dark and washed-out images keep their colours.
            spread = batch.var(dim=(2, 3), keepdim=True).mean(1, keepdim=True) + 1e-2
            error = error + contrast_weight * ((reconstruction - batch) ** 2 / spread).mean()
        loss = error + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval().requires_grad_(False)
    calibrate_latents(model, images)
    return losses


@torch.no_grad()
def calibrate_latents(model: ComposedUnifiedModel, images: torch.Tensor, batch_size: int = 64) -> None:
    """Set the VAE's shift and scale so normalised latents have zero mean and unit std (as FLUX's do).

    The flow's noise is N(0, I), so the head's targets should be on that scale.
    """
    vae = model.vae
    latents = torch.cat(
        [
            vae.encode(images[i : i + batch_size].to(vae.device)).latent_dist.mode()
            for i in range(0, len(images), batch_size)
        ]
    )
    shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    model.config.vae_config = dict(vae.config)  # the composite saves its parts' configs
    logger.info("VAE latents calibrated: shift %.4f, scale %.4f", shift, scale)
