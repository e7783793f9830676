"""How a restored latent is read back into the LLM's context: the bridge, or decode + re-encode.

A third readback, `reencode-vae`, is the bridge of the restoration decoded to 8-bit pixels and
encoded again by the VAE: what CLEAR's per-degradation eval enters (`output_need_vae`).

CLEAR's point is the latent bridge (`bridge`): one small map from the restored latent to LLM input
embeddings. The paper's baseline (`reencode`) decodes the latent to pixels with the VAE, runs the
pixels through the VLM's own image processor and vision path (vision tower + projector), exactly
as for any input image, and puts those tokens in the restored slot. Comparing the two measures
what the bridge buys (accuracy and the cost of a VAE decode plus a ViT forward per restoration).

The vision path is reached through the VLM's `get_image_features`, which LLaVA, Qwen2-VL/2.5-VL,
SmolVLM and most `AutoModelForImageTextToText` models share; whatever the image processor returns
(`pixel_values`, `image_grid_thw`, `image_sizes`, ...) is passed to it unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from clear_rl.io.images import pil_to_tensor
from clear_rl.models.vision import vision_tokens

# `reencode-vae` (BAGEL; CLEAR's per-degradation eval, `output_need_vae`): the restoration decoded to
# 8-bit pixels and encoded again by the VAE, entering as the bridge would.


def image_processor_of(processor):
    """The VLM's image processor, given it or a multimodal processor that holds one."""
    return getattr(processor, "image_processor", None) or processor


def latents_to_images(model, latents: torch.Tensor, truncate: bool = False) -> list[Image.Image]:
    """Normalised latents (B, C, h, w) -> RGB PIL images, the pixels any input image would be.

    Each value is rounded to 8 bits, or with `truncate` cut as BAGEL's inferencer writes an image
    (`decode_image`: ((x + 1) / 2).clamp(0, 1) * 255, then `.to(torch.uint8)`)."""
    pixels = model.decode_latents(latents).float()  # (B, 3, S, S) in [-1, 1]
    if truncate:
        quantised = ((pixels * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    else:
        quantised = ((pixels + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    arrays = quantised.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


def vision_embeddings(model, image_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The VLM's own vision path (tower + projector) on processed images -> (R, N, D) LLM embeddings.

    Every image here has the same size, so each yields the same number of tokens and they stack.
    """
    features = vision_tokens(model.vlm, image_inputs)
    lengths = {f.shape[0] for f in features}
    if len(lengths) != 1:
        raise ValueError(f"restored images gave different vision token counts {sorted(lengths)}")
    return torch.stack(features)


@torch.no_grad()
def reencode_embeddings(model, latents: torch.Tensor, image_processor) -> torch.Tensor:
    """The `reencode` readback of restored latents (R, C, h, w): decode, process, vision path -> (R, N, D).

    `image_processor` is the VLM's image processor (or the processor holding it). Run without
    gradients: the re-encoded tokens are an observation the policy reads, like a tool's output.
    """
    if image_processor is None:
        raise ValueError(
            "readback='reencode' needs the VLM's image processor (pass image_processor=processor)"
        )
    images = latents_to_images(model, latents)
    processed = image_processor_of(image_processor)(images=images, return_tensors="pt")
    return vision_embeddings(model, dict(processed))


@torch.no_grad()
def vae_roundtrip(model, latents: torch.Tensor) -> torch.Tensor:
    """The `reencode-vae` readback of restored latents (R, C, h, w): decoded to 8-bit pixels and
    encoded again by the model's VAE (the bridge then takes them as it takes a restoration)."""
    images = latents_to_images(model, latents)
    pixels = torch.stack([pil_to_tensor(image) for image in images]).mul_(2.0).sub_(1.0)
    return model.encode_latents(pixels.to(latents.device)).to(latents.dtype)


# -- the degraded view ------------------------------------------------------------------------
# Whether the degraded image's own (ViT) tokens stay visible once the restored slot is in the
# context. Hidden tokens keep their positions (position ids count them) and only leave attention,
# so hiding changes what a position reads, never where it sits.


def first_placeholder(input_ids: torch.Tensor, restored_pad_id: int) -> torch.Tensor:
    """(B,) index of each row's first `<|restored_pad|>`; the sequence length in a row without one."""
    is_pad = input_ids == restored_pad_id
    first = is_pad.long().argmax(1)
    return torch.where(is_pad.any(1), first, input_ids.shape[1])


def hidden_view_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    hide_from: torch.Tensor,
    dtype: torch.dtype = torch.bool,
) -> torch.Tensor:
    """A (B, 1, L, L) attention mask hiding image tokens from queries at index >= `hide_from`.

    Causal, with `attention_mask`'s keys, and with row b's image-token keys masked for its
    queries from `hide_from[b]` on (0: hidden from every position). Queries before that still
    read the image, as they did when a KV cache computed them, so a teacher-forced pass over the
    whole sequence equals the cached rollout. Every query also reads itself, so no row is fully
    masked (which gives NaN in SDPA); that only changes padding, holes and hidden tokens, which no
    real position reads. `dtype` bool: True attends (SDPA, flex); a float dtype: additive (eager).
    """
    length = input_ids.shape[1]
    index = torch.arange(length, device=input_ids.device)
    causal = index[None, :] <= index[:, None]  # (Q, K)
    image = (input_ids == image_token_id)[:, None, :]  # (B, 1, K)
    late = index[None, :, None] >= hide_from.to(input_ids.device)[:, None, None]  # (B, Q, 1)
    allowed = causal[None] & attention_mask.bool()[:, None, :] & ~(image & late)
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=input_ids.device)
    if dtype == torch.bool:
        return allowed[:, None]
    zero = torch.zeros((), dtype=dtype, device=input_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def view_mask(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, hide_from: torch.Tensor):
    """`hidden_view_mask` in the format the model's attention implementation takes."""
    implementation = model.config.get_text_config()._attn_implementation or "eager"
    if "flash" in implementation:
        raise ValueError(
            f"hiding the degraded view in a full-sequence pass needs a 4D attention mask, which "
            f"{implementation!r} does not take; load the model with attn_implementation='sdpa'"
        )
    dtype = model.get_input_embeddings().weight.dtype if implementation == "eager" else torch.bool
    return hidden_view_mask(input_ids, attention_mask, model.config.image_token_id, hide_from, dtype)
