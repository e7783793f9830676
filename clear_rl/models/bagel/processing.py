"""BAGEL's prompt and image processing, behind the processor interface clear-rl's answering path uses.

A prompt is rendered as BAGEL frames it: every text turn `<|im_start|> text <|im_end|>` (no chat
roles), the image as one `<|image_pad|>` placeholder that the decoder expands into the image's two
blocks, a VAE-latent block and a ViT block (CLEAR's order), and the answer turn opened with
`<|im_start|>`. Token ids (left-padded) carry the prompt, so the rollout loop and TRL see an ordinary
id batch.

Images: the ViT view keeps the aspect ratio, resized as BAGEL's `ImageTransform(980, 224, 14)`
(long side <= 980, short side >= 224, both sides multiples of the patch, pixel count capped), in
[-1, 1]; rows of a batch are zero-padded to one tensor with their sizes beside. The VAE view is the
protocol's square `vae_image_size` image (models/processing.py), which BAGEL would size by aspect
ratio instead: one shape per batch keeps the restored latents one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from clear_rl.io.images import pil_to_tensor
from clear_rl.models.processing import vae_pixel_values

IMAGE_PLACEHOLDER = "<|image_pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# BAGEL's ImageTransform default pixel cap (14 * 14 * 9 * 1024).
MAX_PIXELS = 14 * 14 * 9 * 1024


@dataclass(frozen=True)
class VitResize:
    """BAGEL's MaxLongEdgeMinShortEdgeResize for the ViT view."""

    max_size: int = 980
    min_size: int = 224
    stride: int = 14
    max_pixels: int = MAX_PIXELS

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the resized image."""
        scale = min(self.max_size / max(width, height), 1.0)
        scale = max(scale, self.min_size / min(width, height))
        new_w, new_h = self._snap(width * scale), self._snap(height * scale)
        if new_w * new_h > self.max_pixels:
            scale = math.sqrt(self.max_pixels / (new_w * new_h))
            new_w, new_h = self._snap(new_w * scale), self._snap(new_h * scale)
        if max(new_w, new_h) > self.max_size:  # the short-side floor may push the long side over
            scale = self.max_size / max(new_w, new_h)
            new_w, new_h = self._snap(new_w * scale, down=True), self._snap(new_h * scale, down=True)
        return new_w, new_h

    def _snap(self, value: float, down: bool = False) -> int:
        steps = math.floor(value / self.stride) if down else round(value / self.stride)
        return max(self.stride, int(steps) * self.stride)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> (3, H, W) in [-1, 1], sides multiples of the stride."""
        image = image.convert("RGB")
        size = self.size(*image.size)
        resized = image.resize(size, Image.Resampling.BICUBIC) if size != image.size else image
        return pil_to_tensor(resized).mul(2.0).sub(1.0)


class BagelProcessor(ProcessorMixin):
    """Renders chat prompts as BAGEL frames them and prepares the ViT and VAE views of the images.

    A `ProcessorMixin` (without its loading machinery: the folder's tokenizer is all it saves), so
    that TRL treats BAGEL as the vision-language model it is and carries `pixel_values` and
    `image_sizes` (the ViT view) into its scoring passes, as it does for LLaVA-NeXT.
    """

    attributes: list[str] = []  # nothing loaded through ProcessorMixin.from_pretrained

    def __init__(self, tokenizer, vit_resize: VitResize | None = None, vae_image_size: int | None = None):
        self.tokenizer = tokenizer
        self.vit_resize = vit_resize or VitResize()
        self.vae_image_size = vae_image_size
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.chat_template = None

    def __repr__(self) -> str:
        return f"BagelProcessor(vit_resize={self.vit_resize}, vae_image_size={self.vae_image_size})"

    # -- prompts ------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **_: object,
    ) -> str:
        """`messages` (role/content dicts, content text or parts) -> BAGEL's framed prompt text."""
        if tokenize:
            raise ValueError("BagelProcessor.apply_chat_template renders text only (tokenize=False)")
        parts: list[str] = []
        for message in messages:
            content = message.get("content")
            items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
            for item in items:
                if item.get("type") == "image":
                    parts.append(IMAGE_PLACEHOLDER)
                elif item.get("type") == "text":
                    parts.append(f"{IM_START}{item['text']}{IM_END}")
                else:
                    raise ValueError(
                        f"unsupported message part {item.get('type')!r} (BAGEL takes text and image)"
                    )
        if add_generation_prompt:
            parts.append(IM_START)
        return "".join(parts)

    # -- batches ------------------------------------------------------------------------------
    def __call__(
        self,
        images: Sequence[Image.Image] | None = None,
        text: Sequence[str] | str | None = None,
        padding: bool = True,
        return_tensors: str = "pt",
        **_: object,
    ) -> BatchFeature:
        """Token ids of the rendered prompts (padded on the tokenizer's side) and the ViT view:
        `pixel_values` (B, 3, H, W) zero-padded and `image_sizes` (B, 2) each row's (H, W); with a
        `vae_image_size`, also the VAE view `latent_pixel_values` (B, 3, S, S), which the training
        forward encodes for the image's latent block. `images` may be one list per prompt (TRL's)."""
        texts = [text] if isinstance(text, str) else list(text or [])
        images = [
            im for item in (images or []) for im in (item if isinstance(item, list | tuple) else [item])
        ]
        encoded = self.tokenizer(texts, padding=padding, return_tensors="pt", add_special_tokens=False)
        data = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        images = list(images or [])
        if images:
            counts = (encoded["input_ids"] == self.image_token_id).sum(1).tolist()
            if len(images) != len(texts) or any(c != 1 for c in counts):
                raise ValueError(
                    f"BAGEL prompts take one image each: got {len(images)} images for {len(texts)} prompts "
                    f"holding {counts} {IMAGE_PLACEHOLDER} placeholders"
                )
            views = [self.vit_resize(image) for image in images]
            height = max(v.shape[1] for v in views)
            width = max(v.shape[2] for v in views)
            batch = torch.zeros(len(views), 3, height, width)
            for i, view in enumerate(views):
                batch[i, :, : view.shape[1], : view.shape[2]] = view
            data["pixel_values"] = batch
            data["image_sizes"] = torch.tensor([[v.shape[1], v.shape[2]] for v in views], dtype=torch.long)
            if self.vae_image_size is not None:
                data["latent_pixel_values"] = vae_pixel_values(images, self.vae_image_size)
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, path, **_: object) -> None:
        self.tokenizer.save_pretrained(path)
