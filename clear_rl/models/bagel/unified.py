"""`BagelUnifiedModel`: BAGEL behind the backbone protocol (models/backbone.py), and its loader.

The restoration branch is the LLM itself: `velocity` runs a noised latent block through the
generation expert attending to the prefix's per-layer keys and values (a `BagelCache`), and the
bridge is a clean latent block through the same expert (`BagelModel.bridge`).

The protocol tags are what the model learned. With `tags="text"` (the presets' value for a folder
that records none: BAGEL-7B-MoT, CLEAR's checkpoints) they stay plain text as CLEAR's release writes
them, the model restores after a finished turn holding `<image_restore>` (`turn_rules`, turns.py) and
only the placeholder `<|restored_pad|>` is added. With `tags="tokens"` (clear-rl's protocol: the
models clear-rl trained) the tags are added as single tokens in the embedding's unused rows (151665..
on Qwen2.5's 152064; no resize). Text decoding cuts the logits of the other unused rows, as BAGEL
does at id 151665.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig

from clear_rl.choices import TAGS, Tags
from clear_rl.errors import ClearRLError
from clear_rl.models.bagel.decoding import BagelDecoder, BagelRestorationContext
from clear_rl.models.bagel.latents import unpatchify_latent
from clear_rl.models.bagel.modeling import BagelModel, LatentSegment
from clear_rl.models.bagel.presets import BagelPreset, get_preset
from clear_rl.models.bagel.processing import IMAGE_PLACEHOLDER, BagelProcessor
from clear_rl.models.bagel.trainable import BagelTrainingMixin
from clear_rl.models.bagel.vae import encode as vae_encode
from clear_rl.models.chat import ATTRIBUTE as CHAT_ATTRIBUTE
from clear_rl.models.chat import ChatSettings, saved_chat_settings, saved_tags
from clear_rl.models.tokens import (
    CLEAR_SPECIAL_TOKENS,
    ClearTokenIds,
    add_clear_tokens,
    add_restored_pad,
    has_tag_tokens,
)
from clear_rl.models.turns import TurnRules

DEFAULT_VAE_IMAGE_SIZE = 512  # BAGEL's VAE transform keeps sides in [512, 1024]


@dataclass
class BagelUnifiedConfig:
    """What callers read off a backbone's `config`, for BAGEL (CLEAR's evaluation defaults)."""

    vae_image_size: int = DEFAULT_VAE_IMAGE_SIZE  # the square VAE view of training
    num_inference_steps: int = 49  # Euler steps: the preset's (CLEAR's eval: num_timesteps 50)
    flow_shift: float = 3.0
    image_token_id: int = -1  # the prompt's image placeholder (`<|image_pad|>`)
    pad_token_id: int = 0
    text_vocab_size: int = 151665  # logits at and past this id are cut, the protocol tags excepted
    model_type: str = "clear_bagel"  # what transformers, TRL and peft read off a model's config

    def get_text_config(self, *args, **kwargs) -> BagelUnifiedConfig:
        """TRL reads the text model's settings here (none of its logit scalings apply to BAGEL)."""
        return self


class BagelUnifiedModel(BagelTrainingMixin, nn.Module):
    """BAGEL (`BagelModel`) with the CLEAR tags in its tokenizer, as the protocol's backbone (and,
    through `BagelTrainingMixin`, the trainers')."""

    decoder_class = BagelDecoder

    def __init__(
        self,
        bagel: BagelModel,
        tokenizer,
        vae_image_size: int | None = None,
        preset: BagelPreset | str | None = None,
        tags: Tags | None = None,
    ):
        super().__init__()
        self.bagel = bagel
        self.preset = get_preset(preset).fitted(bagel.config)
        self.tags: Tags = tags or self.preset.tags
        self.tags_source = (
            "given: --tags, model.tags or tags=" if tags else f"the {self.preset.name} preset's"
        )  # for reports
        self._view: tuple[int, int] | None = None  # (H, W) of the VAE view in force (`vae_view`)
        cfg = bagel.config
        before = len(tokenizer)
        ids, added = _protocol_ids(tokenizer, self.tags)
        tags = sorted(i for i in vars(ids).values() if i is not None)
        rows = cfg.llm_json["vocab_size"]
        if max(tags) >= rows:
            raise ClearRLError(
                f"the CLEAR tokens {list(CLEAR_SPECIAL_TOKENS)} need ids {tags} but the BAGEL model has "
                f"{rows} embedding rows: the tokenizer ({before} tokens) leaves too few unused rows"
            )
        self._token_ids = ids
        largest = cfg.max_latent_size * cfg.latent_downsample
        size = vae_image_size or min(DEFAULT_VAE_IMAGE_SIZE, largest)
        if size % cfg.latent_downsample or size > largest:
            raise ClearRLError(
                f"vae_image_size {size} must be a multiple of {cfg.latent_downsample} and at most {largest} "
                f"(BAGEL's latent grid holds {cfg.max_latent_size} tokens a side)"
            )
        pad = tokenizer.pad_token_id
        self.config = BagelUnifiedConfig(
            vae_image_size=size,
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
            pad_token_id=pad if pad is not None else 0,
            text_vocab_size=before if added else tags[0],
            num_inference_steps=self.preset.steps,
            flow_shift=self.preset.shift,
        )
        self.tokenizer = tokenizer
        # peft names an adapter's base by it; `load_unified` reloads that folder under the adapters
        self.name_or_path = ""
        # Text generation settings, which trainers such as TRL's read from the model.
        self.generation_config = GenerationConfig(
            eos_token_id=cfg.im_end_id, pad_token_id=self.config.pad_token_id
        )

    # -- the protocol -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.bagel.device

    @property
    def dtype(self) -> torch.dtype:
        return self.bagel.dtype

    @property
    def token_ids(self) -> ClearTokenIds:
        return self._token_ids

    @property
    def turn_rules(self) -> TurnRules | None:
        """The release's turn loop (tags "text"); None for clear-rl's single-token protocol."""
        if self.tags != "text":
            return None
        core = self.bagel.config
        return TurnRules(
            self.preset.max_turns, self.preset.turn_tokens, core.im_end_id, core.im_start_id, self.tokenizer
        )

    def encode_view(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents as inference reads them: the preset's VAE posterior
        (`sample`, drawn with `generator`, as BAGEL's autoencoder does; or its `mode`)."""
        return vae_encode(self.bagel.vae, images, self.preset.vae_posterior, generator)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of a latent of the VAE view in force: the square `vae_image_size` one, or inside
        `vae_view` the aspect view of the images being answered."""
        cfg = self.bagel.config
        height, width = self._view or (self.config.vae_image_size, self.config.vae_image_size)
        return (cfg.latent_channels, height // cfg.vae_downsample, width // cfg.vae_downsample)

    @contextmanager
    def vae_view(self, size: tuple[int, int]) -> Iterator[BagelUnifiedModel]:
        """Within the block, restorations (and `latent_shape`) have the VAE view (H, W) of the images
        being answered, as BAGEL restores at the input's size (`clear_rl.rollout.answering` enters it)."""
        height, width = (int(s) for s in size)
        step, largest = (
            self.bagel.config.latent_downsample,
            self.bagel.config.latent_downsample * (self.bagel.config.max_latent_size),
        )
        if height % step or width % step or max(height, width) > largest:
            raise ClearRLError(
                f"VAE view {height}x{width} must have sides that are multiples of {step} and at most {largest}"
            )
        previous, self._view = self._view, (height, width)
        try:
            yield self
        finally:
            self._view = previous

    @property
    def num_restored_tokens(self) -> int:
        """Latent tokens of one restored latent (its block's markers and turn framing aside)."""
        p = self.bagel.config.latent_patch_size
        return (self.latent_shape[1] // p) * (self.latent_shape[2] // p)

    def cut_token_ids(self) -> list[int]:
        """Unused rows past the tokenizer's text vocabulary, the protocol tags excepted."""
        tags = set(vars(self._token_ids).values())
        rows = self.bagel.config.llm_json["vocab_size"]
        return [i for i in range(self.config.text_vocab_size, rows) if i not in tags]

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.bagel.encode_latents(images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.bagel.decode_latents(latents)

    def bridge(self, latents: torch.Tensor) -> torch.Tensor:
        return self.bagel.bridge(latents)

    def flow_source_mean(self, degraded_latents: torch.Tensor) -> None:
        """BAGEL's flow starts from pure noise."""
        return None

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, context: BagelRestorationContext) -> torch.Tensor:
        """Velocities (R, C, h, w) of noised latents at times t (R,), each a noised latent block
        after its row's cached prefix (through the generation expert); the cache is unchanged."""
        model = self.bagel
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).expand(x_t.shape[0])
        samples: list[list] = [[] for _ in range(context.cache.num_samples)]
        for j, row in enumerate(context.rows.tolist()):
            samples[row] = [LatentSegment(x_t[j], t[j], noised=True)]
        output = model.forward(samples, cache=context.cache, update_cache=False)
        return torch.stack(model.latent_velocities(output)).to(x_t.dtype)

    def latents_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, 4C) latent tokens -> (C, h, w) of the protocol's latent shape."""
        c, h, w = self.latent_shape
        return unpatchify_latent(tokens, c, h, w, self.bagel.config.latent_patch_size)


def preset_chat(preset: BagelPreset) -> ChatSettings | None:
    """The chat a preset asks a folder with when the folder records none (None: clear-rl's default)."""
    if preset.system_prompt is None:
        return None
    return ChatSettings(
        preset.system_prompt,
        source=f"the {preset.name} preset's: CLEAR's INTERLEAVE_REASON_SYSTEM_PROMPT (prompts.py), "
        "no clear_rl_recipe.yaml beside the model",
    )


def _protocol_ids(tokenizer, tags: Tags) -> tuple[ClearTokenIds, int]:
    """The tokenizer's protocol ids under `tags` (adding what it lacks) and how many tokens were added."""
    if tags == "tokens":
        added = add_clear_tokens(tokenizer)
        return ClearTokenIds.from_tokenizer(tokenizer), added
    if tags != "text":
        raise ClearRLError(f"tags must be one of {list(TAGS)}, got {tags!r}")
    if has_tag_tokens(tokenizer):
        raise ClearRLError(
            "tags 'text' reads <think>, <answer>, <image_restore> as plain text, but this tokenizer holds "
            "them as tokens of their own (a model trained with clear-rl's protocol): load it with tags='tokens'"
        )
    added = add_restored_pad(tokenizer)
    return ClearTokenIds.text_tags(tokenizer), added


def is_bagel_folder(path: str | os.PathLike) -> bool:
    """Whether `path` holds the official BAGEL layout (its two JSON configs, weights, the VAE)."""
    folder = Path(path)
    weights = (folder / "ema.safetensors").is_file() or (folder / "model.safetensors").is_file()
    return (
        (folder / "llm_config.json").is_file()
        and (folder / "vit_config.json").is_file()
        and (folder / "ae.safetensors").is_file()
        and weights
    )


def load_bagel_unified(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = "auto",
    device: torch.device | str | None = None,
    vae_image_size: int | None = None,
    preset: BagelPreset | str | None = None,
    tags: Tags | None = None,
    **load_kwargs,
) -> tuple[BagelUnifiedModel, BagelProcessor]:
    """An official-layout BAGEL / CLEAR folder as (the protocol's model, its processor), from local
    files only. `dtype="auto"` keeps the file's; `device` defaults to CUDA when there is one;
    `preset` names the inference preset (models/bagel/presets.py; default clear-release); `tags` how
    the model writes the protocol tags (default: what the folder records, `saved_tags`, else the
    preset's)."""
    from clear_rl.models.bagel.io import load_bagel, load_bagel_tokenizer

    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else getattr(torch, dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bagel = load_bagel(path, dtype=dtype, device=device, **load_kwargs)
    tokenizer = load_bagel_tokenizer(path)
    recorded, source = (None, "") if tags else saved_tags(path)
    model = BagelUnifiedModel(
        bagel, tokenizer, vae_image_size=vae_image_size, preset=preset, tags=tags or recorded
    ).eval()
    if recorded:
        model.tags_source = f"recorded by {source}"
    model.name_or_path = str(Path(path).resolve())
    setattr(model, CHAT_ATTRIBUTE, saved_chat_settings(path, preset_chat(model.preset)))
    return model, BagelProcessor(tokenizer, model.preset, vae_image_size=model.config.vae_image_size)
