"""`BagelModel`: BAGEL-7B-MoT in plain PyTorch, over a packed sequence of segments.

A sample is a list of segments: `TextSegment` (token ids, causal), `VitSegment` (an image for the
understanding path) and `LatentSegment` (a VAE latent for the generation path, clean or noised).
`pack` lays several samples out as one sequence, as BAGEL does: each image becomes a block
`<|vision_start|> tokens <|vision_end|>` whose tokens all share one RoPE position (the next one
advances by one), attend to each other bidirectionally, and, for a noised latent block, are hidden
from every later token (which takes the noised block's position: nothing later sees it).
Samples in one pack never see each other.

The module tree is exactly the checkpoint's (`language_model`, `vit_model`, `connector`,
`vit_pos_embed`, `time_embedder`, `vae2llm`, `llm2vae`, `latent_pos_embed`), so
`load_state_dict(strict=True)` of `ema.safetensors` works once the two sin-cos tables (recomputed
here, non-persistent buffers) are taken out. The VAE is frozen and kept beside that tree (`.vae`),
moved and cast with the model but outside its state dict, which holds exactly what the official
file holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL
from torch import nn

from clear_rl.models.bagel import vae as vae_io
from clear_rl.models.bagel.config import BagelConfig
from clear_rl.models.bagel.latents import (
    PositionEmbedding,
    TimestepEmbedder,
    patchify_latent,
    unpatchify_latent,
)
from clear_rl.models.bagel.mot import BagelCache, MoTForCausalLM, Routing
from clear_rl.models.bagel.vision import MLPConnector, NavitVisionModel, grid_position_ids, patchify_image


@dataclass
class TextSegment:
    """Token ids (n,), causal. Framing (`<|im_start|> ... <|im_end|>`) is the caller's."""

    input_ids: torch.Tensor


@dataclass
class VitSegment:
    """An image (3, H, W) in [-1, 1] for the understanding path; sides multiples of the ViT patch."""

    pixel_values: torch.Tensor


@dataclass
class LatentSegment:
    """A normalised VAE latent (C, h, w) for the generation path, at flow time `timestep`.

    `noised=True` marks a training-time noised block (x_t): no later token may attend to it.
    A clean context latent (and the bridge) uses `timestep=0.0, noised=False`.
    """

    latents: torch.Tensor
    timestep: float | torch.Tensor = 0.0
    noised: bool = False


Segment = TextSegment | VitSegment | LatentSegment


@dataclass
class Span:
    """Where one segment landed in the packed sequence: [start, end), markers included for images;
    its own tokens (no markers) are [inner_start, inner_end)."""

    sample: int
    kind: str  # "text" | "vit" | "latent"
    start: int
    end: int
    inner_start: int
    inner_end: int
    grid: tuple[int, ...] = ()  # (C, h, w) of a latent, (rows, cols) of a ViT patch grid


@dataclass
class PackedSequence:
    """One packed sequence: what goes where, who may see whom, and at which RoPE position."""

    length: int
    text_ids: torch.Tensor
    text_index: torch.Tensor
    vit_patches: torch.Tensor
    vit_index: torch.Tensor
    vit_position_ids: torch.Tensor
    vit_lengths: list[int]
    latent_tokens: torch.Tensor
    latent_index: torch.Tensor
    latent_position_ids: torch.Tensor
    latent_timesteps: torch.Tensor
    position_ids: torch.Tensor
    sample_ids: torch.Tensor
    block_ids: torch.Tensor  # -1 for text tokens, else the image block's id
    hidden: torch.Tensor  # True for tokens of noised latent blocks
    next_positions: torch.Tensor  # (S,) each sample's next RoPE position after this pack
    spans: list[Span] = field(default_factory=list)

    @property
    def is_gen(self) -> torch.Tensor:
        """(N,) True where the generation expert applies (latent tokens, not their markers)."""
        mask = torch.zeros(self.length, dtype=torch.bool, device=self.position_ids.device)
        mask[self.latent_index] = True
        return mask

    def attention_mask(self, cache: BagelCache | None = None) -> torch.Tensor:
        """(N, L_cache + N) bool, True where query row may attend to key column."""
        idx = torch.arange(self.length, device=self.position_ids.device)
        same_sample = self.sample_ids[:, None] == self.sample_ids[None, :]
        causal = idx[None, :] <= idx[:, None]
        same_block = (self.block_ids[:, None] == self.block_ids[None, :]) & (self.block_ids[:, None] >= 0)
        hidden_key = self.hidden[None, :] & ~same_block
        mask = same_sample & (causal | same_block) & ~hidden_key
        if cache is not None and len(cache):
            past = (cache.sample_ids[None, :] == self.sample_ids[:, None]) & cache.visible[None, :]
            mask = torch.cat([past, mask], dim=1)
        return mask


@dataclass
class BagelOutput:
    """`last_hidden_state` (N, D) after each expert's final norm; `hidden_states` per layer
    (input embeddings first, before the final norm) when asked; the cache when one was used."""

    last_hidden_state: torch.Tensor
    packed: PackedSequence
    hidden_states: tuple[torch.Tensor, ...] | None = None
    cache: BagelCache | None = None


class BagelModel(nn.Module):
    """BAGEL's unified model: the MoT LLM, SigLIP + connector, the latent interface, and the VAE."""

    def __init__(self, config: BagelConfig, vae: AutoencoderKL | None = None):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        vit_config = config.vit
        self.language_model = MoTForCausalLM(config.llm, config.qk_norm)
        self.vit_model = NavitVisionModel(vit_config)
        self.connector = MLPConnector(vit_config.hidden_size, hidden, config.connector_act)
        self.vit_pos_embed = PositionEmbedding(config.vit_max_num_patch_per_side, hidden)
        self.time_embedder = TimestepEmbedder(hidden, config.timestep_frequency_dim)
        self.vae2llm = nn.Linear(config.patch_latent_dim, hidden)
        self.llm2vae = nn.Linear(hidden, config.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(config.max_latent_size, hidden)
        nn.init.zeros_(self.llm2vae.weight)  # BAGEL starts the velocity head at zero
        nn.init.zeros_(self.llm2vae.bias)
        self.set_vae(vae if vae is not None else vae_io.build_vae(config.vae))

    # -- the VAE, beside the module tree -------------------------------------------------------
    def set_vae(self, vae: AutoencoderKL) -> None:
        """Attach the (frozen) VAE without registering it, so the state dict stays the checkpoint's."""
        vae.requires_grad_(False)
        vae.train(self.training)
        object.__setattr__(self, "vae", vae)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if "vae" in self.__dict__:
            self.vae._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> BagelModel:
        super().train(mode)
        if "vae" in self.__dict__:
            self.vae.train(mode)
        return self

    # Read off `vae2llm`: peft's trainable-token wrapper of the embeddings merges its weight when
    # read, which under FSDP2 mixes the sharded base weight with the plain token rows.
    @property
    def device(self) -> torch.device:
        return self.vae2llm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae2llm.weight.dtype

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the non-persistent buffers (RoPE frequencies, both sin-cos tables).

        Loading builds the model on the meta device, where these stay empty until recomputed.
        """
        device = device if device is not None else self.device
        self.language_model.model.reset_rotary(device)
        self.vit_pos_embed.reset(device)
        self.latent_pos_embed.reset(device)

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Recompute each MoT layer in backward (training passes without a cache)."""
        self.language_model.model.gradient_checkpointing = enable

    # -- packing --------------------------------------------------------------------------------
    def text_segment(self, tokenizer, text: str, framed: bool = True) -> TextSegment:
        """`text` as a segment, framed `<|im_start|> ... <|im_end|>` as BAGEL frames every text
        turn (no chat roles) unless `framed=False`."""
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if framed:
            ids = [self.config.im_start_id, *ids, self.config.im_end_id]
        return TextSegment(torch.tensor(ids, dtype=torch.long))

    def pack(self, samples: Sequence[Sequence[Segment]], cache: BagelCache | None = None) -> PackedSequence:
        """Lay out `samples` (each a list of segments) as one sequence, after `cache` if given."""
        cfg = self.config
        device = self.device
        if cache is not None and cache.num_samples != len(samples):
            raise ValueError(f"the cache holds {cache.num_samples} samples, got {len(samples)}")
        starts = cache.next_positions.tolist() if cache is not None else [0] * len(samples)
        text_ids, text_index, positions, sample_ids, block_ids, hidden = [], [], [], [], [], []
        vit_patches, vit_index, vit_pos, vit_lengths = [], [], [], []
        lat_tokens, lat_index, lat_pos, lat_t = [], [], [], []
        spans: list[Span] = []
        cursor, block = 0, 0
        next_positions = []

        def marker(token_id: int) -> None:
            nonlocal cursor
            text_ids.append(torch.tensor([token_id], device=device))
            text_index.append(torch.tensor([cursor], device=device))
            cursor += 1

        for s, segments in enumerate(samples):
            position = int(starts[s])
            for seg in segments:
                start = cursor
                if isinstance(seg, TextSegment):
                    ids = torch.as_tensor(seg.input_ids, device=device).long().flatten()
                    n = ids.numel()
                    text_ids.append(ids)
                    text_index.append(torch.arange(cursor, cursor + n, device=device))
                    cursor += n
                    positions.append(torch.arange(position, position + n, device=device))
                    block_ids.append(torch.full((n,), -1, device=device))
                    hidden.append(torch.zeros(n, dtype=torch.bool, device=device))
                    spans.append(Span(s, "text", start, cursor, start, cursor))
                    position += n
                elif isinstance(seg, VitSegment | LatentSegment):
                    marker(cfg.vision_start_id)
                    inner = cursor
                    if isinstance(seg, VitSegment):
                        p = cfg.vit_json["patch_size"]
                        image = seg.pixel_values.to(device)
                        rows, cols = image.shape[1] // p, image.shape[2] // p
                        patches = patchify_image(image, p)
                        n = patches.shape[0]
                        vit_patches.append(patches)
                        vit_pos.append(grid_position_ids(rows, cols, cfg.vit_max_num_patch_per_side, device))
                        vit_lengths.append(n)
                        vit_index.append(torch.arange(cursor, cursor + n, device=device))
                        kind, grid, noised = "vit", (rows, cols), False
                    else:
                        p = cfg.latent_patch_size
                        latent = seg.latents.to(device)
                        tokens = patchify_latent(latent, p)
                        n = tokens.shape[0]
                        rows, cols = latent.shape[1] // p, latent.shape[2] // p
                        lat_tokens.append(tokens)
                        lat_pos.append(grid_position_ids(rows, cols, cfg.max_latent_size, device))
                        lat_t.append(
                            torch.as_tensor(seg.timestep, device=device, dtype=torch.float32).expand(n)
                        )
                        lat_index.append(torch.arange(cursor, cursor + n, device=device))
                        kind, grid, noised = "latent", tuple(latent.shape), bool(seg.noised)
                    cursor += n
                    marker(cfg.vision_end_id)
                    total = n + 2
                    positions.append(torch.full((total,), position, device=device))
                    block_ids.append(torch.full((total,), block, device=device))
                    hidden.append(torch.full((total,), noised, dtype=torch.bool, device=device))
                    spans.append(Span(s, kind, start, cursor, inner, inner + n, grid))
                    block += 1
                    # A noised block is a side branch no later token sees: the next token takes its
                    # position, as after a velocity call at sampling time (the cache never holds it).
                    position += 0 if noised else 1
                else:
                    raise TypeError(f"unknown segment type {type(seg).__name__}")
                sample_ids.append(torch.full((cursor - start,), s, device=device))
            next_positions.append(position)

        def cat(parts: list[torch.Tensor], empty: tuple[int, ...] = (0,), dtype=torch.long) -> torch.Tensor:
            return torch.cat(parts) if parts else torch.zeros(empty, dtype=dtype, device=device)

        patch_dim = cfg.vit_json["num_channels"] * cfg.vit_json["patch_size"] ** 2
        return PackedSequence(
            length=cursor,
            text_ids=cat(text_ids),
            text_index=cat(text_index),
            vit_patches=cat(vit_patches, (0, patch_dim), torch.float32),
            vit_index=cat(vit_index),
            vit_position_ids=cat(vit_pos),
            vit_lengths=vit_lengths,
            latent_tokens=cat(lat_tokens, (0, cfg.patch_latent_dim), torch.float32),
            latent_index=cat(lat_index),
            latent_position_ids=cat(lat_pos),
            latent_timesteps=cat(lat_t, (0,), torch.float32),
            position_ids=cat(positions),
            sample_ids=cat(sample_ids),
            block_ids=cat(block_ids),
            hidden=cat(hidden, (0,), torch.bool),
            next_positions=torch.tensor(next_positions, dtype=torch.long, device=device),
            spans=spans,
        )

    # -- embeddings -------------------------------------------------------------------------------
    def embed_vit(
        self, patches: torch.Tensor, position_ids: torch.Tensor, lengths: Sequence[int]
    ) -> torch.Tensor:
        """Packed ViT patches -> LLM-width tokens: SigLIP, connector, + vit_pos_embed."""
        weight = self.vit_model.vision_model.embeddings.patch_embedding.weight
        features = self.vit_model(patches.to(weight.dtype), position_ids, lengths)
        tokens = self.connector(features)
        return tokens + self.vit_pos_embed(position_ids).to(tokens.dtype)

    def embed_latents(
        self, tokens: torch.Tensor, timesteps: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Patchified latents (n, 4C) at times (n,) -> `vae2llm(x) + time_embedder(t) + latent_pos_embed`."""
        x = self.vae2llm(tokens.to(self.vae2llm.weight.dtype))
        return x + self.time_embedder(timesteps).to(x.dtype) + self.latent_pos_embed(position_ids).to(x.dtype)

    def embed(self, packed: PackedSequence) -> torch.Tensor:
        """The packed sequence's input embeddings (N, D)."""
        text = self.language_model.model.embed_tokens(packed.text_ids)  # (its weight: sharded until called)
        out = text.new_zeros((packed.length, self.config.hidden_size))
        out[packed.text_index] = text
        if packed.vit_index.numel():
            out[packed.vit_index] = self.embed_vit(
                packed.vit_patches, packed.vit_position_ids, packed.vit_lengths
            ).to(out.dtype)
        if packed.latent_index.numel():
            out[packed.latent_index] = self.embed_latents(
                packed.latent_tokens, packed.latent_timesteps, packed.latent_position_ids
            ).to(out.dtype)
        return out

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        samples: Sequence[Sequence[Segment]] | PackedSequence,
        cache: BagelCache | None = None,
        update_cache: bool = False,
        output_hidden_states: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> BagelOutput:
        """Run the MoT over `samples` (or an already packed sequence).

        With `cache`, the new tokens attend to the cached prefix (what it lets them see);
        `update_cache=True` appends their keys and values (a new cache is made if none is given).
        `attention_mask` replaces the packed sequence's own (`PackedSequence.attention_mask`).
        """
        packed = samples if isinstance(samples, PackedSequence) else self.pack(samples, cache)
        if update_cache and cache is None:
            cache = BagelCache.empty(self.config.num_layers, packed.next_positions.shape[0], self.device)
        mask = packed.attention_mask(cache) if attention_mask is None else attention_mask
        routing = Routing.from_mask(packed.is_gen)
        hidden, states = self.language_model.model(
            self.embed(packed),
            routing,
            packed.position_ids,
            mask,
            cache=cache,
            update_cache=update_cache,
            output_hidden_states=output_hidden_states,
        )
        if update_cache:
            cache.sample_ids = torch.cat([cache.sample_ids, packed.sample_ids])
            cache.visible = torch.cat([cache.visible, ~packed.hidden])
            cache.next_positions = packed.next_positions
            cache.num_blocks += sum(span.kind != "text" for span in packed.spans)
        return BagelOutput(hidden, packed, states, cache)

    # -- heads ----------------------------------------------------------------------------------
    def text_logits(self, output: BagelOutput, index: torch.Tensor | None = None) -> torch.Tensor:
        """LM-head logits at `index` (default: every text and marker position), (n, vocab)."""
        index = output.packed.text_index if index is None else index
        return self.language_model.lm_head(output.last_hidden_state[index])

    def latent_velocities(self, output: BagelOutput) -> list[torch.Tensor]:
        """The velocity `llm2vae(h)` of each latent segment, as (C, h, w), in pack order."""
        p = self.config.latent_patch_size
        result = []
        for span in output.packed.spans:
            if span.kind == "latent":
                tokens = self.llm2vae(output.last_hidden_state[span.inner_start : span.inner_end])
                c, h, w = span.grid
                result.append(unpatchify_latent(tokens, c, h, w, p))
        return result

    # -- the backbone protocol ------------------------------------------------------------------
    def encode_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised latents (the posterior mode unless
        `config.vae_encode == "sample"`, BAGEL's own choice)."""
        return vae_io.encode(self.vae, images, self.config.vae_encode, generator)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images (B, 3, H, W) in [-1, 1]."""
        return vae_io.decode(self.vae, latents)

    def bridge(self, latents: torch.Tensor) -> torch.Tensor:
        """Restored latents (B, C, h, w) -> the bridge block's input embeddings (B, n, D).

        BAGEL's bridge is no extra module: x0 enters as a clean latent block (t = 0) through the
        generation expert, which `forward` does for a `LatentSegment(x0)`; this is its embedding.
        """
        cfg = self.config
        p = cfg.latent_patch_size
        rows, cols = latents.shape[2] // p, latents.shape[3] // p
        tokens = torch.stack([patchify_latent(latent, p) for latent in latents])
        ids = grid_position_ids(rows, cols, cfg.max_latent_size, latents.device)
        t = torch.zeros(tokens.shape[1], device=latents.device)
        return torch.stack([self.embed_latents(row, t, ids) for row in tokens])

    def prefill(self, samples: Sequence[Sequence[Segment]], cache: BagelCache | None = None) -> BagelOutput:
        """Run `samples` into a (new or given) cache: the restoration branch's context."""
        return self.forward(samples, cache=cache, update_cache=True)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor | float, context: BagelCache) -> torch.Tensor:
        """The flow velocity (B, C, h, w) of noised latents x_t at time t, one per cached sample.

        The latent block runs through the generation expert attending to the cached prefix (every
        layer's keys and values of the context); the cache is left unchanged.
        """
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).expand(x_t.shape[0])
        samples = [[LatentSegment(x_t[i], t[i], noised=True)] for i in range(x_t.shape[0])]
        output = self.forward(samples, cache=context, update_cache=False)
        return torch.stack(self.latent_velocities(output)).to(x_t.dtype)
