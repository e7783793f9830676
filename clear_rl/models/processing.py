"""Model inputs beyond the VLM processor's: the VAE's view of an image, and chat prompts.

The VLM processor prepares images for the vision tower (its own resize and normalisation); the
restoration branch works in the VAE's latent space on images resized to the model's
`vae_image_size` and scaled to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from clear_rl.io.images import pil_to_tensor
from clear_rl.models.tokens import SYSTEM_PROMPT


def vae_pixel_values(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> (B, 3, size, size) float32 in [-1, 1] for `encode_latents`."""
    resized = [im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for im in images]
    return torch.stack([pil_to_tensor(im) for im in resized]).mul_(2.0).sub_(1.0)


def chat_messages(question: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    """The conversation of one VQA prompt: optional system turn, then the image and the question."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
    return messages


Prompt = str | list[dict]  # a question, or a whole conversation (e.g. TRL's conversational prompt)


def prompt_texts(
    processor,
    prompts: Sequence[Prompt],
    system_prompt: str | None = SYSTEM_PROMPT,
    chat_template_kwargs: dict | None = None,
) -> list[str]:
    """Chat-template prompt strings ending with the assistant's turn opener.

    A question becomes `chat_messages(question, system_prompt)`; a conversation is used as it is.
    """
    return [
        processor.apply_chat_template(
            chat_messages(p, system_prompt) if isinstance(p, str) else p,
            add_generation_prompt=True,
            tokenize=False,
            **(chat_template_kwargs or {}),
        )
        for p in prompts
    ]


def encode_prompts(
    processor,
    images: Sequence[Image.Image],
    prompts: Sequence[Prompt],
    system_prompt: str | None = SYSTEM_PROMPT,
    padding_side: str = "left",
    chat_template_kwargs: dict | None = None,
):
    """The processor's batch (input_ids, attention_mask, pixel_values, ...) of chat prompts, one image each."""
    tokenizer = processor.tokenizer
    previous = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        texts = prompt_texts(processor, prompts, system_prompt, chat_template_kwargs)
        return processor(
            images=[im.convert("RGB") for im in images], text=texts, padding=True, return_tensors="pt"
        )
    finally:
        tokenizer.padding_side = previous
