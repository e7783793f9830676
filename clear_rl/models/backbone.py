"""The backbone protocol: exactly what generation, restoration and answering call on a unified model.

Two backbones satisfy it: `composed` (a VLM + VAE + DiT head + bridge, `ComposedUnifiedModel`)
and `bagel` (BAGEL-7B-MoT, `BagelUnifiedModel`). Code above the models talks to these names only,
so it never branches on the backbone:

- the restoration sampler (`restoration.py`) integrates `velocity(x_t, t, context)` from noise,
  where `context` is whatever the backbone's decoder hands out (the composed model: hidden states
  up to `<image_restore>`; BAGEL: the prefix's per-layer keys and values, plus the two
  classifier-free-guidance contexts);
- interleaved generation (`generation.py`) runs the token loop and leaves every model call to a
  `Decoder` the backbone builds (`decoder_class`): prompt prefill, one text step, the restoration
  context of some rows, and putting restored latents back (the bridge) into the context.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

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
    # degraded_latents, generation_config, image_processor=...) -> Decoder

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
