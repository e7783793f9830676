"""How good a restoration is, per row: pixel PSNR and latent cosine against the clean image.

PSNR compares the decoded restoration with the clean image at the model's `vae_image_size`
(both in [-1, 1], so the peak-to-peak range is 2), and the degraded input with the clean image
the same way, so "restored - degraded" is the gain in dB. The cosine compares the restored latent
with the clean image's VAE latent (the target the restoration head was trained towards), and
the degraded image's latent with it as the baseline. All on batches of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_PSNR = 100.0  # identical images: a finite ceiling, so means and JSON stay numbers


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, 3, H, W) images in [-1, 1] against same-size references."""
    mse = ((images.float() - reference.float()) / 2.0).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(1.0 / mse.clamp(min=1e-10))).clamp(max=MAX_PSNR)


def latent_cosine(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-row cosine between flattened latents (B, C, h, w) and their references."""
    return torch.nn.functional.cosine_similarity(
        latents.float().flatten(1), reference.float().flatten(1), dim=1
    )


@dataclass
class RestorationQuality:
    """Per-row measures of a batch of restorations, and the decoded images for a gallery."""

    psnr_restored: torch.Tensor  # (B,) dB, decoded restoration vs clean
    latent_cos_restored: torch.Tensor  # (B,) restored latent vs clean latent
    decoded: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    psnr_degraded: torch.Tensor | None = None  # (B,) dB, degraded input vs clean
    latent_cos_degraded: torch.Tensor | None = None  # (B,) degraded latent vs clean latent

    def record(self, row: int) -> dict[str, float]:
        """The measures of one row, as the predictions file stores them."""
        values = {"psnr_restored": self.psnr_restored, "latent_cos_restored": self.latent_cos_restored}
        if self.psnr_degraded is not None:
            values.update(psnr_degraded=self.psnr_degraded, latent_cos_degraded=self.latent_cos_degraded)
        return {name: float(v[row]) for name, v in values.items()}


@torch.no_grad()
def measure_restorations(
    model,
    restored_latents: torch.Tensor,
    degraded_pixels: torch.Tensor,
    clean_pixels: torch.Tensor,
    degraded_latents: torch.Tensor | None = None,
    clean_latents: torch.Tensor | None = None,
    compare_degraded: bool = True,
) -> RestorationQuality:
    """Decode `restored_latents` (B, C, h, w) and measure them against the clean images.

    `degraded_pixels` and `clean_pixels` are (B, 3, S, S) in [-1, 1] at `vae_image_size`; latents
    not given are encoded here (deterministically, the posterior mean). `compare_degraded=False`
    (the input is the clean image itself) leaves the degraded-vs-clean baselines out.
    """
    device = restored_latents.device
    degraded_pixels, clean_pixels = degraded_pixels.to(device), clean_pixels.to(device)
    if clean_latents is None:
        clean_latents = model.encode_latents(clean_pixels)
    clean_latents = clean_latents.to(device)
    decoded = model.decode_latents(restored_latents).float()
    quality = RestorationQuality(
        psnr_restored=psnr(decoded, clean_pixels).cpu(),
        latent_cos_restored=latent_cosine(restored_latents, clean_latents).cpu(),
        decoded=decoded.cpu(),
    )
    if compare_degraded:
        if degraded_latents is None:
            degraded_latents = model.encode_latents(degraded_pixels)
        quality.psnr_degraded = psnr(degraded_pixels, clean_pixels).cpu()
        quality.latent_cos_degraded = latent_cosine(degraded_latents.to(device), clean_latents).cpu()
    return quality
