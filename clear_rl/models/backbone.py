"""The backbone protocols: exactly what generation, restoration, answering and the trainers call on a
unified model.

Every registered backbone (models/registry.py) satisfies them: `composed` (a VLM + VAE + DiT head +
bridge, `ComposedUnifiedModel`), `bagel` (BAGEL-7B-MoT, `BagelUnifiedModel`), or a plug-in's. Code
above the models talks to these members only, so it never branches on the backbone:

- the restoration sampler (`rollout/restoration.py`) integrates `velocity(x_t, t, context)` from noise,
  where `context` is whatever the backbone's decoder hands out (the composed model: hidden states
  up to `<image_restore>`; BAGEL: the prefix's per-layer keys and values, plus the two
  classifier-free-guidance contexts);
- interleaved generation (`rollout/interleaved.py`) runs the token loop and leaves every model call to a
  `Decoder` the backbone builds (`decoder_class`): prompt prefill, one text step, the restoration
  context of some rows, and putting restored latents back (the bridge) into the context;
- a model whose protocol tags are plain text (CLEAR's released checkpoints) also has `turn_rules`
  (`clear_rl.models.turns.TurnRules`): generation then reads its restoration requests from finished text
  turns instead of the single `<image_restore>` token, and its decoder caches each turn as written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from clear_rl.models.same_work import SameWork
from clear_rl.models.tokens import ClearTokenIds


class BackboneConfig(Protocol):
    """The settings callers read off a backbone's `config`."""

    vae_image_size: int  # the VAE's (square) view of an image, in pixels
    num_inference_steps: int  # default restoration steps
    flow_shift: float  # default timestep shift of the sampling schedule


class RestorationContextLike(Protocol):
    """What `velocity` is conditioned on, for R rows; the sampler needs its size and device."""

    degraded_latents: torch.Tensor  # (R, C, h, w)

    @property
    def num_rows(self) -> int: ...

    @property
    def device(self) -> torch.device: ...


@runtime_checkable
class Decoder(Protocol):
    """A batched, KV-cached interleaved decoding of one backbone (built by `decoder_class`).

    Every method returns the next-token logits (B, V) of each row's last position (float32); rows
    that did not move (`active` False) get whatever the call computed for them, which the loop
    ignores.
    """

    stop_token_ids: tuple[int, ...]  # EOS and any other end-of-text ids of the tokenizer
    pad_id: int  # written after a row's end
    banned_token_ids: tuple[int, ...]  # never model-written (placeholders, image tokens)
    degraded_latents: torch.Tensor | None  # (B, C, h, w) once computed
    restored_embeds: torch.Tensor | None  # what filled the slots under readback="reencode", else None

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Append one token (B,) per row (`active` (B,) bool: real, else a masked hole)."""
        ...

    def restoration_context(self, rows: torch.Tensor) -> Any:
        """The conditioning of `velocity` for `rows` (B,) bool, at their current position."""
        ...

    def append_restored(self, rows: torch.Tensor, restored_latents: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Put `rows`' restored latents (B, C, h, w; all rows, others unused) into the context.

        Returns (the slot's length in `<|restored_pad|>` positions, the logits after it).
        """
        ...


@runtime_checkable
class UnifiedBackbone(Protocol):
    """A unified (understand + restore) model as generation, restoration and eval see it."""

    config: Any  # a `BackboneConfig`
    decoder_class: type  # called as decoder_class(model, input_ids, vlm_inputs, vae_pixel_values,
    # degraded_latents, generation_config, image_processor=..., generator=...) -> Decoder (the
    # generator: the rollout's, for any sampling the decoder does, such as a VAE posterior)

    @property
    def device(self) -> torch.device: ...

    @property
    def token_ids(self) -> ClearTokenIds: ...

    @property
    def latent_shape(self) -> tuple[int, int, int]: ...

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...

    def bridge(self, latents: torch.Tensor) -> torch.Tensor: ...

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, context: Any) -> torch.Tensor: ...

    def flow_source_mean(self, degraded_latents: torch.Tensor) -> torch.Tensor | None: ...


class TrainingOutput(Protocol):
    """What the training forward returns (a `ModelOutput`: read by key or attribute)."""

    logits: torch.Tensor  # (B, K, V) at the kept positions
    hidden_states: Any  # whatever the backbone's `*_token_states` methods read; None unless asked
    # flow_velocity (B, K, C, h, w), given flow latents: read as output["flow_velocity"]

    def __getitem__(self, key: str) -> Any: ...


class TrainingForward(Protocol):
    """The training forward's contract: one teacher-forced pass over a padded id batch.

    The `<|restored_pad|>` slot holds `restored_latents` (B, C, h, w) through the bridge, or
    `restored_embeds` (B, N, D) as they are (the `reencode` readback a rollout used); logits are kept at
    `logits_to_keep` positions (an int: the last ones; a tensor: those). Given `flow_latents`
    (B, K, C, h, w) at times `flow_timesteps` (B, K), the same pass also returns the restoration
    branch's `flow_velocity` on them for the rows in `flow_rows` (B,) bool (zeros elsewhere), conditioned
    on the context up to each row's `<image_restore>` and on `degraded_latents`. `image_inputs` are the
    processor's (pixel_values, image_grid_thw, ...) and the masks of `hidden_view_inputs`.
    `clear_step(core, forward, batch)`, when given, runs a whole training step inside this one call of
    the wrapped model (so DDP / FSDP see every part it uses) and its result is returned instead.
    """

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        restored_latents: torch.Tensor | None = None,
        restored_embeds: torch.Tensor | None = None,
        flow_latents: torch.Tensor | None = None,
        flow_timesteps: torch.Tensor | None = None,
        flow_rows: torch.Tensor | None = None,
        degraded_latents: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        use_cache: bool = False,
        clear_step: Callable[..., Any] | None = None,
        **image_inputs: Any,
    ) -> TrainingOutput | Any: ...


@runtime_checkable
class TrainableBackbone(UnifiedBackbone, Protocol):
    """What the training stages call on a backbone beyond generation's protocol.

    `forward` is a `TrainingForward`. Which readbacks the training pass replays and which stages the
    backbone runs are in its registry declaration (models/registry.py `BackboneSpec`).
    """

    forward: TrainingForward
    # Sharded training's same-work rule (models/same_work.py): set by the trainers, never by users.
    same_work: SameWork | None

    @property
    def num_restored_tokens(self) -> int:
        """Positions a restored slot takes in the LLM sequence (the collator lays prompts out by it)."""
        ...

    def get_input_embeddings(self) -> torch.nn.Module:
        """The LLM's token embedding (LoRA trains the protocol tokens' rows of it)."""
        ...

    def get_output_embeddings(self) -> torch.nn.Module | None:
        """The LLM's output head (its protocol rows train too, unless tied to the embedding)."""
        ...

    def save_pretrained(self, path: str | os.PathLike, state_dict: dict | None = None, **kwargs: Any) -> None:
        """Write the model's own folder layout (`state_dict`: the whole state, gathered when sharded)."""
        ...

    def load_saved_weights(self, path: str | os.PathLike) -> None:
        """Put the weights `save_pretrained` wrote into this model (resuming a full fine-tune)."""
        ...

    def part_patterns(self) -> dict[str, list[str]]:
        """Regexes (matched at the start of parameter names) of each part in settings.PARTS."""
        ...

    def lora_scopes(self) -> dict[str, str]:
        """Module-name regexes where LoRA's `llm_target_modules` / `head_target_modules` are looked for."""
        ...

    def hidden_view_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hide_from: torch.Tensor
    ) -> dict:
        """The forward's mask inputs hiding each row's degraded view from position `hide_from` (B,) on
        (`degraded_view: drop`), as the rollout's decoder hid it."""
        ...

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) positions standing for the prompt image's ViT view (hidden by ViT-token dropout)."""
        ...

    def up_to_last_restore(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) positions up to and including each row's last `<image_restore>`."""
        ...

    def restored_token_states(self, output: Any, input_ids: torch.Tensor, row: int) -> torch.Tensor:
        """(layers, tokens, D) a row's bridged-latent tokens (the distill student)."""
        ...

    def image_token_states(self, output: Any, input_ids: torch.Tensor, row: int) -> torch.Tensor:
        """(layers, tokens, D) a row's ViT image tokens (the distill teacher)."""
        ...

    def restored_token_grid(self, output: Any, row: int) -> tuple[int, int]: ...

    def image_token_grid(
        self, output: Any, row: int, count: int, grid_thw: torch.Tensor | None
    ) -> tuple[int, int]: ...

    def teacher_forced_context(
        self, forward: Any, inputs: dict, degraded_latents: torch.Tensor, rows: torch.Tensor
    ) -> Any:
        """The restoration context of `rows` (R,) of a teacher-forced batch (stage 2's restorations)."""
        ...
