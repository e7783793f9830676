"""BAGEL's autoencoder as diffusers' `AutoencoderKL`, with BFL (LDM) weight names both ways.

`ae.safetensors` holds FLUX's autoencoder under BFL's names (`encoder.down.0.block.0.conv1`,
`encoder.mid.attn_1.q` as 1x1 convolutions, ...). diffusers converts those names on load
(`convert_ldm_vae_checkpoint`); `to_bfl_state_dict` is its inverse, so a saved folder keeps the
official file format. Encoding returns normalised latents `(z - shift) * scale`; BAGEL samples the
posterior there, clear-rl takes its mode by default (`mode="sample"` follows BAGEL).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_ldm_vae_checkpoint

_TOP_LEVEL = {diffusers: ldm for diffusers, ldm in DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def build_vae(config: dict[str, Any]) -> AutoencoderKL:
    """An `AutoencoderKL` from the settings of `BagelConfig.vae`."""
    return AutoencoderKL(**config)


def from_bfl_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """BFL/LDM-named VAE weights -> diffusers names (diffusers' own converter)."""
    return convert_ldm_vae_checkpoint(state_dict, config)


def _bfl_name(name: str, num_up_blocks: int) -> str:
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    rules: list[tuple[str, Any]] = [
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.up.{num_up_blocks - 1 - int(m[1])}.block.{m[2]}.",
        ),
        (
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.",
        ),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
    ]
    for pattern, replacement in rules:
        match = re.match(pattern, name)
        if match:
            rest = name[match.end() :]
            if "attn_1" in replacement(match):
                leaf, _, kind = rest.rpartition(".")
                rest = f"{_ATTENTION[leaf]}.{kind}"
            return replacement(match) + rest.replace("conv_shortcut", "nin_shortcut")
    raise KeyError(f"no BFL name for VAE weight {name!r}")


def to_bfl_state_dict(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers-named VAE weights -> BFL/LDM names, attention projections back as 1x1 convolutions."""
    num_up = len(config["up_block_types"])
    out = {}
    for name, tensor in state_dict.items():
        bfl = _bfl_name(name, num_up)
        if ".mid.attn_1." in bfl and bfl.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[bfl] = tensor
    return out


def encode(
    vae: AutoencoderKL,
    images: torch.Tensor,
    mode: str = "mode",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, H/8, W/8).

    `mode="mode"` takes the posterior mean (deterministic); `"sample"` draws from it as BAGEL does.
    """
    posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    if mode == "mode":
        z = posterior.mode()
    elif mode == "sample":
        z = posterior.sample(generator=generator)
    else:
        raise ValueError(f"mode must be 'mode' or 'sample', got {mode!r}")
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> images (B, 3, H, W) in [-1, 1]."""
    z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + (
        vae.config.shift_factor or 0.0
    )
    return vae.decode(z).sample.clamp(-1.0, 1.0)
