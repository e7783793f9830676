"""Putting a restored 512x512 image back into the LLM's context: latent bridge vs decode + re-encode.

CLEAR's latent bridge maps the restored latent straight to LLM input embeddings. The alternative
every decode-then-look pipeline pays is a VAE decode to pixels, a resize to the vision tower's
input size, a vision-encoder forward and the VLM's connector. Both paths are built at the sizes of
CLEAR's backbone (BAGEL: FLUX VAE, SigLIP-so400m/14 at 384, a Qwen2.5-7B-wide LLM of 3584) with
random weights: the cost of a forward pass does not depend on the weights' values.

CPU, float32, batch 1, no gradients; the median of a few runs after a warm-up (the slow path gets
few runs: one FLUX-VAE decode at 512x512 takes tens of seconds on a small CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.initialization import no_init_weights

from benchmarks._common import count_parameters, median_seconds, millions
from benchmarks.results import machine_line, update_section
from clear_rl.eval.report import markdown_table
from clear_rl.models.assemble import DEFAULT_BRIDGE
from clear_rl.models.bridge import LatentBridge

LLM_HIDDEN = 3584  # Qwen2.5-7B, BAGEL's LLM
LATENT_SHAPE = (16, 64, 64)  # FLUX VAE latent of a 512x512 image
VIT_IMAGE = 384  # SigLIP-so400m/14-384
BRIDGE_REPEATS = 10
SLOW_REPEATS = 2  # plus one warm-up: the slow path dominates this benchmark's run time
SEED = 0


def flux_sized_vae() -> AutoencoderKL:
    """FLUX.1's VAE architecture (16 latent channels, 8x downsampling), random weights."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=1024,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def siglip_so400m_vision(generator: torch.Generator) -> SiglipVisionModel:
    """SigLIP-so400m/14-384's vision tower as VLMs use it (patch features, no pooling head).

    transformers' own initialisation of 400M parameters takes tens of seconds on a small CPU, so
    the weights are drawn here in one normal_ per tensor instead (any values time the same).
    """
    config = SiglipVisionConfig(
        hidden_size=1152,
        num_hidden_layers=27,
        num_attention_heads=16,
        intermediate_size=4304,
        patch_size=14,
        image_size=VIT_IMAGE,
        vision_use_head=False,
    )
    with no_init_weights():
        model = SiglipVisionModel._from_config(config, attn_implementation="sdpa")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def vlm_connector(vit_hidden: int, llm_hidden: int) -> nn.Module:
    """The MLP connector of LLaVA-style VLMs and BAGEL: ViT features -> LLM embeddings."""
    return nn.Sequential(
        nn.Linear(vit_hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden)
    ).eval()


def main() -> None:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    # clear-rl's default: token mixing over the grid (what lets an LLM read it as ViT tokens).
    bridge = LatentBridge(latent_channels=LATENT_SHAPE[0], hidden_size=LLM_HIDDEN, **DEFAULT_BRIDGE).eval()
    per_patch = LatentBridge(latent_channels=LATENT_SHAPE[0], hidden_size=LLM_HIDDEN, mixer_layers=0).eval()
    # BAGEL's own vae2llm is one Linear.
    linear_bridge = LatentBridge(latent_channels=LATENT_SHAPE[0], hidden_size=LLM_HIDDEN, mlp_depth=1).eval()
    vae = flux_sized_vae()
    vit = siglip_so400m_vision(generator)
    connector = vlm_connector(vit.config.hidden_size, LLM_HIDDEN)
    latents = torch.randn(1, *LATENT_SHAPE, generator=generator)
    decoded: dict[str, torch.Tensor] = {}

    def decode() -> None:
        decoded["image"] = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample

    def resize() -> None:  # SigLIP's normalisation (mean = std = 0.5) gives [-1, 1], the VAE's range
        decoded["pixels"] = F.interpolate(
            decoded["image"].clamp(-1, 1), size=(VIT_IMAGE, VIT_IMAGE), mode="bicubic", antialias=True
        )

    def encode() -> None:
        decoded["features"] = vit(pixel_values=decoded["pixels"]).last_hidden_state

    def connect() -> None:
        decoded["tokens"] = connector(decoded["features"])

    with torch.no_grad():
        bridge_tokens = bridge(latents)
        t_bridge = median_seconds(lambda: bridge(latents), BRIDGE_REPEATS)
        t_patch = median_seconds(lambda: per_patch(latents), BRIDGE_REPEATS)
        t_linear = median_seconds(lambda: linear_bridge(latents), BRIDGE_REPEATS)
        t_decode = median_seconds(decode, SLOW_REPEATS)
        t_resize = median_seconds(resize, BRIDGE_REPEATS)
        t_encode = median_seconds(encode, SLOW_REPEATS)
        t_connect = median_seconds(connect, BRIDGE_REPEATS)
    slow_total = t_decode + t_resize + t_encode + t_connect
    ratio = slow_total / t_bridge
    p_bridge = count_parameters(bridge)
    p_slow = count_parameters(vae.decoder, vit, connector)
    print(
        f"bridge: {t_bridge * 1e3:.1f} ms -> {tuple(bridge_tokens.shape)}; per-patch MLP {t_patch * 1e3:.1f} ms; "
        f"one-linear bridge {t_linear * 1e3:.1f} ms"
    )
    print(
        f"decode {t_decode:.2f}s + resize {t_resize * 1e3:.1f}ms + SigLIP {t_encode:.2f}s + "
        f"connector {t_connect * 1e3:.1f}ms = {slow_total:.2f}s -> {tuple(decoded['tokens'].shape)}"
    )
    print(
        f"decode + re-encode / bridge = {ratio:.0f}x; parameters {millions(p_bridge)} vs {millions(p_slow)}"
    )

    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:,.1f}"

    rows = [
        [
            f"**latent bridge, clear-rl's default** (2x2 patchify, Linear 64->{bridge.config.width or 1024}, "
            f"2D pos-embed, {bridge.config.mixer_layers} transformer layers over the grid, MLP ->3584)",
            ms(t_bridge),
            millions(p_bridge),
        ],
        [
            "per-patch latent bridge, `mixer_layers=0` (MLP 64->3584->3584, 2D pos-embed)",
            ms(t_patch),
            millions(count_parameters(per_patch)),
        ],
        [
            "latent bridge with one Linear 64->3584 (BAGEL's `vae2llm`), `mlp_depth=1`",
            ms(t_linear),
            millions(count_parameters(linear_bridge)),
        ],
        ["**decode + re-encode, total**", ms(slow_total), millions(p_slow)],
        [
            "- FLUX-sized VAE decode 16x64x64 -> 3x512x512",
            ms(t_decode),
            millions(count_parameters(vae.decoder)),
        ],
        ["- resize 512 -> 384 (bicubic, antialiased)", ms(t_resize), "0"],
        [
            "- SigLIP-so400m/14 vision tower at 384 (729 patches)",
            ms(t_encode),
            millions(count_parameters(vit)),
        ],
        ["- MLP connector 1152->3584->3584", ms(t_connect), millions(count_parameters(connector))],
    ]
    markdown = "\n\n".join(
        [
            "## Latent bridge vs decode + re-encode (`bridge_vs_reencode`)",
            "Time to put one restored 512x512 image back into a 3584-wide LLM's context (BAGEL / "
            "Qwen2.5-7B sizes). Random weights, CPU, float32, batch 1, `torch.no_grad`; median of "
            f"{BRIDGE_REPEATS} runs (bridge, resize, connector) or {SLOW_REPEATS} runs (VAE decode, "
            "SigLIP) after one warm-up.",
            markdown_table(["path", "time (ms)", "parameters"], rows),
            f"**Decode + re-encode takes {ratio:,.0f}x the bridge's time** ({ms(slow_total)} ms vs "
            f"{ms(t_bridge)} ms), and the bridge gives {bridge_tokens.shape[1]} tokens instead of "
            f"{decoded['tokens'].shape[1]}; with the per-patch map the ratio is {slow_total / t_patch:,.0f}x, "
            f"with BAGEL's single linear map {slow_total / t_linear:,.0f}x. The default bridge mixes "
            "tokens across the grid because an LLM never trained on VAE latents reads a per-patch map "
            "as noise (docs/recipes.md, 'Bridge alignment').",
            machine_line(),
        ]
    )
    update_section("bridge_vs_reencode", markdown)


if __name__ == "__main__":
    main()
