"""`composed`: any Hugging Face VLM + a diffusers VAE + a flow-matching restoration head + the bridge.

This turns an understanding-only VLM into a unified model for CLEAR:
- understanding: the VLM itself (`AutoModelForImageTextToText`), unchanged;
- generation: a diffusers `PixArtTransformer2DModel` (a DiT) predicts the flow velocity of the
  clean latent; its input is the noisy latent concatenated with the degraded image's latent, and
  its cross-attention reads a projection of the LLM's hidden states up to `<image_restore>`;
- the latent bridge puts a restored latent back into the LLM's context at the
  `<|restored_pad|>` positions.

It is a `PreTrainedModel`, so `transformers.Trainer`, TRL, peft and accelerate handle it like any
other model: one folder holds every part (`save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers import AutoencoderKL, PixArtTransformer2DModel
from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec

from clear_rl.choices import FLOW_SOURCES
from clear_rl.models.bridge import LatentBridge
from clear_rl.models.composed.context import RestorationContext
from clear_rl.models.positions import positions_for_forward
from clear_rl.models.same_work import SameWork, with_idle_work
from clear_rl.models.tokens import ClearTokenIds, up_to_last


class ComposedUnifiedConfig(PreTrainedConfig):
    """Configuration of a composed unified model: the VLM's config plus the generative parts."""

    model_type = "clear_composed"
    sub_configs_defaults = {"vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="llava")}

    vlm_config: dict | PreTrainedConfig | None = None
    vae_config: dict | None = None
    head_config: dict | None = None
    bridge_config: dict | None = None
    # Ids of the CLEAR protocol tokens in the processor's tokenizer (see models/tokens.py).
    think_start_token_id: int = -1
    think_end_token_id: int = -1
    answer_start_token_id: int = -1
    answer_end_token_id: int = -1
    image_restore_token_id: int = -1
    restored_pad_token_id: int = -1
    # Restoration works on images resized to this side, in the VAE's latent space.
    vae_image_size: int = 512
    # Sampling defaults of the restoration branch (CLEAR: 30 steps at shift 3.0 during GRPO).
    flow_shift: float = 3.0
    num_inference_steps: int = 30
    # Which LLM hidden layer conditions the restoration head (-1: the last).
    condition_layer: int = -1
    # Where the restoration flow starts: pure noise (the paper), or noise centred on the degraded
    # latent, so the head learns the correction d - x0 rather than the whole image (flow.py).
    flow_source: str = "noise"

    def get_text_config(self, *args, **kwargs) -> PreTrainedConfig:
        return self.vlm_config.get_text_config(*args, **kwargs)

    @property
    def auto_map(self) -> dict:
        """Empty: not remote code. TRL reads it when it builds a full-parameter GRPO run's reference
        model (beta > 0) from the model's folder."""
        return {}

    @property
    def image_token_id(self) -> int:
        """The VLM's image (ViT) placeholder token, which libraries read off a VLM's config."""
        return self.vlm_config.image_token_id


class ComposedUnifiedModel(PreTrainedModel):
    """A unified (understand + restore) model built from a VLM, a VAE, a DiT head and a bridge."""

    config_class = ComposedUnifiedConfig
    base_model_prefix = "composed"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Sharded training's same-work rule (models/same_work.py): set by the trainers, never by users.
    same_work: SameWork | None = None

    @property
    def decoder_class(self) -> type:
        """Interleaved generation's model calls for this backbone (models/backbone.py)."""
        from clear_rl.models.composed.decoding import ComposedDecoder

        return ComposedDecoder

    def __init__(
        self,
        config: ComposedUnifiedConfig,
        vlm: PreTrainedModel | None = None,
        vae: AutoencoderKL | None = None,
        restoration_head: PixArtTransformer2DModel | None = None,
        latent_bridge: LatentBridge | None = None,
    ):
        super().__init__(config)
        self.vlm = vlm if vlm is not None else AutoModelForImageTextToText.from_config(config.vlm_config)
        self.vae = vae if vae is not None else AutoencoderKL.from_config(config.vae_config)
        self.restoration_head = (
            restoration_head
            if restoration_head is not None
            else PixArtTransformer2DModel.from_config(config.head_config)
        )
        self.latent_bridge = (
            latent_bridge if latent_bridge is not None else LatentBridge.from_config(config.bridge_config)
        )
        self.post_init()
        # Text generation settings come from the VLM (trainers such as TRL's read them from the model).
        self.generation_config = GenerationConfig.from_model_config(config.get_text_config())

    # -- weights ---------------------------------------------------------------------------
    def _init_weights(self, module: torch.nn.Module) -> None:
        """Sub-models initialise themselves; only buffers that loading cannot restore are rebuilt.

        transformers loads on the meta device and restores saved tensors, so a diffusers
        `PatchEmbed`'s non-persistent sin-cos table must be recomputed here. The default
        `_init_weights` would re-draw every Linear and Conv of the diffusers parts, including a
        pretrained VAE passed to `__init__`, so it is deliberately not used.
        """
        if (
            isinstance(module, PatchEmbed)
            and module.pos_embed is not None
            and module.pos_embed_max_size is None
        ):
            grid = module.height  # square grid of the configured sample size
            table = get_2d_sincos_pos_embed(
                module.proj.out_channels,
                grid,
                base_size=module.base_size,
                interpolation_scale=module.interpolation_scale,
                output_type="pt",
            )
            module.pos_embed = table.float().unsqueeze(0).to(module.proj.weight.device)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.vlm.get_output_embeddings()

    @property
    def token_ids(self) -> ClearTokenIds:
        c = self.config
        return ClearTokenIds(
            c.think_start_token_id,
            c.think_end_token_id,
            c.answer_start_token_id,
            c.answer_end_token_id,
            c.image_restore_token_id,
            c.restored_pad_token_id,
        )

    # -- shapes ----------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent of one `vae_image_size` image."""
        side = self.config.vae_image_size // self.vae_scale_factor
        return (self.vae.config.latent_channels, side, side)

    @property
    def num_restored_tokens(self) -> int:
        """How many `<|restored_pad|>` positions one restored latent occupies."""
        rows, cols = self.latent_bridge.grid_size(self.latent_shape[1:])
        return rows * cols

    # -- the protocol ------------------------------------------------------------------------
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised latents (the posterior mean, deterministic)."""
        vae = self.vae
        posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
        shift = vae.config.shift_factor or 0.0
        return (posterior.mode() - shift) * vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images (B, 3, H, W) in [-1, 1] (for reports; CLEAR never needs it)."""
        vae = self.vae
        shift = vae.config.shift_factor or 0.0
        z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + shift
        return vae.decode(z).sample.clamp(-1.0, 1.0)

    def bridge(self, latents: torch.Tensor) -> torch.Tensor:
        """Restored latents (B, C, h, w) -> LLM input embeddings (B, N, D)."""
        return self.latent_bridge(latents)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, context: RestorationContext) -> torch.Tensor:
        """The restoration head's flow velocity at noise level `t` (B,), conditioned on `context`."""
        head = self.restoration_head
        dtype = head.dtype
        x = torch.cat([x_t, context.degraded_latents.to(x_t.dtype)], dim=1).to(dtype)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).expand(x.shape[0])
        out = head(
            hidden_states=x,
            encoder_hidden_states=context.hidden_states.to(dtype),
            timestep=t * 1000.0,  # diffusers' convention: timesteps on a 0..1000 scale
            encoder_attention_mask=context.attention_mask,
        ).sample
        return out.to(x_t.dtype)

    def flow_source_mean(self, degraded_latents: torch.Tensor) -> torch.Tensor | None:
        """The mean of the restoration flow's source: the degraded latent, or None (pure noise)."""
        if self.config.flow_source not in FLOW_SOURCES:
            raise ValueError(f"flow_source must be 'noise' or 'degraded', got {self.config.flow_source!r}")
        return degraded_latents.float() if self.config.flow_source == "degraded" else None

    def restoration_context(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_states: torch.Tensor,
        degraded_latents: torch.Tensor,
    ) -> RestorationContext:
        """The head's context: hidden states up to and including each row's last `<image_restore>`.

        Causality makes these equal in a teacher-forced pass over the whole sequence and at the
        moment of generation, so training and sampling condition on the same thing. The last one,
        because a prompt may name the tag too (the default system prompt does); a completion holds
        at most one.
        """
        keep = attention_mask.bool() & self.up_to_last_restore(input_ids)
        return RestorationContext(hidden_states, keep, degraded_latents)

    def up_to_last_restore(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions up to and including each row's last `<image_restore>` (all, in a row without one)."""
        return up_to_last(input_ids, self.config.image_restore_token_id)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions holding the VLM's own image (ViT) tokens."""
        return input_ids == self.config.image_token_id

    def restored_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions holding bridged restored-latent tokens."""
        return input_ids == self.config.restored_pad_token_id

    # -- training (models/backbone.py's TrainableBackbone) -------------------------------------
    def hidden_view_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hide_from: torch.Tensor
    ) -> dict:
        """The forward's inputs hiding each row's image tokens from position `hide_from` on: a 4D mask."""
        from clear_rl.models.readback import view_mask

        return {"attention_mask": view_mask(self, input_ids, attention_mask, hide_from)}

    def load_saved_weights(self, path) -> None:
        """Put the weights `save_pretrained` wrote into this model (resuming a full fine-tune)."""
        saved = type(self).from_pretrained(path, dtype=self.dtype, local_files_only=True)
        self.load_state_dict(saved.state_dict())

    def part_patterns(self) -> dict[str, list[str]]:
        """Each trainable part's parameter-name patterns (models/parts.py)."""
        from clear_rl.models.composed.parts import composed_part_patterns

        return composed_part_patterns(self)

    def lora_scopes(self) -> dict[str, str]:
        """Where LoRA looks for the LLM's and the restoration head's layers (module-name regexes)."""
        from clear_rl.models.composed.parts import composed_lora_scopes

        return composed_lora_scopes(self)

    def restored_token_states(self, output, input_ids: torch.Tensor, row: int) -> torch.Tensor:
        """(layers, tokens, D) one row's bridged-latent tokens at every LLM layer's output."""
        mask = self.restored_token_mask(input_ids)[row]
        return torch.stack([h[row, mask] for h in output.hidden_states[1:]])

    def image_token_states(self, output, input_ids: torch.Tensor, row: int) -> torch.Tensor:
        """(layers, tokens, D) one row's ViT image tokens at every LLM layer's output."""
        mask = self.image_token_mask(input_ids)[row]
        return torch.stack([h[row, mask] for h in output.hidden_states[1:]])

    def restored_token_grid(self, output, row: int) -> tuple[int, int]:
        return self.latent_bridge.grid_size(self.latent_shape[1:])

    def image_token_grid(
        self, output, row: int, count: int, grid_thw: torch.Tensor | None
    ) -> tuple[int, int]:
        """The (rows, cols) layout of one image's `count` ViT tokens in the LLM sequence."""
        from clear_rl.models.vision import vision_token_grid

        try:
            return vision_token_grid(self.config.vlm_config, count, grid_thw)
        except ValueError as exc:
            raise ValueError(f"{exc}: use training.distill_mode: pooled_mse for this VLM") from None

    def teacher_forced_context(
        self, forward, inputs, degraded_latents: torch.Tensor, rows: torch.Tensor
    ) -> RestorationContext:
        """The restoration context of `rows` from a pass of the teacher-forced batch `inputs`.

        Causality makes the hidden states up to `<image_restore>` independent of what later fills
        the slot, so zeros fill it here.
        """
        latents = torch.zeros(
            inputs["input_ids"].shape[0], *self.latent_shape, device=degraded_latents.device
        )
        out = forward(
            **inputs, restored_latents=latents, output_hidden_states=True, use_cache=False, logits_to_keep=1
        )
        states = out.hidden_states[self.config.condition_layer]
        context = self.restoration_context(
            inputs["input_ids"], inputs["attention_mask"], states, degraded_latents
        )
        return context.select(rows)

    @contextlib.contextmanager
    def bridged_embeddings(
        self,
        input_ids: torch.Tensor,
        restored_latents: torch.Tensor | None,
        restored_embeds: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """While active, the VLM's input embedding puts bridged latents at `<|restored_pad|>` positions.

        A hook on the embedding layer (rather than passing `inputs_embeds`) keeps `input_ids`
        flowing through the VLM unchanged, so image-token placement, M-RoPE position ids and any
        other id-driven logic of the wrapped VLM keep working, for any architecture.
        `restored_embeds` (B, N, D), when given, are placed there instead of `bridge(restored_latents)`
        (the decode + re-encode readback, see models/readback.py).
        """
        pad_mask = self.restored_token_mask(input_ids)
        pads, work = bool(pad_mask.any()), self.same_work
        idle = work is not None and work.needs_idle("bridge", pads and restored_embeds is None)
        if not pads and not idle:
            yield
            return
        embeds = self._slot_embeddings(pad_mask, restored_latents, restored_embeds) if pads else None
        # The same-work rule's idle bridge joins the embeddings (weight zero) where a real one would,
        # so that backward runs through the same layers on every rank (models/same_work.py).
        zero = self.bridge(torch.zeros(1, *self.latent_shape, device=self.device)) if idle else None
        expected = pad_mask.shape

        def substitute(module, args, output):
            ids = args[0] if args else None
            if ids is None or ids.shape != expected:
                return output
            if embeds is not None:
                mask = (ids == self.config.restored_pad_token_id).unsqueeze(-1)
                output = output.masked_scatter(mask, embeds.to(output.dtype))
            return output if zero is None else with_idle_work(output, [zero])

        handle = self.get_input_embeddings().register_forward_hook(substitute)
        try:
            yield
        finally:
            handle.remove()

    def _slot_embeddings(
        self,
        pad_mask: torch.Tensor,
        restored_latents: torch.Tensor | None,
        restored_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        """(R, N, D) what fills the `<|restored_pad|>` positions of the R rows that have them."""
        filled = restored_embeds if restored_embeds is not None else restored_latents
        if filled is None:
            raise ValueError(
                "input_ids hold <|restored_pad|> tokens but no restored_latents or restored_embeds were given"
            )
        rows = pad_mask.any(1)
        per_row = pad_mask.sum(1)[rows]
        slot = self.num_restored_tokens if restored_embeds is None else restored_embeds.shape[1]
        if bool((per_row % slot).any()):
            raise ValueError(
                f"each restoring row needs a multiple of {slot} <|restored_pad|> tokens, got {per_row.tolist()}"
            )
        if filled.shape[0] != pad_mask.shape[0]:
            name = "restored_embeds" if restored_embeds is not None else "restored_latents"
            raise ValueError(f"{name} must have one (possibly unused) entry per batch row")
        return restored_embeds[rows] if restored_embeds is not None else self.bridge(restored_latents[rows])

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        restored_latents: torch.Tensor | None = None,
        restored_embeds: torch.Tensor | None = None,
        flow_latents: torch.Tensor | None = None,
        flow_timesteps: torch.Tensor | None = None,
        flow_rows: torch.Tensor | None = None,
        degraded_latents: torch.Tensor | None = None,
        clear_step: Callable[..., Any] | None = None,
        **kwargs,
    ):
        """The understanding pass; `<|restored_pad|>` positions carry `bridge(restored_latents)`.

        `restored_embeds` (B, N, D), when given, fill those positions instead (e.g. the vision
        path's tokens of the decoded latent, the `reencode` readback of models/readback.py).

        With `flow_latents` (B, K, C, h, w) at noise levels `flow_timesteps` (B, K), the same pass
        also runs the restoration head on them, conditioned on this pass's hidden states up to each
        row's `<image_restore>` and on `degraded_latents`, and returns `flow_velocity`
        (B, K, C, h, w; zeros for rows outside `flow_rows`). Training computes flow losses this
        way so the head runs inside whatever wrapper holds the model (DDP, FSDP, DeepSpeed),
        in one forward with the text. Other keyword arguments (position_ids, cache,
        logits_to_keep, output_hidden_states, image_grid_thw, ...) go to the wrapped VLM.

        `clear_step(model, forward, batch)`, when given, is a training step of several passes
        (VAE encodes, a teacher pass, the restoration loss) run inside this one call, with `batch`
        the call's other arguments: wrappers act around `forward` (DDP, FSDP, DeepSpeed, peft,
        accelerate's autocast), so their bookkeeping covers every part the step uses. Its return
        value is returned (a dict of tensors, which wrappers map over).
        """
        if clear_step is not None:
            named = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "pixel_values": pixel_values,
                "restored_latents": restored_latents,
                "restored_embeds": restored_embeds,
                "flow_latents": flow_latents,
                "flow_timesteps": flow_timesteps,
                "flow_rows": flow_rows,
                "degraded_latents": degraded_latents,
            }
            batch = {**{k: v for k, v in named.items() if v is not None}, **kwargs}
            return clear_step(self, self.forward, batch)
        if flow_latents is not None:
            kwargs["output_hidden_states"] = True
        # M-RoPE VLMs (Qwen2-VL family): restored blocks get image positions (models/positions.py).
        positions = positions_for_forward(self, input_ids, attention_mask, kwargs)
        if positions is not None:
            kwargs["position_ids"] = positions
        with self.bridged_embeddings(input_ids, restored_latents, restored_embeds):
            outputs = self.vlm(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs
            )
        if flow_latents is not None:
            outputs["flow_velocity"] = self._flow_velocity(
                input_ids,
                attention_mask,
                outputs.hidden_states,
                flow_latents,
                flow_timesteps,
                flow_rows,
                degraded_latents,
            )
        return outputs

    def same_work_parts(self) -> dict[str, torch.nn.Module]:
        """The parts the same-work rule runs idle (models/same_work.py), by `SameWork.parts` name."""
        return {"bridge": self.latent_bridge, "head": self.restoration_head}

    def _flow_velocity(
        self, input_ids, attention_mask, hidden_states, latents, timesteps, rows, degraded_latents
    ):
        batch, steps = latents.shape[:2]
        rows = torch.ones(batch, dtype=torch.bool, device=latents.device) if rows is None else rows.bool()
        out = torch.zeros_like(latents)
        restoring, work = bool(rows.any()), self.same_work
        idle = work is not None and work.needs_idle("head", restoring)
        if not restoring and not idle:
            return out
        if idle:  # the same-work rule: row 0 runs the head, its result joins `out` with weight zero
            rows = torch.zeros_like(rows)
            rows[0] = True
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.dim() == 4:  # per-query (B, 1, Q, K): the head reads what `<image_restore>` reads
            last = self.up_to_last_restore(input_ids).sum(1) - 1
            keys = attention_mask[torch.arange(input_ids.shape[0], device=input_ids.device), 0, last]
            attention_mask = keys if keys.dtype == torch.bool else keys == 0
        context = self.restoration_context(
            input_ids, attention_mask, hidden_states[self.config.condition_layer], degraded_latents
        )
        index = rows.nonzero().squeeze(1).repeat_interleave(steps)
        chosen = latents[rows].flatten(0, 1)
        velocity = self.velocity(chosen, timesteps[rows].flatten(), context.select(index))
        out = out.to(velocity.dtype)
        if idle:
            return with_idle_work(out, [velocity])
        out[rows] = velocity.view(-1, steps, *latents.shape[2:])
        return out


AutoConfig.register(ComposedUnifiedConfig.model_type, ComposedUnifiedConfig, exist_ok=True)
AutoModel.register(ComposedUnifiedConfig, ComposedUnifiedModel, exist_ok=True)
# TRL builds a reference model with AutoModelForCausalLM when it cannot name the architecture; the
# composed model is a causal LM over text and images, so it registers there too.
AutoModelForCausalLM.register(ComposedUnifiedConfig, ComposedUnifiedModel, exist_ok=True)
