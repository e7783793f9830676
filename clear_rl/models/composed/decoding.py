"""The composed backbone's decoder: the model calls of an interleaved rollout (see models/backbone.py).

Rows that restore and rows that do not proceed together. When some rows insert their N
placeholder positions, the others get N masked "hole" positions in the same forward pass (their
attention mask is 0 there and position ids skip them), so one KV cache serves the whole batch and
every row's logits are exactly what they would be alone.

What fills the restored slot (`readback`): the bridge's embeddings of the latent, or the
paper's baseline, the VLM's own vision tokens of the VAE-decoded latent (models/readback.py).
`restore="oracle"` hides the image tokens throughout; `degraded_view="drop"` hides a row's image
tokens from every position after its restored slot begins. Hidden tokens keep their position ids:
one mask counts positions, another says what attention reads.
"""

from __future__ import annotations

import torch

from clear_rl.models.composed.context import RestorationContext
from clear_rl.models.positions import RolloutPositions
from clear_rl.models.readback import reencode_embeddings, vae_roundtrip, view_mask


class ComposedDecoder:
    """KV-cached decoding of a `ComposedUnifiedModel` (or a peft / wrapper around one).

    `cfg` is the rollout's `InterleavedGenerationConfig` (restore policy, readback, degraded view,
    use_cache).
    """

    def __init__(
        self,
        model,
        input_ids,
        vlm_inputs,
        vae_pixel_values,
        degraded_latents,
        cfg,
        image_processor=None,
        generator: torch.Generator | None = None,  # unused: the composed VAE encodes the posterior mode
    ):
        self.model, self.cfg, self.image_processor = model, cfg, image_processor
        self.vlm_inputs, self.vae_pixel_values = vlm_inputs, vae_pixel_values
        self.degraded_latents = degraded_latents
        self.ids = model.token_ids
        self.image_token_id = model.config.image_token_id
        text_config = model.config.get_text_config()
        self.pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
        eos = text_config.eos_token_id
        self.stop_token_ids = tuple([eos] if isinstance(eos, int) else list(eos or []))
        self.banned_token_ids = (self.ids.restored_pad, self.image_token_id)
        batch = input_ids.shape[0]
        self.batch = batch
        self.seq_ids: torch.Tensor | None = None  # the whole sequence so far, holes included
        self.seq_mask: torch.Tensor | None = None  # 1 on real positions, 0 on left padding and holes
        # Per row, the sequence index from which its image tokens are hidden (length: never).
        never = torch.iinfo(torch.long).max
        start = 0 if cfg.restore == "oracle" else never
        self.hide_from = torch.full((batch,), start, dtype=torch.long, device=input_ids.device)
        self.restored_embeds: torch.Tensor | None = None  # (B, N, D) under readback="reencode"
        self.restored_latents: torch.Tensor | None = None
        self.cache = None
        self.positions = RolloutPositions(model, vlm_inputs)  # 1D, or M-RoPE's 3D with image layouts
        self.hidden: torch.Tensor | None = None  # (B, L, D) conditioning-layer states of the sequence

    # -- the decoder protocol ------------------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward(input_ids, attention_mask.long())

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        return self.forward(tokens[:, None], active.long()[:, None])

    def restoration_context(self, rows: torch.Tensor) -> RestorationContext:
        """`rows`' hidden states up to `<image_restore>` (just written) and degraded latents."""
        if self.degraded_latents is None:
            if self.vae_pixel_values is None:
                raise ValueError("restoration needs vae_pixel_values or degraded_latents")
            self.degraded_latents = self.model.encode_latents(self.vae_pixel_values).float()
        return RestorationContext(
            self.hidden[rows],
            self.visible(self.seq_ids.shape[1] - 1)[rows].bool(),
            self.degraded_latents[rows],
        )

    def append_restored(self, rows: torch.Tensor, restored_latents: torch.Tensor) -> tuple[int, torch.Tensor]:
        if self.cfg.readback == "reencode-vae":  # the bridge of the restoration read back as 8-bit pixels
            kept = (restored_latents if self.restored_latents is None else self.restored_latents).clone()
            kept[rows] = vae_roundtrip(self.model, restored_latents[rows])
            restored_latents = kept  # earlier rows keep their own read-back latents
        self.restored_latents = restored_latents
        n_pad = self.fill_slot(rows)
        if self.cfg.degraded_view == "drop":  # the slot replaces the degraded view from here on
            self.hide_from[rows] = self.seq_ids.shape[1]
        batch = self.batch
        block = torch.where(rows[:, None], self.ids.restored_pad, self.pad_id).expand(batch, n_pad)
        logits = self.forward(block.contiguous(), rows.long()[:, None].expand(batch, n_pad), slot=True)
        return n_pad, logits

    # -- model calls ---------------------------------------------------------------------------
    def visible(self, query_index: int) -> torch.Tensor:
        """(B, L) 1 where a query at `query_index` may attend: real positions minus hidden image tokens."""
        hidden = (self.seq_ids == self.image_token_id) & (self.hide_from <= query_index)[:, None]
        return self.seq_mask * (~hidden).long()

    def forward(self, new_ids: torch.Tensor, new_mask: torch.Tensor, slot: bool = False) -> torch.Tensor:
        """Append `new_ids` to the sequence and return the logits of its last position.

        `slot`: `new_ids` are the restored-slot block, filled from the current readback.
        """
        first = self.seq_ids is None
        start = 0 if first else self.seq_ids.shape[1]
        self.seq_ids = new_ids if first else torch.cat([self.seq_ids, new_ids], dim=1)
        self.seq_mask = new_mask if first else torch.cat([self.seq_mask, new_mask], dim=1)
        new = new_ids.shape[1] if self.cfg.use_cache else self.seq_ids.shape[1]
        positions = self.positions(self.seq_ids, self.seq_mask, new)  # hidden image tokens still count
        need_hidden = self.cfg.restore not in ("never", "oracle")
        layer = self.model.config.condition_layer
        reencode = self.cfg.readback == "reencode"
        if self.cfg.use_cache:
            out = self.model(
                input_ids=new_ids,
                attention_mask=self.visible(start),
                position_ids=positions,
                restored_latents=self.restored_latents if slot and not reencode else None,
                restored_embeds=self.restored_embeds if slot and reencode else None,
                cache=self.cache,
                use_cache=True,
                output_hidden_states=need_hidden,
                logits_to_keep=1,
                **(self.vlm_inputs if first else {}),
            )
            self.cache = out.cache
            if need_hidden:
                states = out.hidden_states[layer]
                self.hidden = states if first else torch.cat([self.hidden, states], dim=1)
        else:
            mask = self.seq_mask
            if bool((self.hide_from < self.seq_ids.shape[1]).any()):  # hiding differs per query
                mask = view_mask(self.model, self.seq_ids, mask, self.hide_from)
            out = self.model(
                input_ids=self.seq_ids,
                attention_mask=mask,
                position_ids=positions,
                restored_latents=None if reencode else self.restored_latents,
                restored_embeds=self.restored_embeds if reencode else None,
                use_cache=False,
                output_hidden_states=need_hidden,
                logits_to_keep=1,
                **self.vlm_inputs,
            )
            if need_hidden:
                self.hidden = out.hidden_states[layer]
        return out.logits[:, -1].float()

    def fill_slot(self, rows: torch.Tensor) -> int:
        """Prepare what fills `rows`' restored slots; returns the slot's length in positions."""
        if self.cfg.readback != "reencode":
            return self.model.num_restored_tokens
        embeds = reencode_embeddings(self.model, self.restored_latents[rows], self.image_processor)
        if self.restored_embeds is None:
            self.restored_embeds = embeds.new_zeros(self.batch, *embeds.shape[1:])
        self.restored_embeds[rows] = embeds
        return embeds.shape[1]
