"""Answer a batch of (image, prompt) rows with a unified model: the one path from rows to answers.

Evaluation, probe labelling and stage-3 rollouts all do the same thing: render the chat prompts,
encode them with the images (left-padded, for generation), prepare the VAE's view of the images,
run `generate_interleaved` and decode the completions. They differ only in the generation
settings (greedy or sampled, the restore policy, the readback) and in what they keep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from clear_rl.models.processing import Prompt, encode_prompts, vae_pixel_values
from clear_rl.models.tokens import SYSTEM_PROMPT
from clear_rl.rollout.interleaved import InterleavedGenerationConfig, InterleavedOutput, generate_interleaved


@dataclass
class AnsweredBatch:
    """A batch's answers and everything a caller may keep of how they were made."""

    texts: list[str]  # the completions, special tokens skipped
    output: InterleavedOutput  # ids, masks, restorations, trajectories
    prompt_ids: torch.Tensor  # (B, L) left-padded prompt ids
    prompt_mask: torch.Tensor  # (B, L)
    vae_pixel_values: torch.Tensor  # (B, 3, H, W) in [-1, 1]: the images as the VAE saw them
    seconds: float  # wall time of the generation itself (not the encoding), for latency figures


@torch.no_grad()
def answer_batch(
    model,
    processor,
    images: Sequence[Image.Image],
    prompts: Sequence[Prompt],
    config: InterleavedGenerationConfig,
    *,
    system_prompt: str | None = SYSTEM_PROMPT,
    generator: torch.Generator | None = None,
    oracle_latents: torch.Tensor | None = None,
    chat_template_kwargs: dict | None = None,
) -> AnsweredBatch:
    """Answer each image's prompt: a question (with `system_prompt`) or a whole conversation.

    `model` is the unified model (unwrapped); the readback `reencode` uses `processor`'s own image
    processor; `oracle_latents` fill the slot under `restore="oracle"`.
    """
    device = model.device
    batch = encode_prompts(
        processor, images, prompts, system_prompt, chat_template_kwargs=chat_template_kwargs
    ).to(device)
    pixels = vae_view_pixels(model, processor, images).to(device)
    vlm_inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    began = time.perf_counter()
    with _view_of(model, pixels):
        out = generate_interleaved(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            config,
            vae_pixel_values=pixels,
            generator=generator,
            image_processor=processor if config.readback == "reencode" else None,
            oracle_latents=oracle_latents,
            **vlm_inputs,
        )
    seconds = time.perf_counter() - began
    texts = processor.tokenizer.batch_decode(
        [ids[mask.bool()] for ids, mask in zip(out.completion_ids, out.completion_mask)],
        skip_special_tokens=True,
    )
    return AnsweredBatch(texts, out, batch["input_ids"], batch["attention_mask"], pixels, seconds)


def vae_view_pixels(model, processor, images: Sequence[Image.Image]) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1]: the VAE's view of `images`, as the processor sizes it where it has its
    own (BAGEL: aspect ratio kept, one size per batch), else the model's square `vae_image_size`."""
    if hasattr(processor, "vae_pixel_values"):
        return processor.vae_pixel_values(images)
    return vae_pixel_values(images, model.config.vae_image_size)


def vae_view_groups(processor, images: Sequence[Image.Image]) -> list[list[int]]:
    """Indices of `images` grouped by VAE view size, each group in order (one group where every
    view is the same size): answer each group as one batch."""
    if not hasattr(processor, "vae_size"):
        return [list(range(len(images)))] if images else []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(processor.vae_size(image), []).append(i)
    return list(groups.values())


def _view_of(model, pixels: torch.Tensor):
    """The model's VAE view set to the batch's (BAGEL restores at the input's VAE size)."""
    view = getattr(model, "vae_view", None)
    return view(tuple(pixels.shape[-2:])) if view is not None else contextlib.nullcontext()
