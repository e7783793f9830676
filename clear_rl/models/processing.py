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


def prompt_texts(processor, questions: Sequence[str], system_prompt: str | None = SYSTEM_PROMPT) -> list[str]:
    """Chat-template prompt strings ending with the assistant's turn opener."""
    return [
        processor.apply_chat_template(
            chat_messages(q, system_prompt), add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
