"""BAGEL's prompt and image processing, behind the processor interface clear-rl's answering path uses.

A prompt is rendered as BAGEL frames it: every text turn `<|im_start|> text <|im_end|>` (no chat
roles), the image as one `<|image_pad|>` placeholder that the decoder expands into the image's two
blocks, a VAE-latent block and a ViT block (CLEAR's order), and the answer turn opened with
`<|im_start|>`. Token ids (left-padded) carry the prompt, so the rollout loop and TRL see an ordinary
id batch.

Images, as the model's inference preset (models/bagel/presets.py) sizes them with BAGEL's own
`ImageTransform` arithmetic: the VAE view keeps the aspect ratio (`vae_views="aspect"`, what both
official inferencers do, so a restoration has the input's VAE size) and the ViT view is taken of the
VAE-resized image, as they take it. Training packs one latent size per run and uses the square
`vae_image_size` view instead (`vae_views="square"`). ViT views of a batch are zero-padded to one
tensor with their sizes beside; VAE views of one batch must share a size (the answering path groups
rows by it, `clear_rl.rollout.answering.vae_view_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from clear_rl.errors import ClearRLError
from clear_rl.io.images import pil_to_tensor
from clear_rl.models.bagel.presets import BagelPreset, get_preset
from clear_rl.models.processing import vae_pixel_values

IMAGE_PLACEHOLDER = "<|image_pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VaeViews = Literal["aspect", "square"]


class BagelProcessor(ProcessorMixin):
    """Renders chat prompts as BAGEL frames them and prepares the ViT and VAE views of the images.

    A `ProcessorMixin` (without its loading machinery: the folder's tokenizer is all it saves), so
    that TRL treats BAGEL as the vision-language model it is and carries `pixel_values` and
    `image_sizes` (the ViT view) into its scoring passes, as it does for LLaVA-NeXT.
    """

    attributes: list[str] = []  # nothing loaded through ProcessorMixin.from_pretrained

    def __init__(
        self,
        tokenizer,
        preset: BagelPreset | str | None = None,
        vae_image_size: int | None = None,
        vae_views: VaeViews = "aspect",
    ):
        self.tokenizer = tokenizer
        self.preset = get_preset(preset)  # fitted to the model by `load_bagel_unified`
        self.vae_image_size = vae_image_size
        self.vae_views = vae_views
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.chat_template = None

    def __repr__(self) -> str:
        return (
            f"BagelProcessor(preset={self.preset.name!r}, vae_views={self.vae_views!r}, "
            f"vae_image_size={self.vae_image_size})"
        )

    # -- images -------------------------------------------------------------------------------
    def vit_view(self, image: Image.Image) -> torch.Tensor:
        """(3, H, W) in [-1, 1]: the ViT's view, of the VAE-resized image where the preset says so."""
        image = image.convert("RGB")
        if self.preset.vit_from_vae_view:
            image = self.preset.vae.resize(image)
        return self.preset.vit(image)

    def vae_size(self, image: Image.Image) -> tuple[int, int]:
        """(height, width) of the image's VAE view."""
        if self.vae_views == "square":
            return self._square_size(), self._square_size()
        width, height = self.preset.vae.size(*image.size)
        return height, width

    def vae_pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1]: the VAE's view of images that share one view size."""
        if self.vae_views == "square":
            return vae_pixel_values(images, self._square_size())
        sizes = {self.vae_size(image) for image in images}
        if len(sizes) > 1:
            raise ClearRLError(
                f"one batch of BAGEL rows takes one VAE view size, got {sorted(sizes)}: answer rows grouped "
                "by size (clear_rl.rollout.answering.vae_view_groups)"
            )
        return (
            torch.stack([pil_to_tensor(self.preset.vae.resize(image)) for image in images])
            .mul_(2.0)
            .sub_(1.0)
        )

    def _square_size(self) -> int:
        if self.vae_image_size is None:
            raise ClearRLError("a square VAE view needs the processor's vae_image_size")
        return self.vae_image_size

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
            views = [self.vit_view(image) for image in images]
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
